"""`tocsin apply` and `tocsin export` against every real service: the example file
applies, a second apply changes nothing, a dry run changes nothing, an export applies back
unchanged, and a broken file is refused with file, line and field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli_runner import as_json, run_cli
from tests.escalation.stack import FullStack, full_stack
from tocsin.runtime.redis import RedisClient

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
