"""Hand-off moments from final shifts: starts, ends, a day before, no hand-off to oneself,
a long shift's end, an override's edges."""

from __future__ import annotations

from datetime import timedelta

from tests.scheduling.builders import layer, override, schedule, utc
from tocsin.scheduling.handoff import DAY_BEFORE, END, START, next_handoffs, notices_between

MONDAY = utc(2026, 3, 2, 9)
DAYS = schedule("UTC", layer("days", MONDAY, "1d", "alice,bob"))


def test_next_handoff_names_start_and_end_together() -> None:
    at, due = next_handoffs(DAYS, MONDAY + timedelta(hours=1))
    assert at == MONDAY + timedelta(days=1)
    # and alice's next shift (at +2d) is a day away
    assert {(n.user, n.kind) for n in due} == {
        ("alice", END),
        ("bob", START),
        ("alice", DAY_BEFORE),
    }


def test_day_before_comes_a_day_before_the_shift() -> None:
    notices = notices_between(DAYS, MONDAY, MONDAY + timedelta(days=2))
    before = [n for n in notices if n.kind == DAY_BEFORE]
    # bob's shift at +1d is announced at MONDAY itself: outside (MONDAY, ...].
    assert [(n.user, n.at) for n in before] == [
        ("alice", MONDAY + timedelta(days=1)),
        ("bob", MONDAY + timedelta(days=2)),
    ]


def test_keys_are_stable_per_shift_and_kind() -> None:
    first = notices_between(DAYS, MONDAY, MONDAY + timedelta(days=3))
    again = notices_between(DAYS, MONDAY - timedelta(days=1), MONDAY + timedelta(days=3))
    keys = {n.key("sched") for n in first}
    assert keys <= {n.key("sched") for n in again}
    assert len(keys) == len(first)


def test_one_person_has_no_handoff_to_themself_but_a_long_shift_ends() -> None:
    solo = schedule(
        "UTC",
        layer("solo", MONDAY - timedelta(days=100), "1d", "alice"),
        overrides=(override("bob", MONDAY + timedelta(days=3), MONDAY + timedelta(days=4)),),
    )
    at, due = next_handoffs(solo, MONDAY)
    assert at == MONDAY + timedelta(days=2)
    assert [(n.user, n.kind) for n in due] == [("bob", DAY_BEFORE)]
    at, due = next_handoffs(solo, at)
    assert at == MONDAY + timedelta(days=3)
    # alice's 100-day shift ends; she is back when bob's override ends, a day later
    assert {(n.user, n.kind) for n in due} == {
        ("alice", END),
        ("bob", START),
        ("alice", DAY_BEFORE),
    }


def test_nothing_in_sight_waits_for_the_horizon() -> None:
    empty = schedule("UTC", layer("later", MONDAY + timedelta(days=90), "1d", "alice"))
    at, due = next_handoffs(empty, MONDAY, horizon=timedelta(days=10))
    assert (at, due) == (MONDAY + timedelta(days=10), [])
