"""Between the `tocsin.v1` scheduling messages and the domain values.

Parsing errors become field violations named by their path in the message, so
`to_domain_schedule(msg, "schedule")` reports e.g. `schedule.layers[1].rotation_length`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.runtime.durations import parse_duration
from tocsin.runtime.errors import FieldViolation, InvalidArgument
from tocsin.runtime.windows import restriction_from_proto
from tocsin.scheduling.model import Layer, Override, Schedule, Shift, ShiftSource
from tocsin.v1 import scheduling_pb2


def timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def to_domain_schedule(msg: scheduling_pb2.Schedule, prefix: str = "") -> Schedule:
    """The domain schedule; InvalidArgument listing every field that does not parse."""
    schedule, violations = parse_schedule(msg, prefix)
    if violations:
        raise InvalidArgument(violations)
    return schedule


def parse_schedule(
    msg: scheduling_pb2.Schedule, prefix: str = ""
) -> tuple[Schedule, list[FieldViolation]]:
    """The domain schedule (with placeholders where a field does not parse) and the
    violations of the fields that do not parse, so validation can report the rest too."""
    violations: list[FieldViolation] = []
    path = f"{prefix}." if prefix else ""
    layers = tuple(
        _layer(layer, f"{path}layers[{i}]", violations) for i, layer in enumerate(msg.layers)
    )
    overrides = tuple(
        _override(o, f"{path}overrides[{i}]", violations) for i, o in enumerate(msg.overrides)
    )
    return Schedule(msg.id, msg.name, msg.time_zone, layers, overrides, msg.version), violations


def _layer(msg: scheduling_pb2.Layer, path: str, violations: list[FieldViolation]) -> Layer:
    start = datetime(1970, 1, 1)
    try:
        start = datetime.fromisoformat(msg.start)
    except ValueError:
        violations.append(
            FieldViolation(
                f"{path}.start", f"expected 2026-11-02T09:00 (local) or RFC 3339, got {msg.start!r}"
            )
        )
    length = parse_duration("1h")
    try:
        length = parse_duration(msg.rotation_length)
    except ValueError as error:
        violations.append(FieldViolation(f"{path}.rotation_length", str(error)))
    restrictions = tuple(
        restriction_from_proto(r, f"{path}.restrictions[{i}]", violations)
        for i, r in enumerate(msg.restrictions)
    )
    return Layer(msg.name, start, length, tuple(msg.user_ids), restrictions)


def _override(
    msg: scheduling_pb2.Override, path: str, violations: list[FieldViolation]
) -> Override:
    for field in ("start", "end"):
        if not msg.HasField(field):
            violations.append(FieldViolation(f"{path}.{field}", "is required"))
    return Override(msg.user_id, from_timestamp(msg.start), from_timestamp(msg.end), msg.id)


def shift_message(schedule_id: str, shift: Shift) -> scheduling_pb2.Shift:
    source = shift.sources[0]
    return scheduling_pb2.Shift(
        schedule_id=schedule_id,
        user_id=shift.user,
        start=timestamp(shift.start),
        end=timestamp(shift.end),
        source=scheduling_pb2.SHIFT_SOURCE_LAYER
        if source.kind == "layer"
        else scheduling_pb2.SHIFT_SOURCE_OVERRIDE,
        source_name=source.name,
    )


def to_domain_shift(msg: scheduling_pb2.Shift) -> Shift:
    """A proto shift as a domain shift (for iCal rendering at the edge)."""
    source = (
        ShiftSource("override", msg.source_name, 0)
        if msg.source == scheduling_pb2.SHIFT_SOURCE_OVERRIDE
        else ShiftSource("layer", msg.source_name, 0)
    )
    return Shift(msg.user_id, from_timestamp(msg.start), from_timestamp(msg.end), (source,))
