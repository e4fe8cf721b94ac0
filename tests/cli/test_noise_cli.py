"""Noise control in `tocsin apply` / `tocsin export` and its CLI commands, against every
real service: event rules (global and per service), grouping, heartbeat monitors and a
round-robin level apply, apply again unchanged, export and apply back unchanged; a broken
file is refused with file, line and field; `tocsin rules`, `suppressed`, `heartbeat`,
`heartbeats` and `merge` do what they say."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.test_apply_cli import _targets
from tests.cli_runner import as_json, run_cli
from tests.escalation.stack import full_stack
from tocsin.runtime.redis import RedisClient

NOISE = """\
users:
  - id: ann
    name: Ann
  - id: ben
    name: Ben
escalation_policies:
  - id: support
    levels:
      - {delay: 10m, strategy: round_robin, targets: [{user: ann}, {user: ben}]}
  - id: payments  # the test stack's payments-api uses it
    levels:
      - {delay: 10m, targets: [{user: ann}]}
services:
  - id: db-team
    escalation_policy: support
  - id: support-api
    escalation_policy: support
    grouping: {window: 5m}
    event_rules:
      - id: tls-expiry
        when:
          - {field: summary, contains: "certificate expires"}
          - {field: details.env, regex: "^stag", not: true}
        suppress: true
      - id: db-key
        when: [{field: details.check, exists: true}]
        severity: warning
        urgency: low
        dedup_key: "{source}/{details.check}"
event_rules:
  - id: postgres
    when: [{field: component, equals: postgres}]
    route_to: db-team
heartbeats:
  - {id: nightly-backup, service: support-api, interval: 24h, grace: 30m}
"""


@pytest.fixture
async def targets(redis: RedisClient) -> AsyncIterator[dict[str, str]]:
    async with full_stack(redis) as stack:
        yield _targets(stack)


async def test_noise_control_applies_exports_and_applies_back_unchanged(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "noise.yaml"
    config.write_text(NOISE)
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config), "--json")
    assert code == 0, err
    changes = {(c["action"], c["kind"], c["id"]) for c in as_json(out)["changes"]}
    assert {
        ("set", "event rules", "global"),
        ("set", "event rules", "support-api"),
        ("create", "heartbeat monitor", "nightly-backup"),
        ("create", "service", "support-api"),
    } <= changes
    code, out, _ = await run_cli(monkeypatch, targets, "apply", "-f", str(config))
    assert code == 0 and out.startswith("no changes"), out
    exported = tmp_path / "exported.yaml"
    code, _, err = await run_cli(monkeypatch, targets, "export", "-o", str(exported))
    assert code == 0, err
    text = exported.read_text()
    for expected in (
        "strategy: round_robin",
        "window: 5m",
        "route_to: db-team",
        "urgency: low",
        "nightly-backup",
    ):
        assert expected in text, text
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(exported))
    assert code == 0, err
    assert out.startswith("no changes"), out
    code, out, _ = await run_cli(monkeypatch, targets, "rules", "--json")
    rules = as_json(out)
    assert [(r["service"], [x["id"] for x in r["rules"]]) for r in rules] == [
        (None, ["postgres"]),
        ("support-api", ["tls-expiry", "db-key"]),
    ]


async def test_a_broken_noise_file_names_file_line_and_field(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "services:\n"
        "  - id: api\n"
        "    escalation_policy: nope\n"
        "    grouping: {window: 5m, fields: [source]}\n"
        "    event_rules:\n"
        "      - id: a\n"
        "        when:\n"
        "          - {field: colour, equals: red}\n"
        "          - {field: summary, regex: '(unclosed'}\n"
        "          - {field: source, equals: x, contains: y}\n"
        "        suppress: true\n"
        "      - id: b\n"
        "        route_to: elsewhere\n"
        "      - id: c\n"
        "        when: [{field: source, equals: x, not: maybe}]\n"
        "        suppress: sometimes\n"
        "heartbeats:\n"
        "  - {id: hb, service: api, interval: soon}\n"
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(broken))
    assert code == 2 and out == ""
    assert f"{broken}:4: services[0].grouping: give window" in err
    assert f"{broken}:8: services[0].event_rules[0].when[0].field: expected one of" in err
    assert f"{broken}:9: services[0].event_rules[0].when[1].regex: not a regular expression" in err
    assert f"{broken}:10: services[0].event_rules[0].when[2]: give exactly one of" in err
    assert f"{broken}:13: services[0].event_rules[1].route_to: unknown service 'elsewhere'" in err
    assert f"{broken}:15: services[0].event_rules[2].when[0].not: expected true or false" in err
    assert f"{broken}:16: services[0].event_rules[2].suppress: expected true or false" in err
    assert f"{broken}:18: heartbeats[0].interval: expected a duration" in err


async def test_heartbeat_merge_and_suppressed_commands(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "noise.yaml"
    config.write_text(NOISE)
    assert (await run_cli(monkeypatch, targets, "apply", "-f", str(config)))[0] == 0
    code, out, err = await run_cli(
        monkeypatch,
        targets,
        "heartbeat",
        "create",
        "etl",
        "--service",
        "support-api",
        "--interval",
        "1h",
    )
    assert code == 0, err
    assert "/v1/heartbeat/" in out
    token = out.strip().rsplit("/", 1)[1]
    code, out, _ = await run_cli(monkeypatch, targets, "heartbeats", "--json")
    monitors = {m["id"]: m for m in as_json(out)}
    assert set(monitors) == {"etl", "nightly-backup"} and monitors["etl"]["state"] == "ok"
    code, out, _ = await run_cli(monkeypatch, targets, "heartbeat", "ping", token)
    assert code == 0 and out.startswith("Pinged etl")
    code, out, _ = await run_cli(monkeypatch, targets, "heartbeat", "delete", "etl")
    assert code == 0
    code, out, _ = await run_cli(monkeypatch, targets, "heartbeats", "--json")
    assert [m["id"] for m in as_json(out)] == ["nightly-backup"]

    code, out, _ = await run_cli(
        monkeypatch, targets, "trigger", "support-api", "--summary", "TLS certificate expires soon"
    )
    assert code == 0
    code, out, _ = await run_cli(monkeypatch, targets, "suppressed", "--json")
    assert as_json(out)["total"] == 1
    assert as_json(out)["alerts"][0]["rule"] == "support-api/tls-expiry"

    ids = []
    for service in ("db-team", "support-api"):
        code, out, err = await run_cli(
            monkeypatch, targets, "trigger", service, "--summary", f"{service} broken", "--quiet"
        )
        assert code == 0, err
        ids.append(out.strip())
    code, out, err = await run_cli(monkeypatch, targets, "merge", ids[0], ids[1], "--json")
    assert code == 0, err
    assert as_json(out)["alerts_moved"] == 1
    code, out, _ = await run_cli(monkeypatch, targets, "merge", ids[0], ids[0])
    assert code == 1 and out == ""
