"""Urgency, support hours and ack timeouts in `tocsin apply` / `tocsin export`: the
example's services apply and export back unchanged, and a bad setting is refused with
file, line and field (the file's own checks and the server's alike)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.test_apply_cli import EXAMPLE, _targets
from tests.cli_runner import as_json, run_cli
from tests.escalation.stack import full_stack
from tests.services import client_for
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2, urgency_pb2


@pytest.fixture
async def targets(redis: RedisClient) -> AsyncIterator[dict[str, str]]:
    async with full_stack(redis) as stack:
        yield _targets(stack)


async def test_the_example_services_urgency_applies_and_exports_back(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, _, err = await run_cli(monkeypatch, targets, "apply", "-f", str(EXAMPLE))
    assert code == 0, err
    client = client_for(**{k: v for k, v in targets.items() if k != "escalation"})
    try:
        reports = (
            await client.incidents.GetService(incidents_pb2.GetServiceRequest(id="billing-reports"))
        ).service
        ledger = (
            await client.incidents.GetService(incidents_pb2.GetServiceRequest(id="ledger-batch"))
        ).service
        dave = await client.notification.GetUserNotificationSettings(
            notification_pb2.GetUserNotificationSettingsRequest(user_id="dave")
        )
    finally:
        await client.close()
    assert reports.urgency.mode == urgency_pb2.URGENCY_MODE_SUPPORT_HOURS
    assert reports.urgency.defer_low_outside_support_hours
    assert reports.support_hours.time_zone == "Europe/London"
    assert getattr(reports.support_hours.windows[0], "from") == "09:00"
    assert reports.ack_timeout.seconds == 4 * 3600
    assert list(ledger.urgency.high_severities) == [common_pb2.SEVERITY_CRITICAL]
    assert [r.urgency for r in dave.rules] == [0, common_pb2.URGENCY_LOW]

    code, out, err = await run_cli(
        monkeypatch,
        targets,
        "trigger",
        "ledger-batch",
        "--summary",
        "batch slow",
        "--severity",
        "warning",
        "--quiet",
    )
    assert code == 0, err
    code, shown, err = await run_cli(monkeypatch, targets, "incident", out.strip(), "--json")
    assert code == 0, err
    incident = as_json(shown)
    assert incident["urgency"] == "low"
    assert incident["urgency_reason"] == "service ledger-batch: severity warning is low"
    code, shown, _ = await run_cli(monkeypatch, targets, "incident", out.strip())
    assert "urgency:       low" in shown

    exported = tmp_path / "exported.yaml"
    code, _, err = await run_cli(monkeypatch, targets, "export", "-o", str(exported))
    assert code == 0, err
    text = exported.read_text()
    assert "defer_low_outside_support_hours: true" in text and "ack_timeout: 4h" in text
    assert "urgency: low" in text
    assert "rrule: FREQ=WEEKLY;BYDAY=SU" in text and "start: '2026-12-06T02:00:00+00:00'" in text
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(exported))
    assert code == 0, err
    assert out.startswith("no changes"), out


BROKEN = """\
escalation_policies:
  - id: p
    levels:
      - {delay: 5m, targets: []}
services:
  - id: a
    escalation_policy: p
    urgency: sometimes
    ack_timeout: soon
  - id: b
    escalation_policy: p
    urgency: {mode: severity, high_severities: [loud]}
    support_hours:
      time_zone: Mars/Olympus
      windows:
        - {days: [someday], from: "9am", to: "17:00"}
"""

SERVER_REFUSES = """\
escalation_policies:
  - id: p
    levels:
      - {delay: 5m, targets: []}
services:
  - id: c
    escalation_policy: p
    urgency: support_hours
    ack_timeout: 30s
"""


async def test_bad_urgency_settings_name_file_line_and_field(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(broken))
    assert code == 2 and out == ""
    assert f"{broken}:8: services[0].urgency: expected one of high, low, severity" in err
    assert f"{broken}:9: services[0].ack_timeout: expected a duration" in err
    assert f"{broken}:12: services[1].urgency.high_severities[0]: expected one of" in err
    assert f"{broken}:14: services[1].support_hours.time_zone: unknown time zone" in err
    assert f"{broken}:16: services[1].support_hours.windows[0].days[0]: expected one of" in err
    assert f"{broken}:16: services[1].support_hours.windows[0].from: expected HH:MM" in err

    refused = tmp_path / "refused.yaml"
    refused.write_text(SERVER_REFUSES)
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(refused))
    assert code == 1 and out == "", err
    assert (
        f"{refused}:6: services[0].support_hours: is required for urgency by support hours" in err
    )
    assert f"{refused}:9: services[0].ack_timeout: must be between 1 minute and 7 days" in err


async def test_maintenance_from_the_command_line(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = await run_cli(
        monkeypatch,
        targets,
        "maintenance",
        "start",
        "--service",
        "payments-api",
        "--duration",
        "2h",
        "--id",
        "deploy-42",
        "--description",
        "deploying 42",
    )
    assert code == 0, err
    assert out.startswith("Started maintenance window deploy-42 on payments-api until ")
    code, out, err = await run_cli(
        monkeypatch, targets, "trigger", "payments-api", "--summary", "api flapping", "--json"
    )
    assert code == 0, err
    code, out, err = await run_cli(monkeypatch, targets, "maintenance", "list", "--json")
    assert code == 0, err
    [window] = as_json(out)
    assert (window["id"], window["active"], window["alerts_recorded"]) == ("deploy-42", True, 1)
    code, out, err = await run_cli(monkeypatch, targets, "suppressed", "--json")
    assert code == 0, err
    assert [a["rule"] for a in as_json(out)["alerts"]] == ["maintenance/deploy-42"]
    code, out, err = await run_cli(monkeypatch, targets, "maintenance", "end", "deploy-42")
    assert code == 0 and out.startswith("Ended maintenance window deploy-42"), err
    code, out, _ = await run_cli(monkeypatch, targets, "maintenance", "list")
    assert out.startswith("no maintenance windows")
    code, out, _ = await run_cli(monkeypatch, targets, "maintenance", "list", "--all")
    assert "deploy-42" in out and "over" in out
    code, out, err = await run_cli(
        monkeypatch,
        targets,
        "maintenance",
        "add",
        "--service",
        "payments-api",
        "--start",
        "2027-01-03T02:00:00+00:00",
        "--duration",
        "1h",
        "--rrule",
        "FREQ=SOMETIMES",
    )
    assert code == 1 and "window.rrule" in err, err
