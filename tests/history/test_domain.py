"""The archive's pure parts: percentiles, parts of the day, idempotent text merging, query
words that cannot carry query syntax, and pages read from the timeline; plus the store
taking any query text on both databases."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tocsin.history import domain
from tocsin.history.store import ArchiveStore, SearchFilters
from tocsin.v1 import incidents_pb2

LONDON = ZoneInfo("Europe/London")


def test_percentiles_interpolate_between_ranks() -> None:
    assert domain.percentile([], 50) == 0.0
    assert domain.percentile([60], 90) == 60
    assert domain.percentile([180, 60, 360], 50) == 180
    assert domain.percentile([180, 60, 360], 90) == pytest.approx(324)
    assert domain.percentile([1, 2, 3, 4], 50) == 2.5


@pytest.mark.parametrize(
    ("local", "part"),
    [
        (datetime(2026, 11, 27, 9, 0, tzinfo=LONDON), "business"),  # Friday
        (datetime(2026, 11, 27, 17, 59, tzinfo=LONDON), "business"),
        (datetime(2026, 11, 27, 18, 0, tzinfo=LONDON), "evening"),
        (datetime(2026, 11, 27, 8, 30, tzinfo=LONDON), "evening"),
        (datetime(2026, 11, 27, 22, 0, tzinfo=LONDON), "night"),
        (datetime(2026, 11, 28, 7, 59, tzinfo=LONDON), "night"),  # Saturday
        (datetime(2026, 11, 28, 12, 0, tzinfo=LONDON), "evening"),  # weekend day
    ],
)
def test_parts_of_the_day(local: datetime, part: str) -> None:
    assert domain.day_part(local) == part


def test_merging_text_twice_changes_nothing() -> None:
    once = domain.merge_search_text("", ["disk full", "restarted certbot"])
    assert once == "disk full\nrestarted certbot"
    assert domain.merge_search_text(once, ["restarted certbot", "disk full"]) == once
    huge = domain.merge_search_text("", ["x" * 40_000])
    assert len(huge) == domain.SEARCH_TEXT_MAX


def test_query_words_carry_no_syntax() -> None:
    assert domain.search_words('"certbot" OR nginx* NEAR(a b) -x db-1.prod') == [
        "certbot", "or", "nginx", "near", "a", "b", "x", "db-1.prod",
    ]  # fmt: skip
    assert domain.similarity_words("the disk of db 12 is full") == ["disk", "db", "full"]


def test_pages_are_every_user_of_every_escalation_entry() -> None:
    escalated = incidents_pb2.TimelineEntry(
        kind=incidents_pb2.TIMELINE_KIND_ESCALATED,
        attributes={"level": "1", "loop": "0", "epoch": "2", "users": "bob,carol"},
    )
    escalated.at.FromMilliseconds(5_000)
    note = incidents_pb2.TimelineEntry(kind=incidents_pb2.TIMELINE_KIND_NOTE)
    nobody = incidents_pb2.TimelineEntry(
        kind=incidents_pb2.TIMELINE_KIND_ESCALATED, attributes={"level": "0", "users": ""}
    )
    pages = domain.pages_from_timeline([escalated, note, nobody])
    assert pages == [
        domain.PageRow(1, 0, 2, "bob", 5_000),
        domain.PageRow(1, 0, 2, "carol", 5_000),
    ]


@pytest.mark.parametrize(
    "query", ['"', "certbot*", "NEAR(", "a AND OR NOT", "-", "ü ß 中文", "'; DROP TABLE x;--"]
)
async def test_any_query_text_is_searched_without_error(database_url: str, query: str) -> None:
    store = ArchiveStore(database_url)
    await store.migrate()
    try:
        for any_word in (False, True):
            hits = await store.search(
                query, SearchFilters(), newest_first=False, limit=5, any_word=any_word
            )
            assert hits == []
    finally:
        await store.close()
