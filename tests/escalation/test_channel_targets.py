"""Escalation levels that page a Slack channel (`slack_channel`: buttons, a signed press
acknowledges as the tocsin user linked to the presser) and a Teams channel
(`teams_channel`: an Adaptive Card with a link to act), through the same Notify and the
same at-most-once-per-attempt record as a person's page."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tests.escalation.stack import FullStack, full_stack, user
from tests.notification import test_teams
from tests.notification.fake_slack import FakeSlack, fake_slack
from tests.notification.test_settings import violations
from tests.notification.test_slack import ALICE_SLACK, SIGNING_SECRET, TOKEN, add_slack_user
from tests.notification.test_teams import TeamsChannelServer
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import common_pb2, escalation_pb2, incidents_pb2

OPS = "C024BE91L"
teams = test_teams.teams  # the Teams channel server fixture


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack(TOKEN, SIGNING_SECRET) as fake:
        fake.channels.add(OPS)
        yield fake


@pytest.fixture
async def stack(any_redis: RedisClient, slack: FakeSlack) -> AsyncIterator[FullStack]:
    env = {
        "TOCSIN_SLACK_BOT_TOKEN": TOKEN,
        "TOCSIN_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "TOCSIN_SLACK_BASE_URL": slack.base_url,
    }
    async with full_stack(any_redis, env) as full:
        yield full
        await full.run_until_quiet()
        full.pager.check_all_expected()


async def test_a_level_pages_a_slack_and_a_teams_channel_and_a_press_acknowledges(
    stack: FullStack, slack: FakeSlack, teams: TeamsChannelServer
) -> None:
    await add_slack_user(stack.paging)  # alice: Slack member U024BE7LH, SMS after 10 min
    await stack.policy(
        (
            [
                escalation_pb2.EscalationTarget(slack_channel=OPS.lower()),
                escalation_pb2.EscalationTarget(teams_channel=teams.url),
            ],
            10,
        ),
        ([user("alice")], 10),
    )
    incident_id = await stack.paging.trigger("disk full on db1", mirror=False)
    await stack.run_until_quiet()
    await stack.paging.settle()

    [message] = slack.messages
    number = (await stack.paging.incident(incident_id)).number
    assert message.channel == OPS and f"#{number} " in message.text
    [(_, card)] = teams.posts
    content = card["attachments"][0]["content"]
    assert content["actions"][0]["url"].endswith(f"/incidents/{incident_id}")
    escalation = await stack.escalation_of(incident_id)
    assert [p.user_id for p in escalation.pages] == [
        f"slack_channel:{OPS.lower()}",
        escalation.pages[1].user_id,
    ]
    assert escalation.pages[1].user_id.startswith("teams_channel:")
    assert teams.url not in escalation.pages[1].user_id
    incident = await stack.paging.incident(incident_id)
    messages = [e.message for e in incident.timeline]
    assert any(f"paged Slack channel {OPS}, Teams channel" in m for m in messages), messages
    assert not any(teams.url in m for m in messages)

    # Alice presses Acknowledge in the channel: the incident is hers, escalation stops.
    url = f"{stack.paging.config.public_url}/slack/interactions"
    assert await slack.press(url, message, "ack", by=ALICE_SLACK) == 200
    incident = await stack.paging.incident(incident_id)
    assert incident.status == incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
    [ack] = [e for e in incident.timeline if e.kind == incidents_pb2.TIMELINE_KIND_ACKNOWLEDGED]
    assert (ack.actor.user_id, ack.actor.channel) == ("alice", common_pb2.CHANNEL_SLACK)
    assert message.text.startswith("Acknowledged")
    await stack.run_until_quiet()
    await stack.tick(minutes=30)  # level 2 (alice) never comes
    assert len(slack.messages) == 1 and len(teams.posts) == 1


async def test_a_channel_target_is_validated_naming_its_field(stack: FullStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.policy(
            (
                [
                    escalation_pb2.EscalationTarget(slack_channel="#ops"),
                    escalation_pb2.EscalationTarget(teams_channel="http://teams.example.com/x"),
                ],
                10,
            )
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == [
        "policy.levels[0].targets[0].slack_channel",
        "policy.levels[0].targets[1].teams_channel",
    ]
    assert "teams.example.com" not in str(raised.value.details())  # the URL is a secret
