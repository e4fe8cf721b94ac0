"""Everything wrong with a schedule, each named by its field path.

Paths use the field names of the `tocsin.v1.Schedule` message (`layers[1].rotation_length`,
`overrides[0].end`), so the gRPC layer can hand them on unchanged as
`google.rpc.BadRequest` field violations.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from tocsin.runtime.errors import FieldViolation
from tocsin.runtime.localtime import load_zone, resolve_wall_time
from tocsin.runtime.windows import restriction_violations
from tocsin.scheduling.model import Layer, Override, Schedule


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
    layer_names: dict[str, int] = {}
    for i, layer in enumerate(schedule.layers):
        violations += _layer_violations(f"layers[{i}]", layer, known_users)
        violations += _duplicate(f"layers[{i}].name", layer.name, layer_names, "layers", i)
    override_ids: dict[str, int] = {}
    for i, override in enumerate(schedule.overrides):
        violations += _override_violations(f"overrides[{i}]", override, zone, known_users)
        if override.id:
            violations += _duplicate(
                f"overrides[{i}].id", override.id, override_ids, "overrides", i
            )
    return violations


def _duplicate(
    field: str, value: str, seen: dict[str, int], collection: str, index: int
) -> list[FieldViolation]:
    first = seen.setdefault(value, index)
    if first == index:
        return []
    return [FieldViolation(field, f"{value!r} is already used by {collection}[{first}]")]


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
                f"{path}.rotation_length",
                f"must be greater than zero, got {layer.rotation_length}",
            )
        )
    if not layer.users:
        violations.append(FieldViolation(f"{path}.user_ids", "a rotation needs at least one user"))
    for j, user in enumerate(layer.users):
        violations += _user_violations(f"{path}.user_ids[{j}]", user, known_users)
    for j, restriction in enumerate(layer.restrictions):
        violations += restriction_violations(f"{path}.restrictions[{j}]", restriction)
    return violations


def _override_violations(
    path: str, override: Override, zone: ZoneInfo | None, known_users: set[str] | None
) -> list[FieldViolation]:
    violations = _user_violations(f"{path}.user_id", override.user, known_users)
    start, end = _comparable(override.start, zone), _comparable(override.end, zone)
    if start is not None and end is not None and end <= start:
        violations.append(
            FieldViolation(
                f"{path}.end",
                f"must be after start ({override.start.isoformat()}), "
                f"got {override.end.isoformat()}",
            )
        )
    return violations


def _comparable(moment: datetime, zone: ZoneInfo | None) -> datetime | None:
    """`moment` as an aware instant, or None if it is wall-clock time in a zone that does
    not exist."""
    if moment.tzinfo is not None:
        return moment
    return None if zone is None else resolve_wall_time(moment, zone)
