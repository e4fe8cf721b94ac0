"""The identity commands of `tocsin`, in-process against every real service.

Tested: after `tocsin login alice` the CLI acts as alice (the timeline says so), the token
file is private; API keys are printed once; `tocsin apply` leaves one audit entry per change
and a second, unchanged apply none; and no password or key reaches the logs.
"""

from __future__ import annotations

import io
import logging
import stat
from pathlib import Path

import pytest

from tests.cli_runner import as_json, run_cli
from tests.identity.stack import PASSWORDS, IdentityStack
from tocsin.v1 import incidents_pb2

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "oncall.yaml"


@pytest.fixture(autouse=True)
def _private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own ~/.config, and no credential from the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("TOCSIN_TOKEN", raising=False)
    return tmp_path / "config"


async def _tocsin(
    stack: IdentityStack, monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return await run_cli(monkeypatch, stack.addrs, *argv)


async def test_an_incident_acknowledged_from_the_cli_after_login_says_alice(
    stack: IdentityStack, monkeypatch: pytest.MonkeyPatch, _private_config: Path
) -> None:
    code, out, err = await _tocsin(
        stack, monkeypatch, "login", "alice", "--stdin", stdin=PASSWORDS["alice"] + "\n"
    )
    assert code == 0, err
    assert "Signed in as alice (responder)" in out
    tokens = _private_config / "tocsin" / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert PASSWORDS["alice"] not in tokens.read_text()
    code, out, _ = await _tocsin(stack, monkeypatch, "whoami", "--json")
    assert as_json(out)["user"] == "alice" and as_json(out)["role"] == "responder"

    opened = await stack.service.incidents.Trigger(
        incidents_pb2.TriggerRequest(service_id="payments-api", summary="disk full")
    )
    incident_id = str(opened.incident.number)
    code, out, err = await _tocsin(stack, monkeypatch, "ack", incident_id, "--json")
    assert code == 0, err
    assert as_json(out)["acknowledged_by"] == "alice (cli)"
    code, out, _ = await _tocsin(stack, monkeypatch, "incident", incident_id, "--json")
    timeline = as_json(out)["timeline"]
    acks = [e for e in timeline if "acknowledged" in str(e).lower() and "alice" in str(e)]
    assert acks, timeline

    # An observer's token in TOCSIN_TOKEN beats the stored login: refused, one line.
    monkeypatch.setenv("TOCSIN_TOKEN", stack.tokens["olga"])
    code, _, err = await _tocsin(stack, monkeypatch, "resolve", incident_id)
    assert code == 1
    assert "PERMISSION_DENIED" in err and "role observer may not call" in err
    monkeypatch.delenv("TOCSIN_TOKEN")

    code, out, _ = await _tocsin(stack, monkeypatch, "logout")
    assert code == 0
    assert "alice" not in tokens.read_text()


async def test_a_wrong_password_is_one_line_and_stores_nothing(
    stack: IdentityStack, monkeypatch: pytest.MonkeyPatch, _private_config: Path
) -> None:
    code, out, err = await _tocsin(
        stack, monkeypatch, "login", "alice", "--stdin", stdin="not the password\n"
    )
    assert code == 1 and out == ""
    assert "wrong user or password" in err and "not the password" not in err
    assert not (_private_config / "tocsin" / "tokens.json").exists()


async def test_api_keys_from_the_cli_are_shown_once_and_revoked_at_once(
    stack: IdentityStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOCSIN_TOKEN", stack.tokens["adam"])
    code, out, err = await _tocsin(
        stack,
        monkeypatch,
        *("apikey", "create", "--user", "bob", "--role", "observer", "--name", "grafana"),
        "--json",
    )
    assert code == 0, err
    created = as_json(out)
    key = created["key"]
    assert created["role"] == "observer" and created["user"] == "bob"
    code, out, _ = await _tocsin(stack, monkeypatch, "apikey", "list", "--json")
    assert [k["id"] for k in as_json(out)] == [created["id"]] and key not in out
    monkeypatch.setenv("TOCSIN_TOKEN", key)
    code, out, _ = await _tocsin(stack, monkeypatch, "whoami", "--json")
    assert as_json(out)["role"] == "observer" and as_json(out)["api_key"] == created["id"]
    monkeypatch.setenv("TOCSIN_TOKEN", stack.tokens["adam"])
    code, _, _ = await _tocsin(stack, monkeypatch, "apikey", "revoke", created["id"])
    assert code == 0
    monkeypatch.setenv("TOCSIN_TOKEN", key)
    code, _, err = await _tocsin(stack, monkeypatch, "whoami")
    assert code == 1 and "UNAUTHENTICATED" in err and key not in err


async def test_apply_leaves_one_audit_entry_per_change_and_none_when_unchanged(
    stack: IdentityStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TOCSIN_TOKEN", stack.tokens["adam"])
    code, out, _ = await _tocsin(stack, monkeypatch, "audit", "--json")
    before = as_json(out)
    code, out, err = await _tocsin(stack, monkeypatch, "apply", "-f", str(EXAMPLE), "--json")
    assert code == 0, err
    changes = as_json(out)["changes"]
    assert len(changes) >= 10
    code, out, _ = await _tocsin(stack, monkeypatch, "audit", "--json", "--limit", "1000")
    entries = as_json(out)[: len(as_json(out)) - len(before)]
    assert len(entries) == len(changes)
    assert {e["actor"] for e in entries} == {"adam"} and {e["via"] for e in entries} == {"cli"}
    by_object = {e["object"] for e in entries}
    assert {"user/dave", "schedule/primary", "escalation_policy/payments"} <= by_object
    assert "service/payments-api" in by_object and "contact_method/alice-voice" in by_object
    update = next(e for e in entries if e["object"] == "service/payments-api")
    assert update["before"] and update["after"] and update["before"] != update["after"]
    # Phone numbers are masked in the entries.
    assert "+15005550006" not in out and "0006" in out

    code, out, _ = await _tocsin(stack, monkeypatch, "apply", "-f", str(EXAMPLE))
    assert code == 0 and out.startswith("no changes")
    code, out, _ = await _tocsin(stack, monkeypatch, "audit", "--json", "--limit", "1000")
    assert len(as_json(out)) == len(before) + len(changes)
    code, out, _ = await _tocsin(stack, monkeypatch, "audit", "--user", "alice", "--json")
    assert as_json(out) == []
    assert stack.tokens["adam"] not in caplog.text
