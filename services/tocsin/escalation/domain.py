"""The escalation state machine: pure functions from (state, now) to (state, work).

An escalation is a snapshot of the policy taken when it started, plus a cursor: which
level fires next, in which loop, and when. Every transition returns a new state with a
higher `version`; the store writes it only if the stored version is still the one the
transition started from (compare-and-set), together with the next timer and the outgoing
pages, so a duplicate or stale timer changes nothing and pages nobody.

`epoch` counts restarts (a snooze that ended, a reassignment): it is part of every page's
idempotency key, so a restarted escalation pages level 0 again instead of being mistaken
for a repeat of the first run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from tocsin.runtime.errors import FieldViolation
from tocsin.runtime.ids import id_violations

MIN_DELAY_MS = 60_000
MAX_REPEAT = 9
MAX_LEVELS = 20
MAX_TARGETS = 20


class Status(StrEnum):
    ACTIVE = "active"
    STOPPED = "stopped"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Target:
    kind: Literal["user", "schedule"]
    id: str


@dataclass(frozen=True)
class Level:
    targets: tuple[Target, ...]
    delay_ms: int


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


@dataclass(frozen=True)
class Exhausted:
    """Every level of every loop fired and nobody acknowledged."""

    loops: int


Work = LevelFired | Exhausted


def start(incident_id: str, policy: Policy, now_ms: int, epoch: int = 0) -> Escalation:
    """A new escalation whose level 0 is due now."""
    return Escalation(
        incident_id=incident_id,
        policy=policy,
        status=Status.ACTIVE,
        next_level=0,
        loop=0,
        next_fire_ms=now_ms,
        version=1,
        epoch=epoch,
        started_ms=now_ms,
    )


def restart(current: Escalation, policy: Policy, now_ms: int) -> Escalation:
    """Start over (snooze ended, reassigned) with a fresh policy snapshot and a new epoch."""
    fresh = start(current.incident_id, policy, now_ms, epoch=current.epoch + 1)
    return replace(fresh, version=current.version + 1, pages=current.pages)


def stop(current: Escalation) -> Escalation | None:
    """Stop paging; None when already stopped (nothing to write)."""
    if current.status is not Status.ACTIVE:
        return None
    return replace(current, status=Status.STOPPED, next_fire_ms=None, version=current.version + 1)


def is_due(current: Escalation, now_ms: int) -> bool:
    return (
        current.status is Status.ACTIVE
        and current.next_fire_ms is not None
        and current.next_fire_ms <= now_ms
    )


def fire(current: Escalation, now_ms: int, *, manual: bool = False) -> tuple[Escalation, Work]:
    """Fire what is next: a level (and arm the one after it) or the exhaustion.

    `manual` fires the next level now even if it is not due yet (the Escalate call).
    Raises ValueError when the escalation is not active or not due.
    """
    if current.status is not Status.ACTIVE:
        raise ValueError(f"escalation of incident {current.incident_id} is {current.status}")
    if not manual and not is_due(current, now_ms):
        raise ValueError(f"escalation of incident {current.incident_id} is not due")
    levels = current.policy.levels
    if current.next_level >= len(levels):
        if manual and current.loop < current.policy.repeat:
            return fire(replace(current, next_level=0, loop=current.loop + 1), now_ms, manual=True)
        exhausted = replace(
            current, status=Status.EXHAUSTED, next_fire_ms=None, version=current.version + 1
        )
        return exhausted, Exhausted(loops=current.loop + 1)
    level = levels[current.next_level]
    next_fire = now_ms + level.delay_ms
    cursor = _cursor_after(current.policy, current.next_level, current.loop)
    advanced = replace(
        current,
        next_level=cursor[0],
        loop=cursor[1],
        next_fire_ms=next_fire,
        version=current.version + 1,
    )
    return advanced, LevelFired(current.next_level, current.loop, level.targets)


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
    return replace(current, next_fire_ms=now_ms, version=current.version + 1)


def record_pages(current: Escalation, pages: tuple[Page, ...]) -> Escalation:
    """The state with the pages a fired level sent appended (same version: one write)."""
    return replace(current, pages=current.pages + pages)


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
            field = f"levels[{i}].targets[{j}].{target.kind}_id"
            if not target.id:
                violations.append(FieldViolation(field, "must not be empty"))
    return violations
