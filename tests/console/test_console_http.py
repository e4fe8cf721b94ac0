"""The web console over plain HTTP, in one process: every service, people with passwords
(tests/identity/stack.py) and the gateway, whose history address is a closed port.

Sign-in and its refusals, the session cookie's flags and signature, no redirect off the
site after signing in, the incident page while the history service is down, and the live
feed's server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.identity.stack import ADMIN_TOKEN, PASSWORDS, IdentityStack, identity_stack
from tocsin.console.session import COOKIE
from tocsin.gateway.server import start_gateway
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import common_pb2, incidents_pb2

CLOSED = "127.0.0.1:9"
"""The discard port: nothing listens, calls fail at once (UNAVAILABLE)."""


@dataclass
class Console:
    url: str
    stack: IdentityStack
    clock: ManualClock

    async def trigger(self, summary: str) -> str:
        self.clock.advance(seconds=1)
        reply = await self.stack.service.incidents.Trigger(
            incidents_pb2.TriggerRequest(service_id="payments-api", summary=summary), timeout=10
        )
        return reply.incident.id


@pytest.fixture
async def console(redis: RedisClient, tmp_path: Path) -> AsyncIterator[Console]:
    clock = ManualClock()
    async with identity_stack(redis, clock, tmp_path / "history.db") as stack:
        addrs = stack.addrs | {"history": CLOSED}
        config = load_config(
            {
                "TOCSIN_API_TOKEN": ADMIN_TOKEN,
                "TOCSIN_HTTP_ADDR": "127.0.0.1:0",
                **{f"TOCSIN_{name.upper()}_ADDR": addr for name, addr in addrs.items()},
            }
        )
        server, task, port = await start_gateway(config, ManualClock())
        try:
            yield Console(f"http://127.0.0.1:{port}", stack, clock)
        finally:
            server.should_exit = True
            await task


def csrf_in(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def sign_in(
    browser: httpx.AsyncClient, user: str, password: str, next_: str = "/"
) -> httpx.Response:
    form = await browser.get("/signin")
    assert form.status_code == 200
    return await browser.post(
        "/signin",
        data={"csrf": csrf_in(form.text), "username": user, "password": password, "next": next_},
    )


async def test_sign_in_refusals_and_the_session_cookie(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as browser:
        page = await browser.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/signin?next=/"
        wrong = await sign_in(browser, "alice", "not her password")
        assert wrong.status_code == 401 and "Wrong username or password." in wrong.text
        stale = await browser.post(
            "/signin", data={"csrf": "forged", "username": "alice", "password": PASSWORDS["alice"]}
        )
        assert stale.status_code == 403 and "stale" in stale.text
        # Somewhere else after signing in? Only a path on this site.
        right = await sign_in(browser, "alice", PASSWORDS["alice"], next_="//evil.example/x")
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert PASSWORDS["alice"] not in right.headers["set-cookie"]
        home = await browser.get("/")
        assert home.status_code == 200 and "alice" in home.text
        assert home.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in home.headers["content-security-policy"]
        # A cookie changed by hand is no session.
        value = browser.cookies[COOKIE]
        browser.cookies.set(COOKIE, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
        tampered = await browser.get("/")
        assert tampered.status_code == 303 and tampered.headers["location"].startswith("/signin")


async def test_the_incident_page_says_so_while_history_is_down(console: Console) -> None:
    incident_id = await console.trigger("replication lag on db2")
    async with httpx.AsyncClient(base_url=console.url) as browser:
        await sign_in(browser, "alice", PASSWORDS["alice"])
        page = await browser.get(f"/incidents/{incident_id}")
    assert page.status_code == 200, page.text
    assert "replication lag on db2" in page.text
    assert "The incident history cannot be reached right now." in page.text
    assert ">Acknowledge</button>" in page.text


async def test_the_live_feed_announces_a_new_incident(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url, timeout=10) as browser:
        await sign_in(browser, "olga", PASSWORDS["olga"])
        async with browser.stream("GET", "/incidents/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            incident_id = await console.trigger("certificate expires in 3 days")

            async def announced() -> dict[str, object]:
                async for line in lines:
                    if line.startswith("data: "):
                        data: dict[str, object] = json.loads(line[6:])
                        if data.get("id") == incident_id:
                            return data
                raise AssertionError("the stream ended")

            data = await asyncio.wait_for(announced(), 10)
    assert data["status"] == "triggered" and data["kind"] == "triggered"
    assert "summary" not in data  # which incident changed, never what it says


async def test_the_feed_needs_a_session(console: Console) -> None:
    async with httpx.AsyncClient(base_url=console.url) as browser:
        events = await browser.get("/incidents/events")
    assert events.status_code == 401


async def test_the_list_puts_open_incidents_first_and_filters(console: Console) -> None:
    service = console.stack.service.incidents
    await service.CreateService(
        incidents_pb2.CreateServiceRequest(service=incidents_pb2.Service(id="search-api"))
    )
    old = await console.trigger("old outage of payments")
    await service.Resolve(incidents_pb2.ResolveRequest(incident_id=old), timeout=10)
    acked = await console.trigger("slow payments")
    await service.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=acked), timeout=10)
    console.clock.advance(seconds=1)
    warning = await service.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="search-api",
            summary="search index stale",
            severity=common_pb2.SEVERITY_WARNING,
        ),
        timeout=10,
    )
    fresh = await console.trigger("payments 500s")

    def order(html: str) -> list[str]:
        return re.findall(r'data-incident="(\d+)"', html)

    async with httpx.AsyncClient(base_url=console.url) as browser:
        await sign_in(browser, "olga", PASSWORDS["olga"])
        default = await browser.get("/")
        everything = await browser.get("/incidents/rows", params={"status": "any"})
        by_service = await browser.get("/", params={"service": "search-api"})
        by_severity = await browser.get("/incidents/rows", params={"severity": "warning"})
        by_text = await browser.get("/incidents/rows", params={"q": "PAYMENTS", "status": "any"})
        resolved = await browser.get("/incidents/rows", params={"status": "resolved"})
    # Open only by default: triggered first (newest first), then acknowledged.
    assert order(default.text) == [fresh, warning.incident.id, acked]
    assert order(everything.text) == [fresh, warning.incident.id, acked, old]
    assert order(by_service.text) == [warning.incident.id]
    assert order(by_severity.text) == [warning.incident.id]
    assert order(by_text.text) == [fresh, acked, old]
    assert order(resolved.text) == [old]
    assert f'href="/incidents/{fresh}"' in default.text
    assert "<html" not in everything.text  # the rows only, for the live refresh


def test_the_rules_form_names_a_bad_urgency_instead_of_saving_it_as_high() -> None:
    from starlette.datastructures import FormData

    from tocsin.console.me import _rules

    form = FormData([("rule-0-contact", "alice-sms"), ("rule-0-urgency", "urgent")])
    assert _rules(form) == "rules[0].urgency: expected high or low (got 'urgent')"
    rules = _rules(FormData([("rule-0-contact", "alice-sms"), ("rule-0-urgency", "low")]))
    assert not isinstance(rules, str) and [r.urgency for r in rules] == [common_pb2.URGENCY_LOW]
