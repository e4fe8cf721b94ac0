"""`tocsin apply` and `tocsin export` against every real service: the example file
applies, a second apply changes nothing, a dry run changes nothing, an export applies back
unchanged, and a broken file is refused with file, line and field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_runner import as_json, run_cli
from tests.escalation.stack import FullStack, full_stack
from tests.services import client_for
from tocsin.client.apply import Applier, ApplyError
from tocsin.client.configfile import load_config_file
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2, scheduling_pb2

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "oncall.yaml"


@pytest.fixture
async def targets(redis: RedisClient) -> AsyncIterator[dict[str, str]]:
    async with full_stack(redis) as stack:
        yield _targets(stack)


def _targets(stack: FullStack) -> dict[str, str]:
    endpoints = stack.client.endpoints
    return {
        "scheduling": endpoints.scheduling,
        "incidents": endpoints.incidents,
        "notification": endpoints.notification,
        "escalation": stack.escalation_address,
    }


async def test_apply_is_idempotent_and_dry_run_changes_nothing(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(EXAMPLE), "--dry-run")
    assert code == 0, err
    # (the test stack already runs a payments-api service, bound to no policy yet)
    assert "would create user alice" in out and "would update service payments-api" in out
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(EXAMPLE), "--json")
    assert code == 0, err
    created = {(c["action"], c["kind"], c["id"]) for c in as_json(out)["changes"]}
    assert {
        ("create", "user", "dave"),
        ("create", "contact method", "alice-voice"),
        ("create", "notification rules", "bob"),
        ("create", "schedule", "primary"),
        ("create", "escalation policy", "payments"),
        ("update", "service", "payments-api"),
    } <= created
    code, out, _ = await run_cli(monkeypatch, targets, "apply", "-f", str(EXAMPLE))
    assert code == 0 and out.startswith("no changes")
    code, out, _ = await run_cli(
        monkeypatch, targets, "oncall", "primary", "--at", "2026-11-27T20:00:00-05:00", "--json"
    )
    assert as_json(out)["user"] == "carol"


async def test_export_applies_back_unchanged(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert (await run_cli(monkeypatch, targets, "apply", "-f", str(EXAMPLE)))[0] == 0
    await run_cli(
        monkeypatch,
        targets,
        "override",
        "primary",
        "--user",
        "dave",
        "--from",
        "2026-12-01T00:00:00Z",
        "--to",
        "2026-12-01T06:00:00Z",
    )
    exported = tmp_path / "exported.yaml"
    code, _, err = await run_cli(monkeypatch, targets, "export", "-o", str(exported))
    assert code == 0, err
    text = exported.read_text()
    assert "payments-api" in text and "0f8e9a6b2c4d4e1f9a0b1c2d3e4f5a6b" in text
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(exported))
    assert code == 0, err
    assert out.startswith("no changes"), out


async def test_a_broken_file_names_file_line_and_field(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "users:\n"
        "  - id: alice\n"
        "    name: Alice\n"
        "    notification_rules:\n"
        "      - {contact: pager, after: 0m}\n"
        "schedules:\n"
        "  - id: primary\n"
        "    time_zone: Mars/Olympus\n"
        "    layers:\n"
        "      - name: weekly\n"
        "        start: 2026-11-02T09:00\n"
        "        rotation: {length: 0w}\n"
        "        users: [alice, zed]\n"
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(broken))
    assert code == 2 and out == ""
    assert f"{broken}:5: users[0].notification_rules[0].contact" in err
    assert f"{broken}:8: schedules[0].time_zone: unknown time zone 'Mars/Olympus'" in err
    assert f"{broken}:12: schedules[0].layers[0].rotation.length" in err
    assert f"{broken}:13: schedules[0].layers[0].users[1]: unknown user 'zed'" in err
    code, out, _ = await run_cli(monkeypatch, targets, "oncall", "primary", "--json")
    assert code == 1  # nothing was applied


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


ERIN_WITH_A_BAD_NUMBER = """\
users:
  - id: erin
    name: Erin
    contact_methods:
      - {id: erin-sms, type: sms, address: "555-1234"}
    notification_rules:
      - {contact: erin-sms, after: 0m}
schedules:
  - id: erin-week
    time_zone: UTC
    layers:
      - {name: weekly, start: 2026-11-02T09:00, rotation: {length: 1w}, users: [erin]}
escalation_policies:
  - id: erin-policy
    levels:
      - {delay: 5m, targets: [{schedule: erin-week}]}
services:
  - id: erin-api
    escalation_policy: erin-policy
    integration_key: {key}
"""


async def test_dry_run_refuses_what_apply_would_and_apply_writes_nothing(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(tmp_path, "erin.yaml", ERIN_WITH_A_BAD_NUMBER.replace("{key}", "not-a-key"))
    for dry_run in (("--dry-run",), ()):
        code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config), *dry_run)
        assert code == 1 and out == "", err
        assert f"{config}:5: users[0].contact_methods[0].address: " in err
        assert f"{config}:20: services[0].integration_key: must be 32 letters or digits" in err
        assert err.rstrip().endswith("nothing was applied")
    for command in (("user", "erin"), ("oncall", "erin-week")):
        code, _, err = await run_cli(monkeypatch, targets, *command)
        assert code == 1 and "NOT_FOUND" in err  # nothing was written


async def test_a_fixed_file_applies(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(
        tmp_path,
        "erin.yaml",
        ERIN_WITH_A_BAD_NUMBER.replace("555-1234", "+15005550123").replace("{key}", "e" * 32),
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config), "--dry-run")
    assert code == 0 and err == "", err
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config))
    assert code == 0 and err == "", err
    assert "create contact method erin-sms" in out and "create service erin-api" in out


class _Racing:
    """The real incidents stub, except that just before apply's real CreateService
    someone else creates the same service (a concurrent edit validation cannot see)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def CreateService(self, request: Any, **kwargs: Any) -> Any:
        if not request.validate_only:
            other = incidents_pb2.Service()
            other.CopyFrom(request.service)
            other.name = "made meanwhile"
            await self._stub.CreateService(incidents_pb2.CreateServiceRequest(service=other))
        return await self._stub.CreateService(request, **kwargs)


async def test_a_write_that_fails_names_what_was_and_was_not_applied(
    redis: RedisClient, tmp_path: Path
) -> None:
    config = _write(
        tmp_path,
        "erin.yaml",
        ERIN_WITH_A_BAD_NUMBER.replace("555-1234", "+15005550123").replace("{key}", "e" * 32),
    )
    async with full_stack(redis) as stack:
        client = client_for(**_targets(stack))
        client.incidents = _Racing(client.incidents)  # type: ignore[assignment]
        try:
            with pytest.raises(ApplyError) as failed:
                await Applier(client, dry_run=False).apply(load_config_file(config))
        finally:
            await client.close()
    error = failed.value
    assert [str(c) for c in error.applied] == [
        "create user erin",
        "create contact method erin-sms",
        "create notification rules erin",
        "create schedule erin-week",
        "create escalation policy erin-policy",
    ]
    assert [str(c) for c in error.not_applied] == ["create service erin-api"]
    assert error.problems == [
        f"{config}:18: services[0]: create service erin-api refused: "
        "ALREADY_EXISTS: service 'erin-api' already exists"
    ]


async def test_the_cli_names_what_was_applied_when_a_write_fails(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two services with one integration key: each passes validation alone, so the file
    itself must refuse them (and a contact method id used twice), before anything runs."""
    config = _write(
        tmp_path,
        "twice.yaml",
        "users:\n"
        "  - {id: erin, name: E, contact_methods: [{id: cm, type: sms, address: '+15005550123'}]}\n"
        "  - {id: finn, name: F, contact_methods: [{id: cm, type: sms, address: '+15005550124'}]}\n"
        "escalation_policies:\n"
        "  - {id: p, levels: [{delay: 5m, targets: [{user: erin}]}]}\n"
        "services:\n"
        f"  - {{id: a, escalation_policy: p, integration_key: {'a' * 32}}}\n"
        f"  - {{id: b, escalation_policy: p, integration_key: {'a' * 32}}}\n",
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config))
    assert code == 2 and out == ""
    assert (
        f"{config}:3: users[1].contact_methods[0].id: contact method id 'cm' is used twice" in err
    )
    assert f"{config}:8: services[1].integration_key: integration key '{'a' * 32}'" in err


async def test_rules_the_file_does_not_mention_are_kept(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert (await run_cli(monkeypatch, targets, "apply", "-f", str(EXAMPLE)))[0] == 0
    alice_only = _write(
        tmp_path,
        "alice.yaml",
        "users:\n"
        "  - id: alice\n"
        "    name: Alice Adams\n"
        "    time_zone: America/New_York\n"
        "    contact_methods:\n"
        '      - {id: alice-sms, type: sms, address: "+15005550006"}\n'
        '      - {id: alice-voice, type: voice, address: "+15005550006"}\n',
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(alice_only))
    assert code == 0 and out.startswith("no changes"), out + err
    code, out, _ = await run_cli(monkeypatch, targets, "user", "alice", "--json")
    assert len(as_json(out)["rules"]) == 3


UNREACHABLE = """\
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
  - id: erin
    name: Erin
schedules:
  - id: nights
    time_zone: UTC
    layers:
      - {name: weekly, start: 2026-11-02T09:00, rotation: {length: 1w}, users: [dave, erin]}
escalation_policies:
  - id: mixed
    levels:
      - {delay: 5m, targets: [{schedule: nights}]}
      - {delay: 5m, targets: [{user: alice}]}
  - id: hopeless
    levels:
      - {delay: 5m, targets: [{user: erin}, {schedule: nights}]}
services:
  - {id: fine-api, escalation_policy: mixed}
  - {id: lost-api, escalation_policy: hopeless}
"""


async def test_apply_warns_about_whoever_cannot_be_reached(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(tmp_path, "unreachable.yaml", UNREACHABLE)
    expected = [
        f"{config}:8: warning: users[1]: dave cannot be paged: has no notification rule",
        f"{config}:12: warning: users[2]: erin cannot be paged: has no contact method",
        f"{config}:15: warning: schedules[0]: nobody on nights can be paged (dave, erin)",
        f"{config}:22: warning: escalation_policies[0].levels[0]: no target can be paged"
        " (nights): the level moves on to the next at once",
        f"{config}:26: warning: escalation_policies[1].levels[0]: no target can be paged"
        " (erin, nights): the level moves on to the next at once",
        f"{config}:29: warning: services[1]: no level of policy hopeless can page anyone:"
        " incidents on lost-api would page nobody",
    ]
    for dry_run in (("--dry-run",), ()):
        code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config), *dry_run)
        assert code == 0, err
        assert err.splitlines() == expected
        assert "create service lost-api" in out  # warnings, not errors
    code, out, _ = await run_cli(monkeypatch, targets, "apply", "-f", str(config), "--json")
    assert as_json(out)["warnings"] == expected and as_json(out)["changes"] == []


async def test_what_only_the_servers_check_is_reported_at_its_line(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(
        tmp_path,
        "server-checks.yaml",
        "users:\n"
        "  - id: erin smith\n"
        "    name: Erin\n"
        "escalation_policies:\n"
        "  - id: fast\n"
        "    repeat: 99\n"
        "    levels:\n"
        "      - delay: 30s\n"
        "        targets: [{user: erin smith}]\n",
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config), "--dry-run")
    assert code == 1 and out == ""
    assert f"{config}:2: users[0].id: " in err
    assert f"{config}:6: escalation_policies[0].repeat: must be between 0 and" in err
    assert f"{config}:8: escalation_policies[0].levels[0].delay: must be at least 1 minute" in err


CHANNEL_TARGETS = """\
users:
  - id: erin
    name: Erin
    contact_methods:
      - {id: erin-mail, type: email, address: erin@example.com}
    notification_rules:
      - {contact: erin-mail, after: 0m}
escalation_policies:
  - id: payments
    levels:
      - delay: 5m
        targets:
          - slack_channel: C024BE91L
          - teams_channel: https://example.webhook.office.com/webhookb2/abc
      - {delay: 5m, targets: [{user: erin}]}
"""


async def test_channel_targets_apply_and_export_back_unchanged(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(tmp_path, "channels.yaml", CHANNEL_TARGETS)
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config))
    assert code == 0, err
    exported = tmp_path / "exported.yaml"
    code, _, err = await run_cli(monkeypatch, targets, "export", "-o", str(exported))
    assert code == 0, err
    text = exported.read_text()
    assert "slack_channel: C024BE91L" in text and "teams_channel: https://example" in text
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(exported))
    assert code == 0, err
    assert out.startswith("no changes"), out


async def test_bad_channel_targets_and_an_unknown_contact_type_name_their_line(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = _write(
        tmp_path,
        "broken-channels.yaml",
        CHANNEL_TARGETS.replace("type: email", "type: pager"),
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(broken))
    assert code == 2 and out == ""
    assert f"{broken}:5: users[0].contact_methods[0].type: expected " in err
    assert "got 'pager'" in err

    wrong = _write(
        tmp_path,
        "wrong-channels.yaml",
        CHANNEL_TARGETS.replace("slack_channel: C024BE91L", "slack_channel: '#ops'").replace(
            "https://example", "http://example"
        ),
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(wrong), "--dry-run")
    assert code == 1 and out == "", err
    assert (
        f"{wrong}:13: escalation_policies[0].levels[0].targets[0].slack_channel: "
        "must be a Slack channel id" in err
    )
    assert f"{wrong}:14: escalation_policies[0].levels[0].targets[1].teams_channel: " in err
    assert "webhookb2" not in err  # the URL is a credential
    code, out, _ = await run_cli(
        monkeypatch, targets, "apply", "-f", str(_write(tmp_path, "ok.yaml", "{}\n"))
    )
    assert code == 0


HANDOFFS = """\
users:
  - id: erin
    name: Erin
    handoff_notices: [start, day_before]
  - id: finn
    name: Finn
schedules:
  - id: primary
    time_zone: UTC
    announce_slack_channel: C024BE91L
    layers:
      - name: daily
        start: 2026-11-27T09:00
        rotation: {length: 1d}
        users: [erin, finn]
escalation_policies:
  - id: payments
    levels:
      - {delay: 5m, targets: [{schedule: primary}]}
"""


async def test_handoff_notices_apply_export_and_a_users_own_choice_is_kept(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _write(tmp_path, "handoffs.yaml", HANDOFFS)
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config))
    assert code == 0, err
    exported = tmp_path / "exported.yaml"
    code, _, err = await run_cli(monkeypatch, targets, "export", "-o", str(exported))
    assert code == 0, err
    text = exported.read_text()
    assert "announce_slack_channel: C024BE91L" in text
    users = {u["id"]: u for u in yaml.safe_load(text)["users"]}
    assert users["erin"]["handoff_notices"] == ["start", "day_before"]
    assert "handoff_notices" not in users["finn"]
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(exported))
    assert code == 0, err
    assert out.startswith("no changes"), out
    # finn asks for himself; a file that does not mention his notices keeps them
    client = client_for(scheduling=targets["scheduling"])
    try:
        await client.scheduling.SetHandoffNotices(
            scheduling_pb2.SetHandoffNoticesRequest(user_id="finn", notices=["end"])
        )
        code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(config))
        assert code == 0 and out.startswith("no changes"), (out, err)
        finn = await client.scheduling.GetUser(scheduling_pb2.GetUserRequest(id="finn"))
        assert list(finn.user.handoff_notices) == ["end"]
    finally:
        await client.close()


async def test_bad_handoff_settings_name_their_line(
    targets: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = _write(
        tmp_path,
        "broken-handoffs.yaml",
        HANDOFFS.replace("[start, day_before]", "[start, lunch]").replace("C024BE91L", "'#ops'"),
    )
    code, out, err = await run_cli(monkeypatch, targets, "apply", "-f", str(broken))
    assert code == 2 and out == ""
    assert f"{broken}:4: users[0].handoff_notices[1]: expected one of start, end, day_before" in err
    assert f"{broken}:10: schedules[0].announce_slack_channel: expected a Slack channel id" in err
