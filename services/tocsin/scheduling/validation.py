"""Everything wrong with a schedule, each named by its field path.

Paths follow the user-facing shape (`layers[1].rotation.length`, `overrides[0].to`), so
the gRPC layer can hand them on as `google.rpc.BadRequest` field violations and a
`tocsin apply` user can find the line to fix.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from tocsin.scheduling.localtime import load_zone, resolve_wall_time
from tocsin.scheduling.model import FieldViolation, Layer, Override, Restriction, Schedule


def validate_schedule(
    schedule: Schedule, known_users: set[str] | None = None
) -> list[FieldViolation]:
    """All violations in `schedule`, in field order; empty if it is valid. With
    `known_users`, every user it names must be one of them."""
    violations: list[FieldViolation] = []
    if not schedule.id.strip():
        violations.append(FieldViolation("id", "must not be empty"))
    zone: ZoneInfo | None
    try:
        zone = load_zone(schedule.time_zone)
    except ValueError as error:
        zone = None
        violations.append(FieldViolation("time_zone", str(error)))
    seen_names: dict[str, int] = {}
    for i, layer in enumerate(schedule.layers):
        violations += _layer_violations(f"layers[{i}]", layer, known_users)
        if layer.name in seen_names:
            violations.append(
                FieldViolation(
                    f"layers[{i}].name",
                    f"duplicate layer name {layer.name!r} (also layers[{seen_names[layer.name]}])",
                )
            )
        seen_names.setdefault(layer.name, i)
    for i, override in enumerate(schedule.overrides):
        violations += _override_violations(f"overrides[{i}]", override, zone, known_users)
    return violations


def _user_violations(field: str, user: str, known_users: set[str] | None) -> list[FieldViolation]:
    if not user.strip():
        return [FieldViolation(field, "user id must not be empty")]
    if known_users is not None and user not in known_users:
        return [FieldViolation(field, f"unknown user {user!r}")]
    return []


def _layer_violations(
    path: str, layer: Layer, known_users: set[str] | None
) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if not layer.name.strip():
        violations.append(FieldViolation(f"{path}.name", "must not be empty"))
    if layer.rotation_length.amount <= 0:
        violations.append(
            FieldViolation(
                f"{path}.rotation.length",
                f"must be greater than zero, got {layer.rotation_length}",
            )
        )
    if not layer.users:
        violations.append(FieldViolation(f"{path}.users", "a rotation needs at least one user"))
    for j, user in enumerate(layer.users):
        violations += _user_violations(f"{path}.users[{j}]", user, known_users)
    for j, restriction in enumerate(layer.restrictions):
        violations += _restriction_violations(f"{path}.restrictions[{j}]", restriction)
    return violations


def _restriction_violations(path: str, restriction: Restriction) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if not restriction.days:
        violations.append(FieldViolation(f"{path}.days", "needs at least one day"))
    for day in sorted(restriction.days):
        if day not in range(7):
            violations.append(
                FieldViolation(f"{path}.days", f"unknown day {day}; days are 0 (Monday) to 6")
            )
    for field, moment in (("from", restriction.start), ("to", restriction.end)):
        if moment.tzinfo is not None:
            violations.append(
                FieldViolation(f"{path}.{field}", "must be a wall-clock time without a UTC offset")
            )
    return violations


def _override_violations(
    path: str, override: Override, zone: ZoneInfo | None, known_users: set[str] | None
) -> list[FieldViolation]:
    violations = _user_violations(f"{path}.user", override.user, known_users)
    start, end = _comparable(override.start, zone), _comparable(override.end, zone)
    if start is not None and end is not None and end <= start:
        violations.append(
            FieldViolation(
                f"{path}.to",
                f"must be after from ({override.start.isoformat()}), "
                f"got {override.end.isoformat()}",
            )
        )
    return violations


def _comparable(moment: datetime, zone: ZoneInfo | None) -> datetime | None:
    """`moment` in UTC, or None if it is wall-clock time in a zone that does not exist."""
    if moment.tzinfo is not None:
        return moment
    return None if zone is None else resolve_wall_time(moment, zone)
