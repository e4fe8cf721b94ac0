"""`tocsin reassign --user` and `tocsin override` say so when the user they hand work to
cannot be paged (no contact method or no rule): the command still succeeds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli_runner import as_json, run_cli
from tests.escalation.stack import full_stack
from tocsin.runtime.redis import RedisClient

CONFIG = """\
users:
  - id: alice
    name: Alice
    contact_methods:
      - {id: alice-sms, type: sms, address: "+15005550006"}
    notification_rules:
      - {contact: alice-sms, after: 0m}
  - id: dave
    name: Dave
    contact_methods:
      - {id: dave-sms, type: sms, address: "+15005550007"}
schedules:
  - id: nights
    time_zone: UTC
    layers:
      - {name: weekly, start: 2026-11-02T09:00, rotation: {length: 1w}, users: [alice]}
escalation_policies:
  - id: payments
    levels:
      - {delay: 5m, targets: [{schedule: nights}]}
services:
  - {id: payments-api, escalation_policy: payments}
"""


@pytest.fixture
async def targets(redis: RedisClient, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    async with full_stack(redis) as stack:
        endpoints = stack.client.endpoints
        yield {
            "scheduling": endpoints.scheduling,
            "incidents": endpoints.incidents,
            "notification": endpoints.notification,
            "escalation": stack.escalation_address,
        }


async def test_handing_work_to_someone_unpageable_warns(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "oncall.yaml"
    config.write_text(CONFIG)
    assert (await run_cli(monkeypatch, targets, "apply", "-f", str(config)))[0] == 0
    code, out, _ = await run_cli(
        monkeypatch, targets, "trigger", "payments-api", "--summary", "x", "--quiet"
    )
    incident = out.strip()
    warning = "warning: dave cannot be paged: has no notification rule\n"
    code, out, err = await run_cli(monkeypatch, targets, "reassign", incident, "--user", "dave")
    assert code == 0 and out.startswith(f"Reassigned #{incident} to user dave")
    assert err == warning
    code, _, err = await run_cli(monkeypatch, targets, "reassign", incident, "--user", "alice")
    assert code == 0 and err == ""
    window = ("--from", "2026-12-01T00:00:00Z", "--to", "2026-12-01T06:00:00Z")
    code, out, err = await run_cli(
        monkeypatch, targets, "override", "nights", "--user", "dave", *window, "--json"
    )
    assert code == 0 and as_json(out)["user"] == "dave"
    assert err == warning
