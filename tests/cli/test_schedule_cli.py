"""`tocsin oncall`, `shifts` and `override` give the same answers as the domain code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.cli_runner import as_json, run_cli
from tests.scheduling.test_service import NOW, primary
from tests.services import client_for, running
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient
from tocsin.scheduling import domain
from tocsin.scheduling.convert import to_domain_schedule
from tocsin.scheduling.server import create_server
from tocsin.v1 import scheduling_pb2 as pb


@pytest.fixture
async def target(redis: RedisClient) -> AsyncIterator[dict[str, str]]:
    async with running(create_server, redis, ManualClock(NOW)) as (_, address):
        async with client_for(scheduling=address) as client:
            for user in ("alice", "bob", "carol", "dave"):
                await client.scheduling.CreateUser(
                    pb.CreateUserRequest(user=pb.User(id=user, name=user))
                )
            await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
        yield {"scheduling": address}


async def test_oncall_json(target: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = await run_cli(
        monkeypatch, target, "oncall", "primary", "--at", "2026-11-27T20:00:00-05:00", "--json"
    )
    assert code == 0
    answer = as_json(out)
    assert answer["schedule"] == "primary" and answer["user"] == "carol"
    assert answer["source"] == "override"


async def test_oncall_nobody(target: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = await run_cli(
        monkeypatch, target, "oncall", "primary", "--at", "2020-01-01T00:00:00Z", "--json"
    )
    assert code == 0 and as_json(out) == {"schedule": "primary", "user": None}


async def test_shifts_json_matches_domain(
    target: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime(2026, 11, 23, tzinfo=UTC)
    end = start + timedelta(days=7)
    code, out, _ = await run_cli(
        monkeypatch,
        target,
        "shifts",
        "primary",
        "--from",
        start.isoformat(),
        "--to",
        end.isoformat(),
        "--json",
    )
    assert code == 0
    expected = domain.final_shifts(to_domain_schedule(primary()), start, end)
    assert [(s["user"], s["start"], s["end"]) for s in as_json(out)] == [
        (
            s.user,
            s.start.isoformat().replace("+00:00", "Z"),
            s.end.isoformat().replace("+00:00", "Z"),
        )
        for s in expected
    ]


async def test_override_then_oncall(
    target: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = await run_cli(
        monkeypatch,
        target,
        "override",
        "primary",
        "--user",
        "dave",
        "--from",
        "2026-12-01T00:00:00Z",
        "--to",
        "2026-12-01T06:00:00Z",
        "--json",
    )
    assert code == 0
    created = as_json(out)
    code, out, _ = await run_cli(
        monkeypatch, target, "oncall", "primary", "--at", "2026-12-01T03:00:00Z", "--json"
    )
    assert as_json(out)["user"] == "dave" and as_json(out)["source_name"] == created["id"]


async def test_bad_input_is_named(target: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = await run_cli(
        monkeypatch,
        target,
        "override",
        "primary",
        "--user",
        "zed",
        "--from",
        "2026-12-01T00:00:00Z",
        "--to",
        "2026-12-01T06:00:00Z",
    )
    assert code == 1 and "INVALID_ARGUMENT" in err and "user_id" in err
    code, _, err = await run_cli(monkeypatch, target, "oncall", "primary", "--at", "tomorrow")
    assert code == 2 and "RFC 3339" in err
    code, _, err = await run_cli(monkeypatch, target, "oncall", "nope")
    assert code == 1 and "NOT_FOUND" in err
