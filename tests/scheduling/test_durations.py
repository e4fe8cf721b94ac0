from datetime import timedelta

import pytest

from tocsin.runtime.durations import Duration, parse_duration


@pytest.mark.parametrize(
    ("text", "amount", "unit", "elapsed", "calendar"),
    [
        ("30s", 30, "s", timedelta(seconds=30), False),
        ("5m", 5, "m", timedelta(minutes=5), False),
        ("2h", 2, "h", timedelta(hours=2), False),
        ("90m", 90, "m", timedelta(minutes=90), False),
        ("1d", 1, "d", timedelta(days=1), True),
        ("1w", 1, "w", timedelta(weeks=1), True),
        (" 2w ", 2, "w", timedelta(weeks=2), True),
    ],
)
def test_parses_amount_and_unit(
    text: str, amount: int, unit: str, elapsed: timedelta, calendar: bool
) -> None:
    duration = parse_duration(text)
    assert (duration.amount, duration.unit) == (amount, unit)
    assert duration.as_timedelta() == elapsed
    assert duration.is_calendar is calendar
    assert str(duration) == text.strip()


def test_calendar_durations_count_days() -> None:
    assert parse_duration("3d").days == 3
    assert parse_duration("2w").days == 14


def test_elapsed_durations_have_no_day_count() -> None:
    with pytest.raises(ValueError, match="elapsed"):
        _ = parse_duration("24h").days


@pytest.mark.parametrize(
    "text", ["0m", "0w", "-1h", "1.5h", "1y", "h", "1", "", "1 h", "1H", "+1h", "1h30m", "m5"]
)
def test_rejects_junk_naming_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as raised:
        parse_duration(text)
    assert repr(text) in str(raised.value)


def test_rejects_unknown_unit_when_built_directly() -> None:
    with pytest.raises(ValueError, match="unit 'y'"):
        Duration(1, "y")  # type: ignore[arg-type]
