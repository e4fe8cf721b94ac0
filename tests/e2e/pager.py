"""The paging harness for a stack of real processes: what the on-call engineer's phone sees.

    pager.person("alice", "+15005550006")
    sms = pager.expect_sms("alice", "disk full on db1")
    pager.expect_voice("alice", not_before=sms.at + minutes(1))
    pager.reply_sms("bob", f"{reply_code(sms)}a")
    pager.expect_no_more_pages(until=sms.at + minutes(20))

The same vocabulary as tests/harness.py, over `tocsin fake-twilio` in its own process (read
through its `/_fake/` control API) and a shared fast clock instead of a ManualClock. Every
page the fake accepted must be taken by exactly one expectation: `expect_no_more_pages`
fails on any page to this pager's people that nobody expected, and `PageLog.unexpected()`
(checked when a module's stack goes down) on any page to anyone.

Waiting is polling the fake with a bounded deadline: the real duration of the virtual
delay under test plus a margin for a loaded machine; never a fixed sleep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from xml.etree import ElementTree

import httpx

from tests.e2e.stack import FROM_NUMBER
from tocsin.notification.providers import mask_phone
from tocsin.runtime.clock import ScaledClock, datetime_to_ms

Kind = Literal["sms", "call"]
MINUTE_MS = 60_000
MARGIN_S = 8.0
"""Real seconds a page may take beyond its due moment (a loaded 2-core machine)."""
SETTLE_S = 0.5
"""Real seconds `expect_no_more_pages` keeps looking after its virtual deadline."""


def minutes(n: float) -> int:
    """`n` virtual minutes in milliseconds."""
    return int(n * MINUTE_MS)


@dataclass(frozen=True)
class Page:
    kind: Kind
    sid: str
    to: str
    text: str
    """The SMS body, or what the call says."""
    twiml: str
    at: int
    """When the fake received it, in virtual milliseconds."""


def spoken_text(twiml: str) -> str:
    return " ".join(el.text or "" for el in ElementTree.fromstring(twiml).iter("Say"))


def reply_code(sms: Page) -> str:
    """The code a page asks to be replied with: "reply '17a' to ack" -> "17"."""
    return sms.text.split("reply '")[1].split("a'")[0]


class PageLog:
    """Every page the fake accepted, and which ones an expectation has taken."""

    def __init__(self, fake_url: str, clock: ScaledClock) -> None:
        self.fake_url = fake_url
        self.clock = clock
        self.taken: set[str] = set()
        self.http = httpx.Client(timeout=10)

    def virtual_ms(self, real: datetime) -> int:
        elapsed = datetime_to_ms(real) - self.clock.real_anchor_ms
        return self.clock.virtual_anchor_ms + int(elapsed * self.clock.speed)

    def real_seconds_until(self, virtual_ms: int) -> float:
        return max(0.0, (virtual_ms - self.clock.now_ms()) / self.clock.speed / 1000)

    def pages(self) -> list[Page]:
        rows: list[dict[str, Any]] = self.http.get(
            f"{self.fake_url}/_fake/requests", params={"accepted": "1"}
        ).json()
        return [
            Page(
                kind=row["kind"],
                sid=row["sid"],
                to=row["to"],
                text=row["body"] if row["kind"] == "sms" else spoken_text(row["twiml"]),
                twiml=row["twiml"] or "",
                at=self.virtual_ms(datetime.fromisoformat(row["received_at"])),
            )
            for row in rows
        ]

    def unexpected(self) -> list[Page]:
        return [page for page in self.pages() if page.sid not in self.taken]

    def close(self) -> None:
        self.http.close()


@dataclass
class Pager:
    log: PageLog
    sms_webhook_url: str
    people: dict[str, str] = field(default_factory=dict)

    def person(self, name: str, number: str) -> str:
        """Give a phone number a name; pages to it now belong to this pager."""
        self.people[name] = number
        return number

    def name_of(self, number: str) -> str:
        return next((n for n, known in self.people.items() if known == number), mask_phone(number))

    def describe(self, page: Page) -> str:
        return f"{page.kind} to {self.name_of(page.to)}: {page.text}"

    # -- expectations -----------------------------------------------------------------

    def expect_sms(
        self, who: str, contains: str | None = None, *, not_before: int | None = None
    ) -> Page:
        """The next SMS to `who`; it must contain `contains` and (if given) have been sent
        no earlier than the virtual moment `not_before`."""
        return self._expect("sms", who, contains, not_before)

    def expect_voice(
        self, who: str, contains: str | None = None, *, not_before: int | None = None
    ) -> Page:
        """The next call to `who`; what it says must contain `contains`."""
        return self._expect("call", who, contains, not_before)

    def expect_sms_each(
        self, who: str, texts: list[str], *, not_before: int | None = None
    ) -> list[Page]:
        """One SMS to `who` for each of `texts` (the first untaken SMS containing it), in
        whatever order they come: for bursts, where pages of many incidents interleave."""
        number = self.people[who]
        found: dict[str, Page] = {}
        deadline = time.monotonic() + self.log.real_seconds_until(not_before or 0) + MARGIN_S
        while len(found) < len(texts) and time.monotonic() < deadline:
            taken = {p.sid for p in found.values()} | self.log.taken
            for page in self.log.pages():
                if page.kind != "sms" or page.to != number or page.sid in taken:
                    continue
                text = next((t for t in texts if t not in found and t in page.text), None)
                if text is not None:
                    found[text] = page
                    taken.add(page.sid)
            time.sleep(0.05)
        self.log.taken.update(p.sid for p in found.values())
        missing = [t for t in texts if t not in found]
        assert not missing, f"no SMS to {who} about {missing}"
        early = [p for p in found.values() if not_before is not None and p.at < not_before]
        assert not early, f"too early: {[self.describe(p) for p in early]}"
        return [found[t] for t in texts]

    def expect_no_more_pages(self, *, until: int) -> None:
        """Wait until the virtual moment `until` (plus half a real second for work already
        started), then fail on any page to this pager's people that nobody expected."""
        time.sleep(self.log.real_seconds_until(until) + SETTLE_S)
        numbers = set(self.people.values())
        extra = [p for p in self.log.unexpected() if p.to in numbers]
        if extra:
            listing = "\n".join(f"  {self.describe(p)}" for p in extra)
            raise AssertionError(f"{len(extra)} page(s) nobody expected:\n{listing}")

    def _expect(self, kind: Kind, who: str, contains: str | None, not_before: int | None) -> Page:
        number = self.people[who]
        wait_s = self.log.real_seconds_until(not_before or 0) + MARGIN_S
        deadline = time.monotonic() + wait_s
        while True:
            page = next(
                (
                    p
                    for p in self.log.pages()
                    if p.kind == kind and p.to == number and p.sid not in self.log.taken
                ),
                None,
            )
            if page is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if page is None:
            sent = "\n".join(f"  {self.describe(p)}" for p in self.log.pages()) or "  (none)"
            raise AssertionError(f"expected {kind} to {who}; pages so far:\n{sent}")
        self.log.taken.add(page.sid)
        if contains is not None and contains not in page.text:
            raise AssertionError(f"the next {kind} to {who} lacks {contains!r}: {page.text}")
        if not_before is not None and page.at < not_before:
            early_s = (not_before - page.at) / 1000
            raise AssertionError(f"{self.describe(page)} came {early_s:.0f} s (virtual) early")
        return page

    # -- what people do ---------------------------------------------------------------

    def reply_sms(self, who: str, body: str) -> str:
        """`who` texts `body` to tocsin's number; returns tocsin's answer. The fake posts
        the signed webhook to the gateway, which must answer 200."""
        answer = self.log.http.post(
            f"{self.log.fake_url}/_fake/reply",
            json={
                "from": self.people[who],
                "to": FROM_NUMBER,
                "body": body,
                "webhook_url": self.sms_webhook_url,
            },
        ).json()
        assert answer["status_code"] == 200, f"SMS webhook answered {answer}"
        root = ElementTree.fromstring(answer["body"]) if answer["body"].strip() else None
        return " ".join(el.text or "" for el in root.iter("Message")) if root is not None else ""

    def press(self, call: Page, digits: str) -> str:
        """The callee presses `digits` in the call's menu; returns what the call says next."""
        actions = [el.attrib["action"] for el in ElementTree.fromstring(call.twiml).iter("Gather")]
        assert actions, f"the call offers no menu: {call.twiml}"
        answer = self.log.http.post(
            f"{self.log.fake_url}/_fake/press",
            json={"call_sid": call.sid, "digits": digits, "action_url": actions[0]},
        ).json()
        assert answer["status_code"] == 200, f"voice webhook answered {answer}"
        return spoken_text(answer["body"])
