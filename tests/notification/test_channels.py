"""The channel registry: a contact type no channel sends is refused when it is created
(naming the field, in `tocsin apply` with file:line) and never sent, least of all as a
call; SMS and voice go through their channels."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.notification.stack import ALICE, SMS, VOICE, PagingStack
from tests.notification.test_settings import create, settings, violations
from tocsin.client.configfile import ConfigFileError, load_config_file
from tocsin.client.contact_types import CONTACT_TYPE_NAMES
from tocsin.notification import domain
from tocsin.notification.channels import ChannelRegistry, channel_name
from tocsin.notification.channels.phone import SmsChannel
from tocsin.notification.providers import ConsoleProvider
from tocsin.v1 import notification_pb2 as pb

UNKNOWN_TYPE = 97


def method(method_id: str, channel: int, address: str = ALICE) -> pb.ContactMethod:
    return pb.ContactMethod(
        id=method_id,
        user_id="alice",
        type=pb.ContactMethodType.ValueType(channel),
        address=address,
    )


async def test_an_unknown_contact_type_is_refused_naming_the_field_and_nothing_is_written(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])

    for bad in (UNKNOWN_TYPE, pb.CONTACT_METHOD_TYPE_UNSPECIFIED):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create(stack, method("alice-pigeon", bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(refused.value) == ["contact_method.type"]
        assert "must be one of sms, voice, email, teams" in str(refused.value.details())

    stored = {m.id for m in (await settings(stack)).contact_methods}
    assert stored == {"alice-sms", "alice-voice"}


async def test_a_stored_method_of_a_type_no_channel_sends_is_skipped_never_called(
    stack: PagingStack,
) -> None:
    """A contact method stored by an older or newer version (or by hand) with a type this
    process has no channel for: its rule is skipped as unreachable and the next rule
    runs at once. Nothing reaches Twilio for it: no call, no SMS."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    odd = method("alice-pigeon", UNKNOWN_TYPE)

    def with_odd_method(current: domain.Settings) -> domain.Settings:
        rules = [pb.NotificationRule(contact_method_id="alice-pigeon"), *current.rules]
        rules[1].delay.seconds = 300
        return domain.Settings(contact_methods=[*current.contact_methods, odd], rules=rules)

    await stack.parts.contacts.change("alice", with_odd_method)
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")
    await stack.pager.expect_no_more_pages()

    attempts = {a.contact_method_id: a for a in await stack.attempts(incident_id)}
    assert attempts["alice-pigeon"].status == pb.ATTEMPT_STATUS_FAILED
    assert attempts["alice-sms"].status in (pb.ATTEMPT_STATUS_SENT, pb.ATTEMPT_STATUS_DELIVERED)
    timeline = [e.message for e in (await stack.incident(incident_id)).timeline]
    assert any("no channel sends contact type unknown (97)" in text for text in timeline)


async def test_a_test_page_to_a_type_no_channel_sends_fails_without_a_request(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    odd = method("alice-pigeon", UNKNOWN_TYPE)
    await stack.parts.contacts.change(
        "alice",
        lambda s: domain.Settings(contact_methods=[*s.contact_methods, odd], rules=s.rules),
    )
    reply = await stack.client.notification.SendTestPage(pb.SendTestPageRequest(user_id="alice"))
    await stack.pager.expect_sms("alice", "test page")
    await stack.pager.expect_voice("alice", "test call")
    await stack.pager.expect_no_more_pages()

    by_method = {a.contact_method_id: a for a in reply.attempts}
    assert by_method["alice-pigeon"].status == pb.ATTEMPT_STATUS_FAILED
    assert "no channel sends" in by_method["alice-pigeon"].provider_status


def test_a_registry_names_its_types_and_refuses_two_channels_for_one() -> None:
    provider = ConsoleProvider()
    sms = SmsChannel(provider, "http://127.0.0.1:8080", status_callbacks=False)
    registry = ChannelRegistry([sms])

    assert registry.find(SMS) is sms and registry.find(VOICE) is None
    violation = registry.type_violation(VOICE, "x.type")
    assert violation is not None and violation.description == "must be one of sms, got voice (2)"
    assert channel_name(UNKNOWN_TYPE) == "unknown"
    with pytest.raises(ValueError, match="two channels for sms"):
        ChannelRegistry([sms, SmsChannel(provider, "http://x", status_callbacks=False)])


def test_apply_refuses_an_unknown_contact_type_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "oncall.yaml"
    config.write_text(
        "users:\n"
        "  - id: alice\n"
        "    name: Alice\n"
        "    contact_methods:\n"
        "      - id: alice-sms\n"
        "        type: sms\n"
        "        address: '+15005550010'\n"
        "      - id: alice-pigeon\n"
        "        type: pigeon\n"
        "        address: loft 3\n"
    )
    with pytest.raises(ConfigFileError) as refused:
        load_config_file(config)

    assert refused.value.problems == [
        f"{config}:9: users[0].contact_methods[1].type: "
        "expected sms, voice, email, webhook, slack or teams, got 'pigeon'"
    ]


def test_apply_reads_every_channel_type_by_its_proto_name(tmp_path: Path) -> None:
    """A channel added to the proto is known to `tocsin apply` (and export, the CLI)
    without a list to keep in step."""
    config = tmp_path / "oncall.yaml"
    kinds = {
        "sms": "'+15005550010'",
        "voice": "'+15005550010'",
        "email": "alice@example.com",
        "webhook": "https://hooks.example.com/tocsin",
        "slack": "U024BE7LH",
        "teams": "https://example.webhook.office.com/x",
    }
    methods = "".join(
        f"      - id: alice-{kind}\n        type: {kind}\n        address: {address}\n"
        for kind, address in kinds.items()
    )
    config.write_text(f"users:\n  - id: alice\n    name: Alice\n    contact_methods:\n{methods}")

    [user] = load_config_file(config).users

    assert [(m.id, channel_name(m.type)) for m in user.contact_methods] == [
        (f"alice-{kind}", kind) for kind in kinds
    ]
    assert CONTACT_TYPE_NAMES[pb.CONTACT_METHOD_TYPE_TEAMS] == "teams"
