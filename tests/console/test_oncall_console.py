"""The console's On call and Schedules pages in a real browser against the real stack.

The stack starts at 2027-03-14 13:30 UTC: daylight saving time began in New York that
night, so the daily 09:00 handoff of `dst-handoff` (made by the `dst_schedule` fixture) was
at 13:00 UTC, an hour earlier than the day before; counting 24 hours from the last handoff
would still name the person before. An override created in the browser shows in
`tocsin oncall`, and deleting it there takes it away again.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import PHONE, ConsoleStack
from tocsin.v1 import scheduling_pb2

pytestmark = pytest.mark.slow

STACK_START = datetime(2027, 3, 14, 13, 30, tzinfo=UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS = "TOCSIN_SCREENSHOTS"


@pytest.fixture(scope="module", autouse=True)
def dst_schedule(console: ConsoleStack) -> None:
    """A daily 09:00 New York handoff between rosa and quinn that crosses 2027-03-14."""
    layer = scheduling_pb2.Layer(
        name="daily", start="2027-03-08T09:00", rotation_length="1d", user_ids=["rosa", "quinn"]
    )
    schedule = scheduling_pb2.Schedule(
        id="dst-handoff", name="DST handoff", time_zone="America/New_York", layers=[layer]
    )
    console.paging.client.scheduling.CreateSchedule(
        scheduling_pb2.CreateScheduleRequest(schedule=schedule), timeout=10
    )


def oncall_at(console: ConsoleStack, at: str) -> dict[str, Any]:
    out = console.paging.stack.cli("oncall", "dst-handoff", "--at", at, "--json")
    return dict(json.loads(out))


def test_the_on_call_page_names_the_right_person_across_a_dst_change(
    console: ConsoleStack, page: Any
) -> None:
    console.sign_in(page, "rosa")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="On call").click()
    row = page.locator("tr[data-schedule='dst-handoff']")
    # 09:30 in New York on the day clocks went forward: rosa's day began at 13:00 UTC.
    expect(row.locator("[data-now]")).to_contain_text("Rosa Reyes")
    expect(row.locator("[data-next]")).to_contain_text("Quinn Quiet")
    until = row.locator("td[data-label='Until'] time")
    expect(until).to_have_attribute("datetime", "2027-03-15T13:00:00Z")
    # Policies name who their levels page now.
    expect(page.locator("article[data-policy='payments']")).to_contain_text("Level 2")

    # The schedule page draws that day, in rosa's zone, as the 23 hours it had.
    row.get_by_role("link", name="DST handoff").click()
    expect(page.locator("[data-zone]")).to_have_text("America/New_York")
    day = page.locator("figure[data-day='2027-03-14']")
    expect(day).to_have_attribute("data-hours", "23")
    expect(day.locator("figcaption")).to_contain_text("23 hours (clocks change)")
    expect(page.locator("figure[data-day='2027-03-15']")).to_have_attribute("data-hours", "24")
    expect(page.locator("[data-now]")).to_have_text("Rosa Reyes")
    expect(page.get_by_role("link", name="Calendar feed (iCal)")).to_have_attribute(
        "href", f"{console.url}/ical/schedules/dst-handoff.ics"
    )


def test_an_override_made_in_the_browser_shows_in_tocsin_oncall(
    console: ConsoleStack, page: Any
) -> None:
    assert oncall_at(console, "2027-03-14T18:30:00Z")["user"] == "rosa"
    console.sign_in(page, "adam")
    page.goto(f"{console.url}/schedules/dst-handoff?tz=America/New_York")
    form = page.locator("form.override")
    form.get_by_role("combobox", name="Who").select_option("quinn")
    form.get_by_role("textbox", name="From", exact=True).fill("2027-03-14T14:00")  # 18-20 UTC
    form.get_by_role("textbox", name="To", exact=True).fill("2027-03-14T16:00")
    form.get_by_role("button", name="Add override").click()
    expect(page.get_by_role("status")).to_contain_text("Override added")

    shown = oncall_at(console, "2027-03-14T18:30:00Z")
    assert (shown["user"], shown["source"]) == ("quinn", "override")
    assert oncall_at(console, "2027-03-14T20:30:00Z")["user"] == "rosa"
    # Drawn: the override's own row, dashed, and the final row names quinn that day.
    day = page.locator("figure[data-day='2027-03-14']")
    expect(day.locator(".piece.override").first).to_be_visible()

    page.locator("ul.overrides").get_by_role("button", name="Delete").first.click()
    expect(page.get_by_role("status")).to_contain_text("Override deleted")
    assert oncall_at(console, "2027-03-14T18:30:00Z")["user"] == "rosa"


def test_the_pages_fit_a_phone_and_screenshots(
    console: ConsoleStack, browser: Any, tmp_path: Path
) -> None:
    """Neither page scrolls sideways at 390 px; the README's screenshots come from here."""
    folder = DOCS if os.environ.get(SCREENSHOTS) else tmp_path
    for name, viewport in (("desktop", {"width": 1200, "height": 800}), ("phone", PHONE)):
        context = browser.new_context(
            viewport=viewport, device_scale_factor=1, timezone_id="America/New_York"
        )
        page = context.new_page()
        try:
            console.sign_in(page, "rosa")
            for path, shot in (("/oncall", "oncall"), ("/schedules/primary", "schedule")):
                page.goto(f"{console.url}{path}")
                expect(page.locator("h1")).to_be_visible()
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
                page.screenshot(path=str(folder / f"console-{shot}-{name}.png"), full_page=True)
        finally:
            context.close()


def test_shift_row_labels_are_whole_on_a_phone(console: ConsoleStack, phone: Any) -> None:
    """At 390 px the schedule's row labels wrap instead of being cut off: each one's full
    text fits its box (nothing scrolls or overflows inside it), and is its title too."""
    console.sign_in(phone, "rosa")
    phone.goto(f"{console.url}/schedules/primary")
    labels = phone.locator(".shift-timeline .trow:not(.scale) .rlabel")
    expect(labels.first).to_be_visible()
    found = labels.evaluate_all(
        """els => els.map(e => ({
            text: e.textContent,
            title: e.getAttribute('title'),
            fits: e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight,
            width: e.getBoundingClientRect().width,
        }))"""
    )
    texts = {f["text"] for f in found}
    assert {"layer follow-the-week", "layer weekday-days", "overrides", "on call"} <= texts
    for label in found:
        assert label["fits"], label
        assert label["title"] == label["text"]
        assert 0 < label["width"] < PHONE["width"] / 3  # the bars keep most of the row
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
