"""A GoAlert-style paging harness: tests read like what the on-call engineer lives through.

    pager.person("alice", "+15005550010")
    await pager.expect_sms("alice", contains="disk full")
    clock.advance(minutes=1); await worker.run_once()
    call = await pager.expect_voice("alice")
    await pager.press(call, "4")
    await pager.expect_no_more_pages()

`Pager` wraps the fake Twilio (real HTTP). Every page Twilio accepted must be expected,
in order per person and channel; `check_all_expected()` (the `pager` fixture's finaliser)
fails the test on any page nobody expected, so a duplicate page is a failing test.

`settle` (optional) waits until the system under test has finished what it started
(e.g. the notification service's background sends): expectations wait for it first,
then poll the fake for a bounded wall-clock moment (network I/O, never escalation time;
escalations are driven by a ManualClock).

The `pager` fixture starts a fake Twilio (ACCOUNT_SID / AUTH_TOKEN below; point
TOCSIN_TWILIO_BASE_URL at `pager.fake.base_url`) and fails the test on any page left
unexpected. Use it from another test module with `from tests.harness import pager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Literal
from xml.etree import ElementTree

import pytest
import uvicorn
from starlette.types import ASGIApp

from tocsin.faketwilio import FakeTwilio, RecordedRequest, create_fake_twilio
from tocsin.notification.providers import mask_phone

ACCOUNT_SID = "AC" + "7e" * 16
AUTH_TOKEN = "harness-auth-token"
FROM_NUMBER = "+15005550006"

Kind = Literal["sms", "call"]
Settle = Callable[[], Awaitable[None]]


class UnexpectedPages(AssertionError):
    """Pages arrived that the test did not expect."""


@dataclass
class Pager:
    fake: FakeTwilio
    settle: Settle | None = None
    timeout_s: float = 5.0
    sms_webhook_url: str | None = None
    """Where a person's SMS replies go (the gateway's /twilio/sms)."""
    people: dict[str, str] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set)

    def person(self, name: str, number: str) -> str:
        """Give a phone number a name for expectations and messages; returns the number."""
        self.people[name] = number
        return number

    def number_of(self, who: str) -> str:
        return self.people.get(who, who)

    def name_of(self, number: str | None) -> str:
        for name, known in self.people.items():
            if known == number:
                return name
        return mask_phone(number or "")

    # -- expectations ---------------------------------------------------------------------

    async def expect_sms(self, who: str, contains: str | None = None) -> RecordedRequest:
        """The next SMS to `who` (a name or a number); it must contain `contains`."""
        return await self._expect("sms", who, contains)

    async def expect_voice(self, who: str, contains: str | None = None) -> RecordedRequest:
        """The next call to `who`; its spoken text must contain `contains`."""
        return await self._expect("call", who, contains)

    async def expect_no_more_pages(self) -> None:
        """Fail if any page arrived that no expectation consumed."""
        if self.settle is not None:
            await self.settle()
        self.check_all_expected()

    def pages(self, kind: Kind | None = None) -> list[RecordedRequest]:
        """Every page Twilio accepted (what reached a phone), oldest first."""
        return self.fake.accepted(kind)

    def unexpected(self) -> list[RecordedRequest]:
        return [r for r in self.pages() if id(r) not in self._seen]

    def check_all_expected(self) -> None:
        extra = self.unexpected()
        if extra:
            listing = "\n".join(f"  {self.describe(r)}" for r in extra)
            raise UnexpectedPages(f"{len(extra)} page(s) nobody expected:\n{listing}")

    def describe(self, page: RecordedRequest) -> str:
        what = page.body if page.kind == "sms" else " | ".join(spoken_text(page.twiml or ""))
        return f"{page.kind} to {self.name_of(page.to)}: {what}"

    async def _expect(self, kind: Kind, who: str, contains: str | None) -> RecordedRequest:
        number = self.number_of(who)
        if self.settle is not None:
            await self.settle()
        deadline = time.monotonic() + self.timeout_s
        while True:
            page = next(
                (r for r in self.pages(kind) if r.to == number and id(r) not in self._seen),
                None,
            )
            if page is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        if page is None:
            sent = "\n".join(f"  {self.describe(r)}" for r in self.pages()) or "  (none)"
            raise AssertionError(f"expected {kind} to {who}; pages so far:\n{sent}")
        self._seen.add(id(page))
        text = page.body if kind == "sms" else " ".join(spoken_text(page.twiml or ""))
        if contains is not None and contains not in (text or ""):
            raise AssertionError(
                f"the next {kind} to {who} does not contain {contains!r}: {self.describe(page)}"
            )
        return page

    # -- what people do -------------------------------------------------------------------

    async def reply_sms(self, who: str, body: str) -> str:
        """`who` texts `body` back to tocsin's number; returns tocsin's answer text ('' if
        none). Fails unless the webhook answered 200."""
        if self.sms_webhook_url is None:
            raise RuntimeError("set Pager.sms_webhook_url to the gateway's /twilio/sms")
        answer = await self.fake.reply_sms(
            from_=self.number_of(who), body=body, to=FROM_NUMBER, webhook_url=self.sms_webhook_url
        )
        assert answer.status_code == 200, (
            f"SMS webhook answered {answer.status_code}: {answer.body}"
        )
        return " ".join(message_texts(answer.body))

    async def press(self, call: RecordedRequest, digits: str) -> str:
        """The callee presses `digits` in the call's menu; returns the TwiML tocsin answered."""
        actions = gather_actions(call.twiml or "")
        assert actions, f"the call offers no menu: {call.twiml}"
        assert call.sid is not None
        answer = await self.fake.press_digits(call.sid, digits, actions[0])
        assert answer.status_code == 200, f"voice webhook answered {answer.status_code}"
        return answer.body


@pytest.fixture
async def pager() -> AsyncIterator[Pager]:
    """A fake Twilio with expectations; the test fails on any page nobody expected."""
    async with create_fake_twilio(ACCOUNT_SID, AUTH_TOKEN) as fake:
        expecting = Pager(fake)
        yield expecting
        await expecting.expect_no_more_pages()


def spoken_text(twiml: str) -> list[str]:
    root = ElementTree.fromstring(twiml)
    return [el.text for el in root.iter("Say") if el.text]


def gather_actions(twiml: str) -> list[str]:
    root = ElementTree.fromstring(twiml)
    return [el.attrib["action"] for el in root.iter("Gather") if "action" in el.attrib]


def message_texts(twiml: str) -> list[str]:
    if not twiml.strip():
        return []
    root = ElementTree.fromstring(twiml)
    return [el.text or "" for el in root.iter("Message")]


# -- serving an ASGI app on a port known in advance ----------------------------------------


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on a free port, so a URL can be configured before serving."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


class _QuietServer(uvicorn.Server):
    """uvicorn without signal handlers: pytest owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serve_on(sock: socket.socket, app: ASGIApp) -> AsyncIterator[None]:
    """Serve `app` on an already listening socket in this event loop."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = _QuietServer(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield  # the socket already listens: connections wait in its backlog until accepted
    finally:
        server.should_exit = True
        await task
        sock.close()
