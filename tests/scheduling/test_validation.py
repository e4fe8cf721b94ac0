from datetime import UTC, datetime, time, timedelta, timezone

import pytest

from tests.scheduling.builders import layer, override, utc, window
from tocsin.runtime.durations import Duration
from tocsin.scheduling import (
    FieldViolation,
    Layer,
    Restriction,
    Schedule,
    parse_weekdays,
    validate_schedule,
)

START = datetime(2026, 6, 1, 9)
USERS = {"alice", "bob"}


def _schedule(**changes: object) -> Schedule:
    fields: dict[str, object] = {
        "id": "primary",
        "name": "Primary",
        "time_zone": "Europe/London",
        "layers": (layer("days", START, "1d", "alice,bob", window("mon", "09:00", "17:00")),),
        "overrides": (override("bob", utc(2026, 6, 2), utc(2026, 6, 3), "o-1"),),
    }
    fields.update(changes)
    return Schedule(**fields)  # type: ignore[arg-type]


def _layer(**changes: object) -> Layer:
    fields: dict[str, object] = {
        "name": "days",
        "start": START,
        "rotation_length": Duration(1, "d"),
        "users": ("alice",),
        "restrictions": (),
    }
    fields.update(changes)
    return Layer(**fields)  # type: ignore[arg-type]


def test_a_valid_schedule_has_no_violations() -> None:
    assert validate_schedule(_schedule(), USERS) == []


@pytest.mark.parametrize(
    ("schedule", "field", "description"),
    [
        (_schedule(id=""), "id", "must not be empty"),
        (_schedule(id="  "), "id", "must not be empty"),
        (_schedule(time_zone="Mars/Olympus"), "time_zone", "unknown time zone 'Mars/Olympus'"),
        (_schedule(time_zone=""), "time_zone", "unknown time zone ''"),
        (_schedule(layers=(_layer(name=""),)), "layers[0].name", "must not be empty"),
        (
            _schedule(layers=(_layer(), _layer())),
            "layers[1].name",
            "'days' is already used by layers[0]",
        ),
        (
            _schedule(layers=(_layer(), _layer(name="x", rotation_length=Duration(0, "h")))),
            "layers[1].rotation_length",
            "must be greater than zero, got 0h",
        ),
        (
            _schedule(layers=(_layer(rotation_length=Duration(-2, "w")),)),
            "layers[0].rotation_length",
            "must be greater than zero, got -2w",
        ),
        (
            _schedule(layers=(_layer(users=()),)),
            "layers[0].user_ids",
            "a rotation needs at least one user",
        ),
        (
            _schedule(layers=(_layer(users=("alice", "mallory")),)),
            "layers[0].user_ids[1]",
            "unknown user 'mallory'",
        ),
        (
            _schedule(layers=(_layer(users=("",)),)),
            "layers[0].user_ids[0]",
            "user id must not be empty",
        ),
        (
            _schedule(
                layers=(_layer(restrictions=(Restriction(frozenset(), time(9), time(17)),)),)
            ),
            "layers[0].restrictions[0].days",
            "needs at least one day",
        ),
        (
            _schedule(
                layers=(_layer(restrictions=(Restriction(frozenset({7}), time(9), time(17)),)),)
            ),
            "layers[0].restrictions[0].days",
            "unknown day 7",
        ),
        (
            _schedule(
                layers=(
                    _layer(
                        restrictions=(
                            window("mon", "09:00", "17:00"),
                            Restriction(frozenset({0}), time(9, tzinfo=UTC), time(17)),
                        )
                    ),
                )
            ),
            "layers[0].restrictions[1].from",
            "must be a wall-clock time without a UTC offset",
        ),
        (
            _schedule(overrides=(override("mallory", utc(2026, 6, 2), utc(2026, 6, 3)),)),
            "overrides[0].user_id",
            "unknown user 'mallory'",
        ),
        (
            _schedule(overrides=(override("bob", utc(2026, 6, 3), utc(2026, 6, 2)),)),
            "overrides[0].end",
            "must be after start",
        ),
        (
            _schedule(overrides=(override("bob", utc(2026, 6, 3), utc(2026, 6, 3)),)),
            "overrides[0].end",
            "must be after start",
        ),
        (
            # Naive times are London wall time: 10:00 BST is 09:00Z, the end.
            _schedule(overrides=(override("bob", datetime(2026, 6, 3, 10), utc(2026, 6, 3, 9)),)),
            "overrides[0].end",
            "must be after start",
        ),
        (
            _schedule(
                overrides=(
                    override("bob", utc(2026, 6, 2), utc(2026, 6, 3), "o-1"),
                    override("alice", utc(2026, 6, 4), utc(2026, 6, 5), "o-1"),
                )
            ),
            "overrides[1].id",
            "'o-1' is already used by overrides[0]",
        ),
    ],
)
def test_each_problem_is_named_by_its_field(
    schedule: Schedule, field: str, description: str
) -> None:
    violations = validate_schedule(schedule, USERS)
    assert [v.field for v in violations] == [field]
    assert description in violations[0].description


def test_from_equal_to_is_a_valid_whole_day() -> None:
    whole_day = _layer(restrictions=(window("mon", "09:00", "09:00"),))
    assert validate_schedule(_schedule(layers=(whole_day,)), USERS) == []


def test_override_times_with_offsets_compare_as_instants() -> None:
    plus_two = timezone(timedelta(hours=2))
    fine = override("bob", datetime(2026, 6, 3, 10, tzinfo=plus_two), utc(2026, 6, 3, 8, 30))
    assert validate_schedule(_schedule(overrides=(fine,)), USERS) == []


def test_without_known_users_user_names_are_not_checked() -> None:
    assert validate_schedule(_schedule(layers=(_layer(users=("mallory",)),))) == []


def test_all_problems_are_reported_together_in_field_order() -> None:
    schedule = Schedule(
        "",
        "Broken",
        "Nowhere/Else",
        (_layer(users=(), rotation_length=Duration(0, "m")),),
        (override("", datetime(2026, 6, 2), datetime(2026, 6, 1)),),
    )
    assert [v.field for v in validate_schedule(schedule, USERS)] == [
        "id",
        "time_zone",
        "layers[0].rotation_length",
        "layers[0].user_ids",
        "overrides[0].user_id",
        # The naive override times cannot be compared without a zone: not reported.
    ]
    assert all(isinstance(v, FieldViolation) and v.description for v in validate_schedule(schedule))


def test_parse_weekdays() -> None:
    assert parse_weekdays(["mon", "Fri", " sun "]) == frozenset({0, 4, 6})
    with pytest.raises(ValueError, match="unknown day 'monday'"):
        parse_weekdays(["monday"])
    with pytest.raises(ValueError, match="unknown day 'xyz'"):
        parse_weekdays(["mon", "xyz"])
