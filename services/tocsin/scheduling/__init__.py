"""Schedules: rotations, layers, restrictions and overrides -> who is on call.

The pure domain lives here; `store`, `servicer` and `server` add Redis and gRPC.
"""

from tocsin.runtime.durations import Duration, parse_duration
from tocsin.runtime.errors import FieldViolation, InvalidArgument
from tocsin.runtime.localtime import resolve_wall_time
from tocsin.scheduling.domain import final_shifts, shift_at, user_shifts, who_is_on_call
from tocsin.scheduling.ical import schedule_calendar, shift_uid, user_calendar
from tocsin.scheduling.model import (
    WEEKDAYS,
    Layer,
    OnCall,
    Override,
    Restriction,
    Schedule,
    ScheduleShift,
    Shift,
    ShiftSource,
    parse_weekdays,
)
from tocsin.scheduling.validation import validate_schedule

__all__ = [
    "WEEKDAYS",
    "Duration",
    "FieldViolation",
    "InvalidArgument",
    "Layer",
    "OnCall",
    "Override",
    "Restriction",
    "Schedule",
    "ScheduleShift",
    "Shift",
    "ShiftSource",
    "final_shifts",
    "parse_duration",
    "parse_weekdays",
    "resolve_wall_time",
    "schedule_calendar",
    "shift_at",
    "shift_uid",
    "user_calendar",
    "user_shifts",
    "validate_schedule",
    "who_is_on_call",
]
