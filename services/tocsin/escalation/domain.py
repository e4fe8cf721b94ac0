"""The escalation state machine: pure functions from (state, now) to (state, work).

An escalation is a snapshot of the policy taken when it started, plus a cursor: which
level fires next, in which loop, and when. Every transition returns a new state with a
higher `version`; the store writes it only if the stored version is still the one the
transition started from (compare-and-set), together with the next timer and the outgoing
pages, so a duplicate or stale timer changes nothing and pages nobody.

`epoch` counts restarts (a snooze that ended, a reassignment): it is part of every page's
idempotency key, so a restarted escalation pages level 0 again instead of being mistaken
for a repeat of the first run.

Levels go out in order. A fired level is `awaiting` until notification reports that the
first page to each user it paged went out (or failed): `pages_out`. What comes next (the
next level, a repeat's first level, the exhaustion) fires only after that, and its delay
counts from then: at max(due, out + delay), where due = fired + delay and out is when the
level's last page went out. A timer that comes while the level is still awaiting holds
it (`fire` returns `Held`, the timer is re-armed for `hold_until_ms`); the report re-arms
it for out + delay. Should no report ever come (lost to a crash, a notification too old
to send one), the next level goes ahead `LEVEL_HOLD_MAX_MS` after its due time, flagged
`unconfirmed`: a lost report delays a level, it never stalls the escalation. A manual
Escalate fires at once: a person asked for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from tocsin.runtime import channeltargets
from tocsin.runtime.errors import FieldViolation
from tocsin.runtime.ids import id_violations

MIN_DELAY_MS = 60_000
MAX_REPEAT = 9
MAX_LEVELS = 20
MAX_TARGETS = 20
LEVEL_HOLD_MAX_MS = 5 * 60_000
"""How long past its due time the next level waits for the previous level's pages to be
reported out before it goes ahead anyway (the bound on a lost report)."""


class Status(StrEnum):
    ACTIVE = "active"
    STOPPED = "stopped"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Target:
    kind: Literal["user", "schedule", "slack_channel", "teams_channel"]
    id: str
    """A user or schedule id; a Slack channel id or Teams webhook URL for a channel."""


@dataclass(frozen=True)
class Level:
    targets: tuple[Target, ...]
    delay_ms: int
    round_robin: bool = False
    """Page one target per incident, in turn (see `round_robin_order`), not all of them."""


@dataclass(frozen=True)
class Policy:
    id: str
    name: str
    levels: tuple[Level, ...]
    repeat: int = 0
    version: int = 0


@dataclass(frozen=True)
class Page:
    """One user paged by one level."""

    level: int
    loop: int
    user_id: str
    schedule_id: str
    at_ms: int
    epoch: int = 0


@dataclass(frozen=True)
class LevelKey:
    """One firing of one level: what a page's idempotency key names."""

    incident_id: str
    epoch: int
    level: int
    loop: int
    user_id: str


@dataclass(frozen=True)
class Awaiting:
    """The level that fired last, whose pages have not all been reported out yet."""

    level: int
    loop: int
    fired_ms: int
    delay_ms: int

    @property
    def due_ms(self) -> int:
        """When the next level is due by the policy alone."""
        return self.fired_ms + self.delay_ms

    def hold_until_ms(self, hold_max_ms: int) -> int:
        """When the next level goes ahead without the report."""
        return self.due_ms + hold_max_ms


@dataclass(frozen=True)
class Escalation:
    incident_id: str
    policy: Policy
    status: Status
    next_level: int
    """The level that fires next; `len(policy.levels)` means "exhaustion is next"."""
    loop: int
    next_fire_ms: int | None
    version: int
    epoch: int
    started_ms: int
    pages: tuple[Page, ...] = ()
    awaiting: Awaiting | None = None
    """The last fired level while its pages are not all out; None once they are (or it
    paged nobody)."""
    low_urgency: bool = False
    """The incident is low urgency: its pages run the users' low-urgency rules."""
    service_id: str = ""
    """The incident's service, named in each Notify so the sender queues its pages per
    service ("" in states written before it was kept)."""

    @property
    def last_fired_level(self) -> int:
        """The level that fired last, -1 before the first (as the API reports it)."""
        if not self.pages:
            return -1
        return self.pages[-1].level


@dataclass(frozen=True)
class LevelFired:
    """What firing a level must do outside the state: who to page and what to record."""

    level: int
    loop: int
    targets: tuple[Target, ...]
    unconfirmed: Awaiting | None = None
    """The previous level, when its pages were never reported out and this one went
    ahead after LEVEL_HOLD_MAX_MS (worth a timeline warning)."""


@dataclass(frozen=True)
class Exhausted:
    """Every level of every loop fired and nobody acknowledged."""

    loops: int
    unconfirmed: Awaiting | None = None


@dataclass(frozen=True)
class Held:
    """What is next was due but waits for `level`'s pages to go out; the timer is
    re-armed for `until_ms` (the bound), or earlier by the report."""

    level: int
    loop: int
    until_ms: int


Work = LevelFired | Exhausted | Held


def start(
    incident_id: str,
    policy: Policy,
    now_ms: int,
    epoch: int = 0,
    *,
    low_urgency: bool = False,
    first_fire_ms: int | None = None,
    service_id: str = "",
) -> Escalation:
    """A new escalation whose level 0 is due now, or at `first_fire_ms` when that is later
    (a low-urgency incident waiting for its service's support hours)."""
    return Escalation(
        incident_id=incident_id,
        policy=policy,
        status=Status.ACTIVE,
        next_level=0,
        loop=0,
        next_fire_ms=max(now_ms, first_fire_ms or now_ms),
        version=1,
        epoch=epoch,
        started_ms=now_ms,
        low_urgency=low_urgency,
        service_id=service_id,
    )


def restart(
    current: Escalation,
    policy: Policy,
    now_ms: int,
    *,
    low_urgency: bool | None = None,
    service_id: str | None = None,
) -> Escalation:
    """Start over (snooze or acknowledgement timed out, reassigned) with a fresh policy
    snapshot and a new epoch; level 0 is due now."""
    low = current.low_urgency if low_urgency is None else low_urgency
    service = current.service_id if service_id is None else service_id
    fresh = start(
        current.incident_id,
        policy,
        now_ms,
        epoch=current.epoch + 1,
        low_urgency=low,
        service_id=service,
    )
    return replace(fresh, version=current.version + 1, pages=current.pages)


def stop(current: Escalation) -> Escalation | None:
    """Stop paging; None when already stopped (nothing to write)."""
    if current.status is not Status.ACTIVE:
        return None
    return replace(
        current,
        status=Status.STOPPED,
        next_fire_ms=None,
        version=current.version + 1,
        awaiting=None,
    )


def is_due(current: Escalation, now_ms: int) -> bool:
    return (
        current.status is Status.ACTIVE
        and current.next_fire_ms is not None
        and current.next_fire_ms <= now_ms
    )


def fire(
    current: Escalation,
    now_ms: int,
    *,
    manual: bool = False,
    hold_max_ms: int = LEVEL_HOLD_MAX_MS,
) -> tuple[Escalation, Work]:
    """Fire what is next: a level (and arm the one after it) or the exhaustion; or, while
    the previous level's pages are not out and the hold has not run out, hold it (`Held`).

    `manual` fires the next level now even if it is not due yet (the Escalate call), and
    does not wait for the previous level's pages. A fired level is `awaiting` until
    `pages_out` (or `record_pages` with no page) clears it.
    Raises ValueError when the escalation is not active or not due.
    """
    if current.status is not Status.ACTIVE:
        raise ValueError(f"escalation of incident {current.incident_id} is {current.status}")
    if not manual and not is_due(current, now_ms):
        raise ValueError(f"escalation of incident {current.incident_id} is not due")
    previous = current.awaiting
    unconfirmed = None
    if previous is not None and not manual:
        until = previous.hold_until_ms(hold_max_ms)
        if now_ms < until:
            held = replace(current, next_fire_ms=until, version=current.version + 1)
            return held, Held(previous.level, previous.loop, until)
        unconfirmed = previous
    levels = current.policy.levels
    if current.next_level >= len(levels):
        if manual and current.loop < current.policy.repeat:
            return fire(replace(current, next_level=0, loop=current.loop + 1), now_ms, manual=True)
        exhausted = replace(
            current,
            status=Status.EXHAUSTED,
            next_fire_ms=None,
            version=current.version + 1,
            awaiting=None,
        )
        return exhausted, Exhausted(loops=current.loop + 1, unconfirmed=unconfirmed)
    level = levels[current.next_level]
    next_fire = now_ms + level.delay_ms
    cursor = _cursor_after(current.policy, current.next_level, current.loop)
    advanced = replace(
        current,
        next_level=cursor[0],
        loop=cursor[1],
        next_fire_ms=next_fire,
        version=current.version + 1,
        awaiting=Awaiting(current.next_level, current.loop, now_ms, level.delay_ms),
    )
    return advanced, LevelFired(current.next_level, current.loop, level.targets, unconfirmed)


def _cursor_after(policy: Policy, level: int, loop: int) -> tuple[int, int]:
    """(next_level, loop) once `level` of `loop` has fired."""
    if level + 1 < len(policy.levels):
        return level + 1, loop
    if loop < policy.repeat:
        return 0, loop + 1
    return len(policy.levels), loop


def is_current_level(current: Escalation, key: LevelKey, now_ms: int) -> bool:
    """Whether `key`'s level is the one that fired last and the next is not due yet:
    only then may that level's being unanswered move the escalation on."""
    return (
        current.status is Status.ACTIVE
        and current.epoch == key.epoch
        and (current.next_level, current.loop) == _cursor_after(current.policy, key.level, key.loop)
        and current.next_fire_ms is not None
        and current.next_fire_ms > now_ms
    )


def level_users(current: Escalation, key: LevelKey) -> frozenset[str]:
    """Everyone `key`'s level paged."""
    return frozenset(
        p.user_id
        for p in current.pages
        if (p.epoch, p.level, p.loop) == (key.epoch, key.level, key.loop)
    )


def skip_unanswered(
    current: Escalation, key: LevelKey, reported: frozenset[str], now_ms: int
) -> Escalation | None:
    """The state with the next level due now, when every user `key`'s level paged is in
    `reported` (cannot be reached) and that level is still current; else None (nothing to
    write: a stale or repeated report, or someone may still answer)."""
    if not is_current_level(current, key, now_ms):
        return None
    users = level_users(current, key)
    if not users or not users <= reported:
        return None
    return replace(current, next_fire_ms=now_ms, version=current.version + 1, awaiting=None)


def pages_out(
    current: Escalation, key: LevelKey, reported: Mapping[str, int], now_ms: int
) -> Escalation | None:
    """The state once every user `key`'s level paged is in `reported` (user -> when the
    first page to them went out or failed): no longer awaiting, the next level due at
    max(due, out + delay), out being the latest of those times (kept within the level's
    firing and now). None when there is nothing to write: a stale or repeated report,
    another level or epoch, or a user not reported yet."""
    awaiting = current.awaiting
    if (
        current.status is not Status.ACTIVE
        or awaiting is None
        or current.epoch != key.epoch
        or (awaiting.level, awaiting.loop) != (key.level, key.loop)
        or current.next_fire_ms is None
    ):
        return None
    users = level_users(current, key)
    if not users or not users <= reported.keys():
        return None
    out_ms = min(max(max(reported[u] for u in users), awaiting.fired_ms), now_ms)
    next_fire = max(awaiting.due_ms, out_ms + awaiting.delay_ms)
    return replace(current, next_fire_ms=next_fire, version=current.version + 1, awaiting=None)


def record_pages(current: Escalation, pages: tuple[Page, ...]) -> Escalation:
    """The state with the pages a fired level sent appended (same version: one write). A
    level that paged nobody has nothing to wait for."""
    return replace(
        current,
        pages=current.pages + pages,
        awaiting=current.awaiting if pages else None,
    )


def round_robin_order(targets: tuple[Target, ...], turn: int, loop: int) -> tuple[Target, ...]:
    """The targets of a round-robin level in the order this firing tries them: the one
    whose turn it is first (`turn`, the incident's draw from the level's counter, moved on
    by `loop` so a repeat of the policy pages the next one), then the others in turn. The
    engine pages the first that resolves to somebody (a schedule with nobody on call is
    passed over)."""
    if not targets:
        return targets
    start = (turn + loop) % len(targets)
    return targets[start:] + targets[:start]


def idempotency_key(incident_id: str, epoch: int, level: int, loop: int, user_id: str) -> str:
    """The key notification deduplicates a page by: one page per user, level, loop, epoch."""
    return f"{incident_id}/{epoch}/{level}/{loop}/{user_id}"


def parse_idempotency_key(key: str) -> LevelKey | None:
    """The level a page's idempotency key names; None if it is not one of ours."""
    parts = key.split("/")
    if len(parts) != 5 or not all(p.isdigit() for p in parts[1:4]) or not parts[4]:
        return None
    return LevelKey(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), parts[4])


def validate_policy(policy: Policy) -> list[FieldViolation]:
    """Everything wrong with a policy, named by `tocsin.v1.EscalationPolicy` field paths.

    Whether named users and schedules exist is the store's question (it asks scheduling).
    """
    violations: list[FieldViolation] = []
    violations += id_violations(policy.id, "id")
    if not policy.levels:
        violations.append(FieldViolation("levels", "a policy needs at least one level"))
    if len(policy.levels) > MAX_LEVELS:
        violations.append(FieldViolation("levels", f"at most {MAX_LEVELS} levels"))
    if not 0 <= policy.repeat <= MAX_REPEAT:
        violations.append(FieldViolation("repeat", f"must be between 0 and {MAX_REPEAT}"))
    for i, level in enumerate(policy.levels):
        if level.delay_ms < MIN_DELAY_MS:
            violations.append(FieldViolation(f"levels[{i}].delay", "must be at least 1 minute"))
        if not level.targets:
            violations.append(FieldViolation(f"levels[{i}].targets", "a level needs a target"))
        if len(level.targets) > MAX_TARGETS:
            violations.append(
                FieldViolation(f"levels[{i}].targets", f"at most {MAX_TARGETS} targets")
            )
        for j, target in enumerate(level.targets):
            if target.kind in channeltargets.KINDS:
                field = f"levels[{i}].targets[{j}].{target.kind}"
                violations += channeltargets.violations(target.kind, target.id, field)
                continue
            field = f"levels[{i}].targets[{j}].{target.kind}_id"
            if not target.id:
                violations.append(FieldViolation(field, "must not be empty"))
    return violations
