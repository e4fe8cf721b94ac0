"""The load generator end to end at a low rate: its own `tocsin up` and fake Twilio, the
floor, and the report. No timing assertions: every figure must exist and be sane, and every
incident must have paged exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _figures(summary: dict[str, Any]) -> list[float]:
    return [float(summary[k]) for k in ("p50", "p99", "p999", "max")]


def test_a_short_run_pages_every_incident_once_and_reports_it(tmp_path: Path) -> None:
    done = _run(
        [
            "loadtests",
            "run",
            "--rate",
            "20",
            "--duration",
            "2",
            "--repeat-rate",
            "20",
            "--no-escalation",
            "--floor-duration",
            "1",
            "--storms",
            "2",
            "--out",
            str(tmp_path),
        ],
        timeout_s=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    incidents, repeats, cpu = result["incidents"], result["repeats"], result["cpu"]
    assert incidents["sent"] == incidents["trigger_ok"] == incidents["paged"] == 40
    assert incidents["lost_pages"] == incidents["duplicate_pages"] == 0
    assert incidents["rejected_sms"] == incidents["sms_to_unknown_numbers"] == 0
    assert incidents["created_false"] == 0
    first_sms = _figures(incidents["alert_to_first_sms_ms"])
    assert 0 < first_sms[0] <= first_sms[1] <= first_sms[2] <= first_sms[3]
    assert incidents["alert_to_first_sms_ms"]["count"] == 40
    assert result["escalation"]["level0_fire_lag_ms"]["count"] == 40
    assert repeats["sent"] == repeats["ok"] == repeats["absorbed"] == 40
    assert repeats["storm_pages_lost"] == repeats["storm_pages_duplicate"] == 0
    assert result["floor"]["requests"] == 20 and result["floor"]["errors"] == 0
    assert _figures(result["floor"]["latency_ms"])[0] > 0
    assert cpu["measured"] and cpu["per_incident_ms"] > 0
    # every process of the page path blocked and was woken while it paged
    assert cpu["wakeups_per_incident"] > 0
    woken = cpu["wakeups_per_incident_by_process"]
    assert all(woken[name] > 0 for name in ("incidents", "escalation", "notification", "redis"))
    assert set(cpu["until_first_sms_by_process_s"]) >= {
        "incidents",
        "escalation",
        "scheduling",
        "notification",
        "gateway",
        "redis",
    }
    redis = result["redis"]
    # each incident costs Redis commands, sent in fewer round trips than commands
    assert 0 < redis["round_trips_per_incident"] < redis["commands_per_incident"]
    assert result["targets"]["zero_lost_and_duplicate_pages"]["met"] is True
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_escalation_timers_fire_each_due_timer_once(tmp_path: Path) -> None:
    done = _run(
        [
            "loadtests.escalation_timers",
            "--pending",
            "3000",
            "--rate",
            "200",
            "--duration",
            "2",
            "--out",
            str(tmp_path),
        ],
        timeout_s=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "escalation_timers.json").read_text())["results"]
    assert result["fired"] == 400
    assert result["lost"] == result["duplicates"] == result["fired_early_background"] == 0
    assert result["pending_after"] == 3000 - 400
    assert result["lateness_ms"]["count"] == 400


def test_idle_steps_are_timed_on_a_stack_of_its_own(tmp_path: Path) -> None:
    done = _run(
        ["loadtests.idle", "--count", "3", "--gap", "0.2", "--out", str(tmp_path)],
        timeout_s=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    steps = ("redis GET", "grpc health Check", "Trigger repeat", "Trigger new")
    for label in ("idle", "back to back"):
        assert sorted(result[label]) == sorted(steps)
        for step in steps:
            figures = result[label][step]
            assert figures["count"] == 3
            assert 0 < figures["p50"] <= figures["p99"] <= figures["max"] < 10_000
