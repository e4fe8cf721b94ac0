"""Levels in order (issue 19), as a property of the pure escalation state machine: over
any interleaving of level timers (on time, late, stale), reports that a user's first page
went out (in any order, repeated, for stale levels and epochs), reports that a user cannot
be reached, acknowledgements and restarts, a level (or the exhaustion) fires only after
every page of the level before it went out or failed, at max(due, last out + delay), or
else, flagged `unconfirmed`, once the hold ran out LEVEL_HOLD_MAX_MS after its due time;
every level of an epoch fires at most once, and nothing fires after an acknowledgement.

On the old state machine every level fired at its due time whatever its predecessor's
pages were doing, so the first assertion fails as soon as a report comes late."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tocsin.escalation.domain import (
    LEVEL_HOLD_MAX_MS,
    MIN_DELAY_MS,
    Escalation,
    Exhausted,
    Held,
    Level,
    LevelFired,
    LevelKey,
    Page,
    Policy,
    Status,
    Target,
    fire,
    is_due,
    pages_out,
    record_pages,
    restart,
    skip_unanswered,
    start,
    stop,
)

T0 = 1_800_000_000_000
INCIDENT = "7"

levels = st.lists(
    st.builds(
        Level,
        targets=st.lists(
            st.builds(Target, kind=st.just("user"), id=st.sampled_from("abcd")),
            min_size=1,
            max_size=3,
        ).map(tuple),
        delay_ms=st.integers(MIN_DELAY_MS, 10 * MIN_DELAY_MS),
    ),
    min_size=1,
    max_size=4,
)
policies = st.builds(
    Policy, id=st.just("p"), name=st.just("P"), levels=levels.map(tuple), repeat=st.integers(0, 2)
)

ACTIONS = (
    *("wait", "wait", "timer", "timer", "stale timer"),
    *("out", "out", "out", "unreachable", "ack", "restart"),
)
"""What happens next (repeated ones happen more often)."""

Firing = tuple[int, int, int]
"""(epoch, level, loop)"""


@dataclass
class FiredLevel:
    users: frozenset[str]
    fired_ms: int
    delay_ms: int
    out: dict[str, int] = field(default_factory=dict)
    """user -> when their first page went out, as recorded (the first report wins)."""
    out_reported_ms: dict[str, int] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    unreachable_reported_ms: dict[str, int] = field(default_factory=dict)
    skipped: bool = False
    """Every user was reported unreachable: the next level became due at once."""

    def went_out_by(self, now: int) -> bool:
        """Every user's page went out or failed (either report) by `now`."""
        return all(
            self.out_reported_ms.get(u, now + 1) <= now
            or self.unreachable_reported_ms.get(u, now + 1) <= now
            for u in self.users
        )


@dataclass
class Model:
    state: Escalation
    now: int = T0
    fired: dict[Firing, FiredLevel] = field(default_factory=dict)
    last: Firing | None = None
    """The level fired last in the current epoch."""
    stopped: bool = False


def fire_due(model: Model) -> None:
    """A level timer at `now`: the state machine fires, holds or refuses (not due)."""
    state, now = model.state, model.now
    if not is_due(state, now):
        try:
            fire(state, now)
        except ValueError:
            return
        raise AssertionError("fired while not due (or stopped)")
    advanced, work = fire(state, now)
    assert advanced.version == state.version + 1
    if isinstance(work, Held):
        previous = model.fired[(state.epoch, work.level, work.loop)]
        assert model.last == (state.epoch, work.level, work.loop)
        assert not previous.went_out_by(now) or not previous.users
        assert work.until_ms == previous.fired_ms + previous.delay_ms + LEVEL_HOLD_MAX_MS
        assert advanced.next_fire_ms == work.until_ms > now
        model.state = advanced
        return
    check_in_order(model, work)
    if isinstance(work, Exhausted):
        assert advanced.status is Status.EXHAUSTED and advanced.next_fire_ms is None
        model.state = advanced
        return
    firing = (state.epoch, work.level, work.loop)
    assert firing not in model.fired, f"level fired twice: {firing}"
    users = frozenset(t.id for t in work.targets)
    pages = tuple(Page(work.level, work.loop, u, "", now, state.epoch) for u in sorted(users))
    model.state = record_pages(advanced, pages)
    model.fired[firing] = FiredLevel(users, now, state.policy.levels[work.level].delay_ms)
    model.last = firing


def check_in_order(model: Model, work: LevelFired | Exhausted) -> None:
    """What fires now comes after the previous level's pages went out, its delay after."""
    if model.last is None:
        assert isinstance(work, LevelFired) and (work.level, work.loop) == (0, 0)
        return
    previous = model.fired[model.last]
    due = previous.fired_ms + previous.delay_ms
    now = model.now
    if previous.skipped:
        assert previous.went_out_by(now)
        return  # nobody could be reached: it went on at once
    assert now >= due
    if work.unconfirmed is not None:
        # no report came: it went ahead only once the hold ran out
        assert (work.unconfirmed.level, work.unconfirmed.loop) == model.last[1:]
        assert now >= due + LEVEL_HOLD_MAX_MS
        assert not previous.went_out_by(now)
        return
    assert previous.went_out_by(now), "the next level fired before the previous went out"
    last_out = max(previous.out[u] for u in previous.users)
    assert now >= max(due, last_out + previous.delay_ms)


def report_out(model: Model, firing: Firing, user: str, out_ms: int) -> None:
    level = model.fired[firing]
    level.out.setdefault(user, out_ms)  # the store's HSETNX: the first report wins
    level.out_reported_ms.setdefault(user, model.now)
    key = LevelKey(INCIDENT, *firing, user)
    before = model.state
    released = pages_out(before, key, level.out, model.now)
    if released is None:
        return
    awaiting = before.awaiting
    assert awaiting is not None and (before.epoch, awaiting.level, awaiting.loop) == firing
    assert firing == model.last and level.went_out_by(model.now)
    last_out = max(level.out[u] for u in level.users)
    assert released.next_fire_ms == max(awaiting.due_ms, last_out + awaiting.delay_ms)
    assert released.awaiting is None and released.version == before.version + 1
    model.state = released


def report_unreachable(model: Model, firing: Firing, user: str) -> None:
    """As the engine does: the user's page is out (failed) now, then unreachable."""
    report_out(model, firing, user, model.now)
    level = model.fired[firing]
    level.unreachable.add(user)
    level.unreachable_reported_ms.setdefault(user, model.now)
    key = LevelKey(INCIDENT, *firing, user)
    skipped = skip_unanswered(model.state, key, frozenset(level.unreachable), model.now)
    if skipped is not None:
        assert firing == model.last and skipped.next_fire_ms == model.now
        assert level.unreachable >= level.users
        model.state = skipped
        level.skipped = True


@settings(max_examples=200, deadline=None)
@given(policies, st.data())
def test_a_level_never_pages_before_the_previous_levels_pages_went_out(
    policy: Policy, data: st.DataObject
) -> None:
    model = Model(start(INCIDENT, policy, T0))
    fire_due(model)  # level 0 fires at once (engine.begin)
    for _ in range(data.draw(st.integers(5, 60), label="steps")):
        action = data.draw(
            st.sampled_from(ACTIONS),
            label="action",
        )
        if action == "wait":
            model.now += data.draw(st.integers(0, 12 * MIN_DELAY_MS), label="wait ms")
        elif action == "timer":
            # the timer comes at its time (or late: a backlog in escalation itself)
            if model.state.next_fire_ms is not None:
                late = data.draw(st.integers(0, 5_000), label="late ms")
                model.now = max(model.now, model.state.next_fire_ms + late)
            fire_due(model)
        elif action == "stale timer":
            fire_due(model)  # whenever: not due means refused, nothing changes
        elif action in ("out", "unreachable") and model.fired:
            firing = data.draw(st.sampled_from(sorted(model.fired)), label="level")
            user = data.draw(st.sampled_from(sorted(model.fired[firing].users)), label="user")
            if action == "out":
                fired_ms = model.fired[firing].fired_ms
                out_ms = data.draw(st.integers(fired_ms, model.now), label="out at")
                report_out(model, firing, user, out_ms)
            else:
                report_unreachable(model, firing, user)
        elif action == "ack":
            stopped = stop(model.state)
            if stopped is not None:
                model.state = stopped
            model.stopped = True
            assert model.state.status is not Status.ACTIVE
            assert not is_due(model.state, model.now + 10**12)
        elif action == "restart" and model.stopped:
            model.state = restart(model.state, policy, model.now)
            model.stopped, model.last = False, None
            fire_due(model)
        if model.stopped:
            assert model.state.next_fire_ms is None


def test_the_next_level_counts_its_delay_from_the_last_page_out() -> None:
    """A worked example: level 1 fires at T0 and pages a and b; b's SMS waits in a backlog
    for 3 minutes; level 2 (due at T0 + 5 min) fires at T0 + 8 min."""
    policy = Policy(
        "p",
        "P",
        (
            Level((Target("user", "a"), Target("user", "b")), 5 * MIN_DELAY_MS),
            Level((Target("user", "c"),), 5 * MIN_DELAY_MS),
        ),
    )
    model = Model(start(INCIDENT, policy, T0))
    fire_due(model)
    model.now = T0 + 10_000
    report_out(model, (0, 0, 0), "a", T0 + 10_000)
    assert model.state.awaiting is not None  # b is not out yet
    model.now = T0 + 5 * MIN_DELAY_MS
    fire_due(model)  # due, but held
    assert model.state.next_fire_ms == T0 + 10 * MIN_DELAY_MS
    assert model.last == (0, 0, 0)
    model.now = T0 + 3 * MIN_DELAY_MS + 5 * MIN_DELAY_MS // 5  # b's report, a little late
    report_out(model, (0, 0, 0), "b", T0 + 3 * MIN_DELAY_MS)
    assert model.state.next_fire_ms == T0 + 8 * MIN_DELAY_MS
    model.now = T0 + 8 * MIN_DELAY_MS
    fire_due(model)
    assert model.last == (0, 1, 0)


def test_without_a_report_the_next_level_goes_ahead_once_the_hold_runs_out() -> None:
    policy = Policy(
        "p",
        "P",
        (Level((Target("user", "a"),), 5 * MIN_DELAY_MS), Level((Target("user", "c"),), 60_000)),
    )
    escalation, _ = fire(start(INCIDENT, policy, T0), T0)
    escalation = record_pages(escalation, (Page(0, 0, "a", "", T0),))
    due = T0 + 5 * MIN_DELAY_MS
    held, work = fire(escalation, due)
    assert isinstance(work, Held) and work.until_ms == due + LEVEL_HOLD_MAX_MS
    _, work = fire(held, due + LEVEL_HOLD_MAX_MS)
    assert isinstance(work, LevelFired) and work.level == 1
    assert work.unconfirmed is not None and work.unconfirmed.level == 0
    # a person's Escalate does not wait
    _, work = fire(escalation, T0 + 1_000, manual=True)
    assert isinstance(work, LevelFired) and work.level == 1 and work.unconfirmed is None
