"""The escalation state machine, as properties: every level of every loop fires exactly
once, in order, each after the previous level's delay; a stop ends everything; nothing
fires before it is due; a restart begins a new epoch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tocsin.escalation.domain import (
    MIN_DELAY_MS,
    Escalation,
    Exhausted,
    Level,
    LevelFired,
    LevelKey,
    Page,
    Policy,
    Status,
    Target,
    fire,
    idempotency_key,
    is_due,
    pages_out,
    record_pages,
    restart,
    start,
    stop,
    validate_policy,
)

T0 = 1_800_000_000_000

levels = st.lists(
    st.builds(
        Level,
        targets=st.tuples(st.builds(Target, kind=st.just("user"), id=st.sampled_from("abc"))),
        delay_ms=st.integers(MIN_DELAY_MS, 30 * MIN_DELAY_MS),
    ),
    min_size=1,
    max_size=4,
)
policies = st.builds(
    Policy, id=st.just("p"), name=st.just("P"), levels=levels.map(tuple), repeat=st.integers(0, 3)
)


def paged(escalation: Escalation, work: object, now: int) -> Escalation:
    """Record a page per target of a fired level (as the engine does)."""
    if not isinstance(work, LevelFired):
        return escalation
    pages = tuple(
        Page(work.level, work.loop, t.id, "", now, escalation.epoch)
        for t in dict.fromkeys(work.targets)
    )
    return record_pages(escalation, pages)


def all_out(escalation: Escalation, work: object, at: int) -> Escalation:
    """Every page of the fired level reported out at `at` (they went out at once)."""
    if not isinstance(work, LevelFired):
        return escalation
    key = LevelKey("7", escalation.epoch, work.level, work.loop, "")
    released = pages_out(escalation, key, {t.id: at for t in work.targets}, at)
    assert released is not None
    return released


def run_to_end(escalation: Escalation, lateness_ms: int = 0) -> list[tuple[int, object]]:
    """Fire whenever due (optionally late), each level's pages out at once; return (fire
    time, work) in order."""
    fired: list[tuple[int, object]] = []
    while escalation.status is Status.ACTIVE:
        assert escalation.next_fire_ms is not None
        now = escalation.next_fire_ms + lateness_ms
        assert not is_due(escalation, escalation.next_fire_ms - 1)
        before = escalation.version
        escalation, work = fire(escalation, now)
        assert escalation.version == before + 1
        escalation = all_out(paged(escalation, work, now), work, now)
        fired.append((now, work))
    return fired


@given(policies, st.integers(0, 5_000))
def test_every_level_of_every_loop_fires_once_in_order_then_exhausts(
    policy: Policy, lateness_ms: int
) -> None:
    fired = run_to_end(start("7", policy, T0), lateness_ms)
    level_fires = [w for _, w in fired if isinstance(w, LevelFired)]
    expected = [
        (lvl, loop) for loop in range(policy.repeat + 1) for lvl in range(len(policy.levels))
    ]
    assert [(w.level, w.loop) for w in level_fires] == expected
    assert isinstance(fired[-1][1], Exhausted)
    assert sum(isinstance(w, Exhausted) for _, w in fired) == 1
    # each hop comes exactly the previous level's delay after the previous page went out
    times = [t for t, _ in fired]
    delays = [policy.levels[w.level].delay_ms for w in level_fires]
    assert times[0] == T0 + lateness_ms
    for i in range(1, len(times)):
        assert times[i] - times[i - 1] == delays[i - 1] + lateness_ms


@given(policies, st.integers(0, 20))
def test_a_stop_at_any_point_ends_all_paging(policy: Policy, fires_before_stop: int) -> None:
    escalation = start("7", policy, T0)
    for _ in range(fires_before_stop):
        if escalation.status is not Status.ACTIVE:
            break
        assert escalation.next_fire_ms is not None
        escalation, _ = fire(escalation, escalation.next_fire_ms)
    stopped = stop(escalation)
    if escalation.status is not Status.ACTIVE:
        assert stopped is None
        return
    assert stopped is not None
    assert stopped.status is Status.STOPPED and stopped.next_fire_ms is None
    assert not is_due(stopped, T0 + 10**12)
    with pytest.raises(ValueError):
        fire(stopped, T0 + 10**12)
    assert stop(stopped) is None


def test_firing_before_due_is_refused_but_manual_escalation_fires_now() -> None:
    policy = Policy(
        "p", "P", (Level((Target("user", "a"),), 300_000), Level((Target("user", "b"),), 600_000))
    )
    escalation, work = fire(start("9", policy, T0), T0)
    assert isinstance(work, LevelFired) and work.level == 0
    with pytest.raises(ValueError, match="not due"):
        fire(escalation, T0 + 299_999)
    escalated, work = fire(escalation, T0 + 1_000, manual=True)
    assert isinstance(work, LevelFired) and work.level == 1
    assert escalated.next_fire_ms == T0 + 1_000 + 600_000


def test_restart_is_a_new_epoch_with_level_zero_due_now() -> None:
    policy = Policy("p", "P", (Level((Target("schedule", "primary"),), 300_000),), repeat=1)
    first, _ = fire(start("9", policy, T0), T0)
    stopped = stop(first)
    assert stopped is not None
    again = restart(stopped, policy, T0 + 3_600_000)
    assert again.epoch == 1 and again.status is Status.ACTIVE
    assert again.next_level == 0 and again.loop == 0 and again.next_fire_ms == T0 + 3_600_000
    assert again.version > stopped.version
    assert idempotency_key("9", again.epoch, 0, 0, "alice") != idempotency_key(
        "9", first.epoch, 0, 0, "alice"
    )


def test_policy_validation_names_fields() -> None:
    bad = Policy("Bad Id", "x", (Level((), 1_000), Level((Target("user", ""),), 60_000)), repeat=12)
    fields = {v.field for v in validate_policy(bad)}
    assert fields == {
        "id",
        "repeat",
        "levels[0].delay",
        "levels[0].targets",
        "levels[1].targets[0].user_id",
    }
    assert validate_policy(Policy("ok", "x", (Level((Target("user", "a"),), 60_000),))) == []
