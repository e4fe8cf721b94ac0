"""The incident commands of `tocsin`, run in-process against a real incidents server."""

from __future__ import annotations

import getpass
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.cli_runner import as_json, run_cli
from tests.incidents.directory import served_with_directory
from tests.incidents.harness import Served, create_payments, event_kinds, events_of, serve_incidents
from tocsin.runtime.clock import ManualClock
from tocsin.v1 import common_pb2


@pytest.fixture
async def served(redis: Redis, clock: ManualClock) -> AsyncIterator[Served]:
    async with serve_incidents(redis, clock) as served:
        await create_payments(served.stub)
        yield served


async def _tocsin(
    served: Served, monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[int, str, str]:
    return await run_cli(monkeypatch, {"incidents": served.target}, *argv)


async def test_trigger_ack_note_snooze_resolve(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = await _tocsin(
        served,
        monkeypatch,
        *("trigger", "payments-api", "--summary", "Checkout is down", "--dedup-key", "checkout"),
        *("--severity", "error", "--json"),
    )
    assert code == 0
    opened = as_json(out)
    assert opened["created"] is True
    assert opened["status"] == "triggered" and opened["severity"] == "error"
    incident_id, number = opened["id"], str(opened["number"])
    assert number == "1"  # the stack's first incident

    code, out, _ = await _tocsin(served, monkeypatch, "ack", number, "--json")
    assert code == 0
    acked = as_json(out)
    assert acked["status"] == "acknowledged"
    # No credential on a laptop stack: the local admin, whatever name the CLI sends.
    assert acked["acknowledged_by"] == f"local admin ({getpass.getuser()}) (cli)"
    code, out, _ = await _tocsin(served, monkeypatch, "ack", f"#{number}")
    assert out.strip() == f"#{number} was already acknowledged"

    code, out, _ = await _tocsin(served, monkeypatch, "note", number, "rolling back")
    assert code == 0
    code, out, _ = await _tocsin(served, monkeypatch, "snooze", number, "30m", "--json")
    assert as_json(out)["snoozed_until"] is not None
    code, out, _ = await _tocsin(served, monkeypatch, "resolve", number, "--json")
    assert as_json(out)["status"] == "resolved"

    events = await events_of(served.redis, incident_id)
    assert event_kinds(events) == ["TRIGGERED", "ACKNOWLEDGED", "NOTE_ADDED", "SNOOZED", "RESOLVED"]
    assert all(e.actor.channel == common_pb2.CHANNEL_CLI for e in events)

    code, out, _ = await _tocsin(served, monkeypatch, "incident", number, "--json")
    shown = as_json(out)
    assert shown["id"] == incident_id and shown["number"] == 1
    assert [entry["kind"] for entry in shown["timeline"]] == [
        "triggered",
        "acknowledged",
        "note",
        "snoozed",
        "resolved",
    ]
    assert shown["timeline"][2]["message"] == "rolling back"
    assert shown["alerts"][0]["summary"] == "Checkout is down"
    code, out, _ = await _tocsin(served, monkeypatch, "incident", number)
    assert "timeline:" in out and "rolling back" in out


async def test_incidents_lists_with_filters(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = []
    for n, severity in enumerate(("critical", "warning", "critical")):
        served.clock.advance(minutes=1)
        code, out, _ = await _tocsin(
            served,
            monkeypatch,
            *("trigger", "payments-api", "--summary", f"Disk {n} full", "--dedup-key", f"d{n}"),
            *("--severity", severity, "--json"),
        )
        ids.append(as_json(out)["id"])
        assert as_json(out)["number"] == n + 1
    await _tocsin(served, monkeypatch, "ack", "1")

    code, out, _ = await _tocsin(served, monkeypatch, "incidents", "--json")
    assert code == 0
    listed = as_json(out)
    assert [row["id"] for row in listed] == ids[::-1]
    first = listed[-1]
    assert {
        key: first[key]
        for key in ("service", "status", "summary", "dedup_key", "alert_count", "created_at")
    } == {
        "service": "payments-api",
        "status": "acknowledged",
        "summary": "Disk 0 full",
        "dedup_key": "d0",
        "alert_count": 1,
        "created_at": "2026-11-27T03:01:00Z",
    }

    async def ids_for(*flags: str) -> list[str]:
        code, out, _ = await _tocsin(served, monkeypatch, "incidents", *flags, "--json")
        assert code == 0
        return [row["id"] for row in as_json(out)]

    assert await ids_for("--status", "triggered") == [ids[2], ids[1]]
    assert await ids_for("--severity", "critical") == [ids[2], ids[0]]
    assert await ids_for("--search", "DISK 1") == [ids[1]]
    assert await ids_for("--since", "2026-11-27T03:02:00Z") == [ids[2], ids[1]]
    assert await ids_for("--service", "other") == []
    assert await ids_for("--limit", "2") == [ids[2], ids[1]]

    code, out, _ = await _tocsin(served, monkeypatch, "incidents")
    assert [line.split()[0] for line in out.splitlines()] == ["#", "3", "2", "1"]
    assert out.splitlines()[0].split() == [
        "#",
        "STATUS",
        "SEVERITY",
        "SERVICE",
        "ALERTS",
        "CREATED",
        "SUMMARY",
    ]
    assert len(out.splitlines()) == 4


async def test_errors_are_reported_with_the_field(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = await _tocsin(served, monkeypatch, "ack", "12abc")
    assert code == 2 and "expected an incident number like 18 or #18, got '12abc'" in err
    code, _, err = await _tocsin(served, monkeypatch, "ack", "#404")
    assert code == 1 and "NOT_FOUND: incident #404 does not exist" in err
    code, _, err = await _tocsin(served, monkeypatch, "trigger", "nope", "--summary", "x")
    assert code == 1 and "NOT_FOUND" in err
    code, _, err = await _tocsin(served, monkeypatch, "snooze", "5", "soon")
    assert code == 2 and "expected a duration" in err


async def test_reassign_to_nobody_is_refused_by_name(
    redis: Redis, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with served_with_directory(redis, clock) as served:
        code, out, _ = await _tocsin(
            served, monkeypatch, "trigger", "payments-api", "--summary", "x", "--json"
        )
        incident_id, number = as_json(out)["id"], str(as_json(out)["number"])
        for flag, name, noun in (
            ("--user", "zed", "user"),
            ("--policy", "nopolicy", "escalation policy"),
        ):
            code, out, err = await _tocsin(served, monkeypatch, "reassign", number, flag, name)
            assert code == 1 and out == ""
            assert f"NOT_FOUND: {noun}" in err and repr(name) in err
        code, out, _ = await _tocsin(served, monkeypatch, "reassign", number, "--user", "bob")
        assert code == 0 and out.startswith(f"Reassigned #{number} to user bob")
        assert event_kinds(await events_of(served.redis, incident_id)) == [
            "TRIGGERED",
            "REASSIGNED",
        ]


async def test_trigger_quiet_prints_the_number_later_commands_take(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = await _tocsin(
        served, monkeypatch, "trigger", "payments-api", "--summary", "x", "--quiet"
    )
    assert code == 0 and out.strip().isdigit()
    number = out.strip()
    code, out, err = await _tocsin(served, monkeypatch, "ack", f"#{number}")
    assert code == 0, err
    assert out.strip() == f"Acknowledged #{number}"
