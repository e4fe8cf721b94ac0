"""Contact methods and notification rules over gRPC: validated, normalised, all or nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from tests.notification.stack import ALICE, BOB, SMS, VOICE, PagingStack
from tocsin.v1 import notification_pb2 as pb
from tocsin.v1 import scheduling_pb2


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    trailer = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    bad = error_details_pb2.BadRequest()
    assert status_pb2.Status.FromString(trailer).details[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


def method(
    method_id: str,
    address: str,
    channel: pb.ContactMethodType.ValueType = SMS,
    user_id: str = "alice",
) -> pb.ContactMethod:
    return pb.ContactMethod(id=method_id, user_id=user_id, type=channel, address=address)


async def create(stack: PagingStack, contact: pb.ContactMethod) -> pb.ContactMethod:
    reply = await stack.client.notification.CreateContactMethod(
        pb.CreateContactMethodRequest(contact_method=contact)
    )
    return reply.contact_method


async def settings(
    stack: PagingStack, user_id: str = "alice"
) -> pb.GetUserNotificationSettingsResponse:
    return await stack.client.notification.GetUserNotificationSettings(
        pb.GetUserNotificationSettingsRequest(user_id=user_id)
    )


async def rules(stack: PagingStack, *pairs: tuple[str, int]) -> pb.SetNotificationRulesResponse:
    return await stack.client.notification.SetNotificationRules(
        pb.SetNotificationRulesRequest(
            user_id="alice",
            rules=[
                pb.NotificationRule(contact_method_id=m, delay=Duration(seconds=s))
                for m, s in pairs
            ],
        )
    )


@pytest.fixture
async def users(stack: PagingStack) -> PagingStack:
    for user_id in ("alice", "bob"):
        await stack.client.scheduling.CreateUser(
            scheduling_pb2.CreateUserRequest(
                user=scheduling_pb2.User(id=user_id, name=user_id.title(), time_zone="UTC")
            )
        )
    return stack


async def test_addresses_are_stored_in_e164(users: PagingStack) -> None:
    stored = await create(users, method("alice-sms", "+1 (500) 555-0010"))

    assert stored.address == ALICE and not stored.disabled
    assert list((await settings(users)).contact_methods) == [stored]


async def test_a_bad_contact_method_names_every_bad_field_and_writes_nothing(
    users: PagingStack,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad_number:
        await create(users, method("alice-sms", "5550010"))
    with pytest.raises(grpc.aio.AioRpcError) as bad_everything:
        await create(users, pb.ContactMethod(id="Alice SMS", user_id="alice", address="+1 555"))

    assert bad_number.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(bad_number.value) == ["contact_method.address"]
    # Without a type no channel can say what the address must be: only id and type.
    assert violations(bad_everything.value) == ["contact_method.id", "contact_method.type"]
    assert "5550010" not in (bad_number.value.details() or "")  # numbers stay out of errors
    assert not (await settings(users)).contact_methods


async def test_contact_methods_belong_to_users_scheduling_knows(users: PagingStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await create(users, method("zed-sms", ALICE, user_id="zed"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as nobody:
        await settings(users, "zed")
    assert nobody.value.code() == grpc.StatusCode.NOT_FOUND


async def test_contact_method_ids_are_unique_across_users(users: PagingStack) -> None:
    await create(users, method("phone", ALICE))
    for owner in ("alice", "bob"):
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await create(users, method("phone", BOB, user_id=owner))
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert not (await settings(users, "bob")).contact_methods


async def test_rules_run_in_order_of_delay_and_name_the_users_methods(users: PagingStack) -> None:
    await create(users, method("alice-sms", ALICE))
    await create(users, method("alice-voice", ALICE, VOICE))

    stored = await rules(users, ("alice-voice", 300), ("alice-sms", 0), ("alice-voice", 60))

    assert [(r.contact_method_id, r.delay.seconds) for r in stored.rules] == [
        ("alice-sms", 0),
        ("alice-voice", 60),
        ("alice-voice", 300),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await rules(users, ("alice-sms", 0), ("bob-sms", 0), ("alice-voice", -5))
    assert violations(bad.value) == ["rules[1].contact_method_id", "rules[2].delay"]
    assert len((await settings(users)).rules) == 3


async def test_deleting_a_contact_method_removes_its_rules_and_its_number(
    users: PagingStack,
) -> None:
    await create(users, method("alice-sms", ALICE))
    await create(users, method("alice-voice", ALICE, VOICE))
    await rules(users, ("alice-sms", 0), ("alice-voice", 60))
    users.pager.person("alice", ALICE)

    await users.client.notification.DeleteContactMethod(
        pb.DeleteContactMethodRequest(id="alice-sms")
    )
    after = await settings(users)
    assert [m.id for m in after.contact_methods] == ["alice-voice"]
    assert [r.contact_method_id for r in after.rules] == ["alice-voice"]
    assert await users.pager.reply_sms("alice", "help")  # the voice number is still known

    await users.client.notification.DeleteContactMethod(
        pb.DeleteContactMethodRequest(id="alice-voice")
    )
    assert await users.pager.reply_sms("alice", "help") == ""  # a stranger now
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await users.client.notification.DeleteContactMethod(
            pb.DeleteContactMethodRequest(id="alice-voice")
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_new_number_moves_the_reply_index_and_clears_a_stop(users: PagingStack) -> None:
    await create(users, method("alice-sms", ALICE))
    users.pager.person("alice", ALICE)
    users.pager.person("alice-new", BOB)
    await users.pager.reply_sms("alice", "STOP")
    update = pb.UpdateContactMethodRequest(contact_method=method("alice-sms", ALICE))

    same = await users.client.notification.UpdateContactMethod(update)
    assert same.contact_method.disabled  # STOP stays while the number stays

    update.contact_method.address = BOB
    moved = await users.client.notification.UpdateContactMethod(update)

    assert (moved.contact_method.address, moved.contact_method.disabled) == (BOB, False)
    assert await users.pager.reply_sms("alice", "help") == ""
    assert await users.pager.reply_sms("alice-new", "help")
    update.contact_method.user_id = "bob"
    with pytest.raises(grpc.aio.AioRpcError) as stolen:
        await users.client.notification.UpdateContactMethod(update)
    assert violations(stolen.value) == ["contact_method.user_id"]
