"""Calendar feeds through the gateway: one event per final shift, parseable, and guarded by
a per-feed token when an API token is set."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import icalendar
import pytest

from tests.scheduling.test_service import NOW, primary
from tests.services import client_for, running
from tocsin.client.feeds import feed_token
from tocsin.gateway.server import start_gateway
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import Address, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.scheduling.server import create_server
from tocsin.v1 import scheduling_pb2 as pb


async def _gateway(redis: RedisClient, env: dict[str, str]) -> AsyncIterator[str]:
    clock = ManualClock(NOW)
    async with running(create_server, redis, clock, env) as (_, address):
        token = env.get("TOCSIN_API_TOKEN", "")
        async with client_for(token, scheduling=address) as client:
            for user in ("alice", "bob", "carol", "dave"):
                await client.scheduling.CreateUser(
                    pb.CreateUserRequest(user=pb.User(id=user, name=user.title()))
                )
            await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
        config = load_config({**env, "TOCSIN_SCHEDULING_ADDR": address})
        server, task, port = await start_gateway(config, clock, Address("127.0.0.1", 0))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


@pytest.fixture
async def gateway(redis: RedisClient) -> AsyncIterator[str]:
    async for url in _gateway(redis, {}):
        yield url


@pytest.fixture
async def guarded_gateway(redis: RedisClient) -> AsyncIterator[str]:
    async for url in _gateway(redis, {"TOCSIN_API_TOKEN": "s3cret"}):
        yield url


async def test_schedule_feed_has_one_event_per_shift(gateway: str) -> None:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"{gateway}/ical/schedules/primary.ics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/calendar")
    assert b"\r\n" in reply.content
    calendar = icalendar.Calendar.from_ical(reply.content)
    events = list(calendar.walk("VEVENT"))
    assert events
    uids = [str(e["UID"]) for e in events]
    assert len(set(uids)) == len(uids)
    carol = [e for e in events if "carol" in str(e["SUMMARY"])]
    assert any(e.decoded("DTSTART").isoformat() == "2026-11-27T23:00:00+00:00" for e in carol)


async def test_user_feed_and_unknown_ids(gateway: str) -> None:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"{gateway}/ical/users/dave.ics")
        missing = await http.get(f"{gateway}/ical/schedules/nope.ics")
    assert reply.status_code == 200
    assert list(icalendar.Calendar.from_ical(reply.content).walk("VEVENT"))
    assert missing.status_code == 404


async def test_feeds_need_their_own_token_when_an_api_token_is_set(guarded_gateway: str) -> None:
    path = "/ical/schedules/primary.ics"
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{guarded_gateway}{path}")).status_code == 403
        other = feed_token("s3cret", "/ical/users/dave.ics")
        assert (await http.get(f"{guarded_gateway}{path}?token={other}")).status_code == 403
        good = await http.get(f"{guarded_gateway}{path}?token={feed_token('s3cret', path)}")
    assert good.status_code == 200
