"""People, credentials and the actor of a change, over real gRPC and Redis.

Each test fails on the code before issue #12: an observer could acknowledge, a caller could
name any actor, internal RPCs took any token, and there were no keys or passwords.
"""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.identity.stack import ADMIN_TOKEN, PASSWORDS, IdentityStack
from tocsin.identity import domain
from tocsin.runtime.auth import parse_token
from tocsin.runtime.clock import ManualClock
from tocsin.v1 import (
    common_pb2,
    identity_pb2,
    incidents_pb2,
    notification_pb2,
    scheduling_pb2,
)


async def _trigger(stack: IdentityStack) -> str:
    reply = await stack.service.incidents.Trigger(
        incidents_pb2.TriggerRequest(service_id="payments-api", summary="disk full")
    )
    return reply.incident.id


async def _denied(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value


async def test_an_observers_acknowledge_is_denied_and_writes_nothing(
    stack: IdentityStack,
) -> None:
    incident_id = await _trigger(stack)
    before = await stack.service.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    olga = stack.as_user("olga")
    error = await _denied(
        olga.incidents.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident_id))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "role observer may not call tocsin.v1.IncidentService/Acknowledge"
    after = await stack.service.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id)
    )
    assert after == before
    # Reading is what an observer may do.
    listed = await olga.incidents.ListIncidents(incidents_pb2.ListIncidentsRequest())
    assert [i.id for i in listed.incidents] == [incident_id]


async def test_the_actor_is_the_authenticated_user_not_the_name_sent(
    stack: IdentityStack,
) -> None:
    incident_id = await _trigger(stack)
    alice = stack.as_user("alice")
    forged = common_pb2.Actor(user_id="bob", display="bob", channel=common_pb2.CHANNEL_SMS)
    reply = await alice.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id, actor=forged)
    )
    assert reply.incident.acknowledged_by.user_id == "alice"
    assert reply.incident.acknowledged_by.channel == common_pb2.CHANNEL_API
    await alice.incidents.AddNote(
        incidents_pb2.AddNoteRequest(incident_id=incident_id, text="on it", actor=forged)
    )
    shown = await stack.service.incidents.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_timeline=True)
    )
    people = [
        e.actor.user_id
        for e in shown.incident.timeline
        if e.actor.channel != common_pb2.CHANNEL_AUTO
    ]
    assert "bob" not in people and people.count("alice") >= 2


async def test_the_service_credential_still_speaks_for_the_phone_owner(
    stack: IdentityStack,
) -> None:
    """SMS replies reach incidents from notification with the service credential and
    the phone owner's name, which stands."""
    incident_id = await _trigger(stack)
    owner = common_pb2.Actor(user_id="bob", channel=common_pb2.CHANNEL_SMS)
    reply = await stack.service.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id, actor=owner)
    )
    assert reply.incident.acknowledged_by.user_id == "bob"
    assert reply.incident.acknowledged_by.channel == common_pb2.CHANNEL_SMS


@pytest.mark.parametrize("who", ["adam", "alice", "admin-token"])
async def test_internal_rpcs_refuse_user_credentials(stack: IdentityStack, who: str) -> None:
    token = ADMIN_TOKEN if who == "admin-token" else stack.tokens[who]
    client = stack.client(token)
    for call in (
        client.notification.Notify(notification_pb2.NotifyRequest(user_id="alice")),
        client.incidents.AppendTimeline(incidents_pb2.AppendTimelineRequest(incident_id="1")),
        client.notification.HandleIncomingSms(
            notification_pb2.HandleIncomingSmsRequest(from_number="+15005550006", body="1 ack")
        ),
    ):
        error = await _denied(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not call" in (error.details() or "")


async def test_responders_manage_their_own_contact_methods_and_no_one_elses(
    stack: IdentityStack,
) -> None:
    alice = stack.as_user("alice")
    mine = notification_pb2.ContactMethod(
        id="alice-sms",
        user_id="alice",
        type=notification_pb2.CONTACT_METHOD_TYPE_SMS,
        address="+15005550006",
    )
    await alice.notification.CreateContactMethod(
        notification_pb2.CreateContactMethodRequest(contact_method=mine)
    )
    theirs = notification_pb2.ContactMethod()
    theirs.CopyFrom(mine)
    theirs.id, theirs.user_id = "bob-sms", "bob"
    for call in (
        alice.notification.CreateContactMethod(
            notification_pb2.CreateContactMethodRequest(contact_method=theirs)
        ),
        # Handing her own method to bob is changing bob's methods.
        alice.notification.UpdateContactMethod(
            notification_pb2.UpdateContactMethodRequest(
                contact_method=notification_pb2.ContactMethod(
                    id="alice-sms",
                    user_id="bob",
                    type=notification_pb2.CONTACT_METHOD_TYPE_SMS,
                    address="+15005550006",
                )
            )
        ),
        alice.notification.SetNotificationRules(
            notification_pb2.SetNotificationRulesRequest(user_id="bob")
        ),
    ):
        assert (await _denied(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    await stack.service.notification.CreateContactMethod(
        notification_pb2.CreateContactMethodRequest(contact_method=theirs)
    )
    error = await _denied(
        alice.notification.DeleteContactMethod(
            notification_pb2.DeleteContactMethodRequest(id="bob-sms")
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await alice.notification.DeleteContactMethod(
        notification_pb2.DeleteContactMethodRequest(id="alice-sms")
    )


async def test_responders_override_only_schedules_they_are_on(stack: IdentityStack) -> None:
    for schedule_id, users in (("primary", ["alice", "bob"]), ("db", ["bob"])):
        await stack.service.scheduling.CreateSchedule(
            scheduling_pb2.CreateScheduleRequest(
                schedule=scheduling_pb2.Schedule(
                    id=schedule_id,
                    name=schedule_id,
                    time_zone="UTC",
                    layers=[
                        scheduling_pb2.Layer(
                            name="weekly",
                            start="2026-01-05T09:00:00",
                            rotation_length="1w",
                            user_ids=users,
                        )
                    ],
                )
            )
        )
    alice = stack.as_user("alice")
    override = scheduling_pb2.Override(user_id="alice")
    override.start.FromSeconds(1_800_000_000)
    override.end.FromSeconds(1_800_003_600)
    made = await alice.scheduling.CreateOverride(
        scheduling_pb2.CreateOverrideRequest(schedule_id="primary", override=override)
    )
    error = await _denied(
        alice.scheduling.CreateOverride(
            scheduling_pb2.CreateOverrideRequest(schedule_id="db", override=override)
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    await alice.scheduling.DeleteOverride(
        scheduling_pb2.DeleteOverrideRequest(schedule_id="primary", override_id=made.override.id)
    )


async def test_a_revoked_api_key_stops_working_at_once(stack: IdentityStack) -> None:
    adam = stack.as_user("adam")
    created = await adam.identity.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(user_id="alice", name="deploy-bot")
    )
    bot = stack.client(created.key)
    who = await bot.identity.WhoAmI(identity_pb2.WhoAmIRequest())
    assert (who.user_id, who.credential, who.api_key_id) == ("alice", "api_key", created.api_key.id)
    assert who.role == common_pb2.ROLE_RESPONDER
    incident_id = await _trigger(stack)
    acked = await bot.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id)
    )
    assert acked.incident.acknowledged_by.user_id == "alice"
    assert "deploy-bot" in acked.incident.acknowledged_by.display
    listed = await adam.identity.ListApiKeys(identity_pb2.ListApiKeysRequest())
    assert [k.id for k in listed.api_keys] == [created.api_key.id]
    assert created.key not in str(listed)
    await adam.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=created.api_key.id))
    error = await _denied(bot.identity.WhoAmI(identity_pb2.WhoAmIRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_api_key_acts_with_at_most_its_role_and_expires(
    stack: IdentityStack, clock: ManualClock
) -> None:
    adam = stack.as_user("adam")
    error = await _denied(
        adam.identity.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(user_id="alice", role=common_pb2.ROLE_ADMIN)
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "role" in (error.details() or "")
    created = await adam.identity.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(
            user_id="adam", role=common_pb2.ROLE_OBSERVER, expires_in=Duration(seconds=3600)
        )
    )
    reader = stack.client(created.key)
    incident_id = await _trigger(stack)
    error = await _denied(
        reader.incidents.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident_id))
    )
    assert error.details() == "role observer may not call tocsin.v1.IncidentService/Acknowledge"
    clock.advance(minutes=61)
    error = await _denied(reader.identity.WhoAmI(identity_pb2.WhoAmIRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_changed_role_counts_at_once(stack: IdentityStack) -> None:
    alice = stack.as_user("alice")
    incident_id = await _trigger(stack)
    await stack.service.scheduling.UpdateUser(
        scheduling_pb2.UpdateUserRequest(
            user=scheduling_pb2.User(id="alice", name="Alice", role=common_pb2.ROLE_OBSERVER)
        )
    )
    error = await _denied(
        alice.incidents.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident_id))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_repeated_wrong_passwords_lock_the_user_out(stack: IdentityStack) -> None:
    anonymous = stack.client("")
    for _ in range(domain.LOCKOUT_FAILURES):
        error = await _denied(
            anonymous.identity.Login(identity_pb2.LoginRequest(user_id="bob", password="guess1234"))
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "wrong user or password"
    error = await _denied(
        anonymous.identity.Login(
            identity_pb2.LoginRequest(user_id="bob", password=PASSWORDS["bob"])
        )
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Other users are not locked; an admin's new password unlocks bob.
    await anonymous.identity.Login(
        identity_pb2.LoginRequest(user_id="alice", password=PASSWORDS["alice"])
    )
    await stack.as_user("adam").identity.SetPassword(
        identity_pb2.SetPasswordRequest(user_id="bob", password="a brand new password")
    )
    await anonymous.identity.Login(
        identity_pb2.LoginRequest(user_id="bob", password="a brand new password")
    )


async def test_a_short_password_is_refused_naming_the_field(stack: IdentityStack) -> None:
    error = await _denied(
        stack.as_user("alice").identity.SetPassword(
            identity_pb2.SetPasswordRequest(user_id="alice", password="short")
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password" in (error.details() or "") and "short" not in (error.details() or "")


async def test_logout_ends_the_session_at_once(stack: IdentityStack) -> None:
    alice = stack.as_user("alice")
    await alice.identity.Logout(identity_pb2.LogoutRequest())
    error = await _denied(alice.identity.WhoAmI(identity_pb2.WhoAmIRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_password_token_or_key_reaches_the_logs(
    stack: IdentityStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    adam = stack.as_user("adam")
    secret = "a password nobody may log"
    await adam.identity.SetPassword(identity_pb2.SetPasswordRequest(user_id="bob", password=secret))
    login = await stack.client("").identity.Login(
        identity_pb2.LoginRequest(user_id="bob", password=secret)
    )
    key = await adam.identity.CreateApiKey(identity_pb2.CreateApiKeyRequest(user_id="bob"))
    await _denied(
        stack.client("").identity.Login(
            identity_pb2.LoginRequest(user_id="bob", password=secret + "x")
        )
    )
    await _denied(stack.client(key.key + "x").identity.WhoAmI(identity_pb2.WhoAmIRequest()))
    audit = await adam.identity.ListAuditEntries(identity_pb2.ListAuditEntriesRequest())
    text = caplog.text + str(audit)
    parsed = parse_token(key.key)
    assert parsed is not None
    # the key's secret part as the key format splits it (it may hold "_" itself, so the
    # text after the last "_" can be a single letter that any log line contains)
    for value in (secret, login.token, key.key, parsed[1]):
        assert value not in text


async def test_a_deleted_user_takes_their_credentials_along(stack: IdentityStack) -> None:
    """A user created again under a deleted user's id inherits no session, API key,
    password or lock-out: the old bearer tokens fail and the old password does not work."""
    adam = stack.as_user("adam")
    user = scheduling_pb2.User(id="dora", name="Dora", role=common_pb2.ROLE_ADMIN)
    await adam.scheduling.CreateUser(scheduling_pb2.CreateUserRequest(user=user))
    await adam.identity.SetPassword(
        identity_pb2.SetPasswordRequest(user_id="dora", password="dora's long password")
    )
    anonymous = stack.client("")
    login = await anonymous.identity.Login(
        identity_pb2.LoginRequest(user_id="dora", password="dora's long password")
    )
    key = await adam.identity.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(user_id="dora", name="dora-bot")
    )
    session, bot = stack.client(login.token), stack.client(key.key)
    assert (await bot.identity.WhoAmI(identity_pb2.WhoAmIRequest())).user_id == "dora"

    await adam.scheduling.DeleteUser(scheduling_pb2.DeleteUserRequest(id="dora"))
    await adam.scheduling.CreateUser(scheduling_pb2.CreateUserRequest(user=user))

    for old in (session, bot):
        error = await _denied(old.identity.WhoAmI(identity_pb2.WhoAmIRequest()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await _denied(
        anonymous.identity.Login(
            identity_pb2.LoginRequest(user_id="dora", password="dora's long password")
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = await adam.identity.ListApiKeys(identity_pb2.ListApiKeysRequest())
    assert key.api_key.id not in [k.id for k in listed.api_keys]


async def test_a_person_manages_their_own_api_keys_only(stack: IdentityStack) -> None:
    """CreateApiKey, ListApiKeys and RevokeApiKey are OWN: a responder or an observer may
    create, list and revoke their own keys (the console's Me page), never another's."""
    adam, alice, olga = (stack.as_user(u) for u in ("adam", "alice", "olga"))
    mine = await alice.identity.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(user_id="alice", name="alice-laptop")
    )
    listed = await alice.identity.ListApiKeys(identity_pb2.ListApiKeysRequest(user_id="alice"))
    assert [k.id for k in listed.api_keys] == [mine.api_key.id]
    for call in (
        alice.identity.CreateApiKey(identity_pb2.CreateApiKeyRequest(user_id="olga")),
        alice.identity.ListApiKeys(identity_pb2.ListApiKeysRequest()),  # everyone's
        alice.identity.ListApiKeys(identity_pb2.ListApiKeysRequest(user_id="olga")),
        olga.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=mine.api_key.id)),
        alice.identity.CreateApiKey(  # more than her role
            identity_pb2.CreateApiKeyRequest(user_id="alice", role=common_pb2.ROLE_ADMIN)
        ),
    ):
        error = await _denied(call)
        assert error.code() in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.INVALID_ARGUMENT,
        ), error
    theirs = await adam.identity.CreateApiKey(identity_pb2.CreateApiKeyRequest(user_id="olga"))
    error = await _denied(
        alice.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=theirs.api_key.id))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    observer_key = await olga.identity.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(user_id="olga", name="olga-bot")
    )
    await alice.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=mine.api_key.id))
    await olga.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=observer_key.api_key.id))
    left = await adam.identity.ListApiKeys(identity_pb2.ListApiKeysRequest())
    assert [k.id for k in left.api_keys] == [theirs.api_key.id]
