"""Microsoft Teams pages end to end: real services, real Redis, and a real HTTP server the
test starts in place of the Teams channel's Workflows URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from tests.notification.stack import ALICE, SMS, PagingStack
from tocsin.notification.channels.teams import ADAPTIVE_CARD
from tocsin.runtime import channeltargets
from tocsin.v1 import notification_pb2 as pb

TEAMS = pb.CONTACT_METHOD_TYPE_TEAMS


@dataclass
class TeamsChannelServer:
    url: str = ""
    answers: list[int] = field(default_factory=list)
    posts: list[tuple[int, Any]] = field(default_factory=list)


@pytest.fixture
async def teams() -> AsyncIterator[TeamsChannelServer]:
    server = TeamsChannelServer()

    async def workflow(request: web.Request) -> web.Response:
        status = server.answers.pop(0) if server.answers else 202
        server.posts.append((status, await request.json()))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/workflows/{id}/triggers/manual/paths/invoke", workflow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/workflows/abc/triggers/manual/paths/invoke?sig=s3cr3t"
    yield server
    await runner.cleanup()


async def add_teams_method(stack: PagingStack, url: str) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 600)])
    await stack.client.notification.CreateContactMethod(
        pb.CreateContactMethodRequest(
            contact_method=pb.ContactMethod(
                id="ops-teams", user_id="alice", type=TEAMS, address=url
            )
        )
    )
    await stack.client.notification.SetNotificationRules(
        pb.SetNotificationRulesRequest(
            user_id="alice",
            rules=[
                pb.NotificationRule(contact_method_id="ops-teams", delay=Duration(seconds=0)),
                pb.NotificationRule(contact_method_id="alice-sms", delay=Duration(seconds=300)),
            ],
        )
    )


async def test_a_page_reaches_the_teams_channel_as_an_adaptive_card(
    stack: PagingStack, teams: TeamsChannelServer
) -> None:
    await add_teams_method(stack, teams.url)
    incident_id = await stack.trigger("disk full on db1")
    number = (await stack.incident(incident_id)).number

    await stack.notify(incident_id, "alice")
    await stack.settle()

    [(status, message)] = teams.posts
    assert status == 202 and message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == ADAPTIVE_CARD
    content = attachment["content"]
    assert content["type"] == "AdaptiveCard"
    texts = [block["text"] for block in content["body"]]
    assert texts[0] == f"#{number} Payments API"
    assert texts[1].startswith("disk full on db1")
    assert content["actions"] == [
        {
            "type": "Action.OpenUrl",
            "title": "Open tocsin",
            "url": f"{stack.config.public_url}/incidents/{incident_id}",
        }
    ]
    [attempt] = [a for a in await stack.attempts(incident_id) if a.type == TEAMS]
    assert attempt.status == pb.ATTEMPT_STATUS_SENT
    await stack.pager.expect_no_more_pages()


async def test_a_refused_post_fails_and_the_next_rule_runs_at_once(
    stack: PagingStack, teams: TeamsChannelServer
) -> None:
    await add_teams_method(stack, teams.url)
    teams.answers.append(404)  # the workflow was deleted
    incident_id = await stack.trigger()

    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")

    [attempt] = [a for a in await stack.attempts(incident_id) if a.type == TEAMS]
    assert attempt.status == pb.ATTEMPT_STATUS_FAILED and attempt.error_code == 404
    timeline = [e.message for e in (await stack.incident(incident_id)).timeline]
    assert any("Teams to alice (ops-teams) failed" in t for t in timeline)
    assert not any("s3cr3t" in t for t in timeline)


async def test_an_escalation_level_pages_a_teams_channel_once_with_a_link_to_act(
    stack: PagingStack, teams: TeamsChannelServer
) -> None:
    """What escalation sends for a level's `teams_channel` target: the card goes to the
    channel once per attempt; the URL (a credential) is in no id."""
    incident_id = await stack.trigger("disk full on db1")
    target = channeltargets.target_id(channeltargets.TEAMS_CHANNEL, teams.url)
    assert teams.url not in target
    request = pb.NotifyRequest(
        incident_id=incident_id,
        user_id=target,
        idempotency_key=f"{incident_id}/0/0/0/{target}",
        channel=pb.ChannelTarget(type=TEAMS, address=teams.url),
    )
    assert (await stack.client.notification.Notify(request)).started
    assert not (await stack.client.notification.Notify(request)).started
    await stack.settle()

    [(status, message)] = teams.posts
    assert status == 202
    content = message["attachments"][0]["content"]
    number = (await stack.incident(incident_id)).number
    assert content["body"][0]["text"] == f"#{number} Payments API"
    assert content["actions"][0]["url"] == f"{stack.config.public_url}/incidents/{incident_id}"
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status == pb.ATTEMPT_STATUS_SENT and attempt.user_id == target


async def test_a_test_page_reaches_the_teams_channel(
    stack: PagingStack, teams: TeamsChannelServer
) -> None:
    await add_teams_method(stack, teams.url)
    reply = await stack.client.notification.SendTestPage(pb.SendTestPageRequest(user_id="alice"))
    [attempt] = [a for a in reply.attempts if a.type == TEAMS]
    assert attempt.status == pb.ATTEMPT_STATUS_SENT
    [(status, message)] = teams.posts
    assert status == 202
    assert message["attachments"][0]["content"]["body"][0]["text"] == "tocsin test page"
    await stack.pager.expect_sms("alice")
    await stack.pager.expect_voice("alice")
