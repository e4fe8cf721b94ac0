"""A status update to a Slack channel subscriber: posted by the bot into the channel, as
plain text without Acknowledge buttons (stakeholders read, responders act), against the
local server that speaks Slack's Web API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.notification.fake_slack import FakeSlack, fake_slack
from tests.notification.stack import PagingStack, paging_stack
from tests.webhooks.test_subscriptions import pump
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2 as ipb
from tocsin.v1 import webhooks_pb2 as pb

TOKEN = "xoxb-test-token-5678"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a6"
CHANNEL = "C024BE91L"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack(TOKEN, SIGNING_SECRET) as fake:
        fake.channels.add(CHANNEL)
        yield fake


@pytest.fixture
async def stack(redis: RedisClient, slack: FakeSlack) -> AsyncIterator[PagingStack]:
    env = {
        "TOCSIN_SLACK_BOT_TOKEN": TOKEN,
        "TOCSIN_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "TOCSIN_SLACK_BASE_URL": slack.base_url,
    }
    async with paging_stack(redis, env) as paging:
        yield paging


async def test_a_status_update_is_posted_to_a_slack_channel_without_buttons(
    stack: PagingStack, slack: FakeSlack
) -> None:
    incident_id = await stack.trigger(mirror=False)
    await stack.client.webhooks.Subscribe(
        pb.SubscribeRequest(
            subscription=pb.Subscription(
                id="exec-channel",
                service_id="payments-api",
                subscriber_type=pb.SUBSCRIBER_TYPE_SLACK_CHANNEL,
                address=CHANNEL,
            )
        )
    )
    slack.failures.append(429)  # Slack's rate limit first: retried after the backoff
    await stack.client.incidents.PostStatusUpdate(
        ipb.PostStatusUpdateRequest(incident_id=incident_id, text="Rolled back; recovering")
    )
    await pump(stack)
    assert slack.messages == []
    stack.clock.advance(seconds=10)
    await pump(stack)
    [message] = slack.messages
    assert message.channel == CHANNEL and message.blocks == []
    assert "Rolled back; recovering" in message.text and "disk full on db1" in message.text
    log = await stack.client.webhooks.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(id="exec-channel")
    )
    assert [d.outcome for d in log.deliveries] == [
        pb.DELIVERY_OUTCOME_DELIVERED,
        pb.DELIVERY_OUTCOME_RETRYING,
    ]
