"""Slack pages end to end: real services and gateway, real Redis (standalone and
Cluster), slack-sdk against a local server that speaks Slack's Web API and signs button
presses as Slack does."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.notification.fake_slack import FakeSlack, fake_slack
from tests.notification.stack import ALICE, SMS, PagingStack, paging_stack
from tests.notification.test_settings import violations
from tocsin.runtime import channeltargets
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import common_pb2, incidents_pb2
from tocsin.v1 import notification_pb2 as pb

SLACK = pb.CONTACT_METHOD_TYPE_SLACK
TOKEN = "xoxb-test-token-1234"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ALICE_SLACK = "U024BE7LH"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack(TOKEN, SIGNING_SECRET) as fake:
        yield fake


@pytest.fixture
async def stack(any_redis: RedisClient, slack: FakeSlack) -> AsyncIterator[PagingStack]:
    env = {
        "TOCSIN_SLACK_BOT_TOKEN": TOKEN,
        "TOCSIN_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "TOCSIN_SLACK_BASE_URL": slack.base_url,
    }
    async with paging_stack(any_redis, env) as paging:
        yield paging
        paging.pager.check_all_expected()


def interactions_url(stack: PagingStack) -> str:
    return f"{stack.config.public_url}/slack/interactions"


async def add_slack_user(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 600)])
    reply = await stack.client.notification.CreateContactMethod(
        pb.CreateContactMethodRequest(
            contact_method=pb.ContactMethod(
                id="alice-slack", user_id="alice", type=SLACK, address=" u024be7lh "
            )
        )
    )
    assert reply.contact_method.address == ALICE_SLACK
    await stack.client.notification.SetNotificationRules(
        pb.SetNotificationRulesRequest(
            user_id="alice",
            rules=[
                pb.NotificationRule(contact_method_id="alice-slack", delay=Duration(seconds=0)),
                pb.NotificationRule(contact_method_id="alice-sms", delay=Duration(seconds=300)),
            ],
        )
    )


async def status(stack: PagingStack, incident_id: str) -> int:
    return (await stack.incident(incident_id)).status


async def test_a_dm_with_buttons_and_a_signed_press_acknowledges_and_updates_it(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await add_slack_user(stack)
    incident_id = await stack.trigger("disk full on db1 <!channel>")
    number = (await stack.incident(incident_id)).number

    await stack.notify(incident_id, "alice")
    await stack.settle()

    [message] = slack.messages
    assert message.user == ALICE_SLACK
    assert f"#{number} Payments API" in message.text
    assert "&lt;!channel&gt;" in message.text  # alert text cannot mention @channel
    [attempt] = [a for a in await stack.attempts(incident_id) if a.type == SLACK]
    assert message.button("ack")["value"] == attempt.id
    assert message.button("resolve")["value"] == attempt.id

    # A forged press (wrong secret) is refused and acknowledges nothing.
    assert await slack.press(interactions_url(stack), message, "ack", secret="x" * 32) == 401
    # So is a press by another Slack user (a message forwarded, a shared DM).
    assert await slack.press(interactions_url(stack), message, "ack", by="U0SOMEONE") == 200
    assert await status(stack, incident_id) == incidents_pb2.INCIDENT_STATUS_TRIGGERED
    assert message.updates == 0

    as_sent = copy.deepcopy(message)
    assert await slack.press(interactions_url(stack), message, "ack") == 200

    incident = await stack.incident(incident_id)
    assert incident.status == incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
    [ack] = [e for e in incident.timeline if e.kind == incidents_pb2.TIMELINE_KIND_ACKNOWLEDGED]
    assert (ack.actor.user_id, ack.actor.channel) == ("alice", common_pb2.CHANNEL_SLACK)
    assert message.updates == 1 and message.text.startswith("Acknowledged")
    assert "<!channel>" not in message.text
    assert not any(b.get("type") == "actions" for b in message.blocks)  # buttons gone
    # The same press again (replayed) changes nothing.
    assert await slack.press(interactions_url(stack), as_sent, "ack") == 200
    assert message.updates == 1
    await stack.drain_events()
    await stack.pager.expect_no_more_pages()  # the SMS rule was cancelled


async def test_resolve_button(stack: PagingStack, slack: FakeSlack) -> None:
    await add_slack_user(stack)
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.settle()

    assert await slack.press(interactions_url(stack), slack.messages[0], "resolve") == 200
    assert await status(stack, incident_id) == incidents_pb2.INCIDENT_STATUS_RESOLVED


async def test_a_rate_limited_post_is_retried_and_posted_once(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await add_slack_user(stack)
    incident_id = await stack.trigger()
    slack.failures.append(429)

    await stack.notify(incident_id, "alice")
    for _ in range(200):
        if slack.messages:
            break
        stack.clock.advance(seconds=1)
        await asyncio.sleep(0.01)
    await stack.settle()

    assert slack.calls == ["chat.postMessage", "chat.postMessage"] and len(slack.messages) == 1


async def test_an_unknown_slack_user_fails_and_the_next_rule_runs_at_once(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await add_slack_user(stack)
    slack.token = "xoxb-another"  # tocsin's token is now refused: invalid_auth
    incident_id = await stack.trigger()

    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")

    [attempt] = [a for a in await stack.attempts(incident_id) if a.type == SLACK]
    assert attempt.status == pb.ATTEMPT_STATUS_FAILED
    timeline = [e.message for e in (await stack.incident(incident_id)).timeline]
    assert any("invalid_auth" in t for t in timeline)
    assert not any(TOKEN in t for t in timeline)


async def test_slack_user_ids_are_checked(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.client.notification.CreateContactMethod(
            pb.CreateContactMethodRequest(
                contact_method=pb.ContactMethod(
                    id="alice-slack", user_id="alice", type=SLACK, address="@alice"
                )
            )
        )
    assert violations(refused.value) == ["contact_method.address"]


def test_slack_settings_come_together_and_are_never_shown() -> None:
    with pytest.raises(ConfigError, match="TOCSIN_SLACK_SIGNING_SECRET must be set together"):
        load_config({"TOCSIN_SLACK_BOT_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="TOCSIN_SLACK_BOT_TOKEN: expected a bot token"):
        load_config({"TOCSIN_SLACK_BOT_TOKEN": "xoxp-user", "TOCSIN_SLACK_SIGNING_SECRET": "s"})
    config = load_config(
        {"TOCSIN_SLACK_BOT_TOKEN": TOKEN, "TOCSIN_SLACK_SIGNING_SECRET": SIGNING_SECRET}
    )
    assert config.slack is not None and config.slack.base_url == "https://slack.com"
    assert TOKEN not in repr(config) and SIGNING_SECRET not in repr(config)


OPS_CHANNEL = "C024BE91L"


async def page_channel(stack: PagingStack, incident_id: str, channel: str) -> pb.NotifyResponse:
    """What escalation sends for a level's `slack_channel` target."""
    target = channeltargets.target_id(channeltargets.SLACK_CHANNEL, channel)
    return await stack.client.notification.Notify(
        pb.NotifyRequest(
            incident_id=incident_id,
            user_id=target,
            idempotency_key=f"{incident_id}/0/0/0/{target}",
            channel=pb.ChannelTarget(type=SLACK, address=channel),
        )
    )


async def test_a_channel_page_has_buttons_and_a_linked_members_press_acknowledges(
    stack: PagingStack, slack: FakeSlack
) -> None:
    slack.channels.add(OPS_CHANNEL)
    await add_slack_user(stack)  # alice's Slack member id links her to tocsin
    incident_id = await stack.trigger("disk full on db1")

    reply = await page_channel(stack, incident_id, OPS_CHANNEL)
    assert reply.started and not reply.unreachable
    await stack.settle()
    # Once per attempt: the same Notify again (a redone escalation hop) posts nothing.
    assert not (await page_channel(stack, incident_id, OPS_CHANNEL)).started
    await stack.settle()

    [message] = slack.messages
    assert message.channel == OPS_CHANNEL
    number = (await stack.incident(incident_id)).number
    assert f"#{number} Payments API" in message.text
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status == pb.ATTEMPT_STATUS_SENT
    assert attempt.user_id == f"slack_channel:{OPS_CHANNEL.lower()}"
    assert message.button("ack")["value"] == attempt.id

    # A forged press acknowledges nothing; nor does a member tocsin cannot name.
    assert (
        await slack.press(interactions_url(stack), message, "ack", by=ALICE_SLACK, secret="x" * 32)
        == 401
    )
    assert await slack.press(interactions_url(stack), message, "ack", by="U0STRANGER") == 200
    assert await status(stack, incident_id) == incidents_pb2.INCIDENT_STATUS_TRIGGERED
    assert message.updates == 0

    # Alice presses in the channel: she acknowledges, and the message says so in place.
    assert await slack.press(interactions_url(stack), message, "ack", by=ALICE_SLACK) == 200
    incident = await stack.incident(incident_id)
    assert incident.status == incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
    [ack] = [e for e in incident.timeline if e.kind == incidents_pb2.TIMELINE_KIND_ACKNOWLEDGED]
    assert (ack.actor.user_id, ack.actor.channel) == ("alice", common_pb2.CHANNEL_SLACK)
    assert message.updates == 1 and message.text.startswith("Acknowledged")
    assert not any(b.get("type") == "actions" for b in message.blocks)


async def test_a_channel_page_names_its_channel_correctly_or_is_refused(
    stack: PagingStack,
) -> None:
    incident_id = await stack.trigger()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.client.notification.Notify(
            pb.NotifyRequest(
                incident_id=incident_id,
                user_id="alice",
                idempotency_key="k",
                channel=pb.ChannelTarget(type=SLACK, address=OPS_CHANNEL),
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in violations(raised.value)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await page_channel(stack, incident_id, "not a channel")
    assert "channel.address" in violations(raised.value)


async def test_a_test_page_reaches_the_slack_user_without_buttons(
    stack: PagingStack, slack: FakeSlack
) -> None:
    await add_slack_user(stack)
    reply = await stack.client.notification.SendTestPage(pb.SendTestPageRequest(user_id="alice"))
    [attempt] = [a for a in reply.attempts if a.type == SLACK]
    assert attempt.status == pb.ATTEMPT_STATUS_SENT
    [message] = slack.messages
    assert message.user == ALICE_SLACK and "test page" in message.text
    assert not any(b.get("type") == "actions" for b in message.blocks)
    await stack.pager.expect_sms("alice")  # her SMS contact method got its test page too
    await stack.pager.expect_voice("alice")
