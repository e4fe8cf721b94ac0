"""Every `tocsin` failure is one clear line on stderr and a non-zero exit, never a Python
traceback; a reader that closes the pipe early (`tocsin incidents --json | head -1`) is not
a failure at all."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli_runner import run_cli
from tests.escalation.stack import full_stack
from tests.incidents.harness import Served, create_payments, serve_incidents, trigger_request
from tocsin.cli.main import main
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient

NOWHERE = {name: "127.0.0.1:9" for name in ("scheduling", "incidents", "escalation")}
NOWHERE["notification"] = "127.0.0.1:7"  # the discard port 9 and the echo port 7: closed


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_a_missing_file_or_a_directory_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    code, out, err = await run_cli(monkeypatch, NOWHERE, "apply", "-f", str(missing))
    assert code == 2 and out == ""
    assert _one_line(err) == f"{missing}: cannot read: No such file or directory"
    code, out, err = await run_cli(monkeypatch, NOWHERE, "apply", "-f", str(tmp_path))
    assert code == 2 and _one_line(err) == f"{tmp_path}: cannot read: Is a directory"


async def test_an_unreachable_service_is_one_line_naming_where(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, err = await run_cli(monkeypatch, NOWHERE, "oncall", "primary")
    assert code == 1 and out == ""
    line = _one_line(err)
    assert line.startswith("error: UNAVAILABLE: cannot reach the scheduling service at 127.0.0.1:9")
    assert "tocsin up" in line
    code, _, err = await run_cli(monkeypatch, NOWHERE, "user", "alice")
    assert code == 1
    assert "cannot reach the scheduling service" in _one_line(err)


async def test_a_broken_endpoints_file_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "endpoints.json").write_text("[1,")
    monkeypatch.setenv("TOCSIN_DATA_DIR", str(tmp_path))
    for name in ("SCHEDULING", "INCIDENTS", "ESCALATION", "NOTIFICATION", "HTTP"):
        monkeypatch.delenv(f"TOCSIN_{name}_ADDR", raising=False)
    code, _, err = await run_cli(monkeypatch, {}, "incidents")
    assert code == 2
    assert "endpoints.json: not an endpoints file" in _one_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ("incidents", "--since", "99999999999w"),
        ("snooze", "1", "99999999999999w"),
        ("oncall", "primary", "--at", "9999-12-31T23:59:59-14:00"),
        ("incidents", "--since", "0001-01-01T00:00:00+05:00"),
    ],
)
async def test_an_out_of_range_argument_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    code, _, err = await run_cli(monkeypatch, NOWHERE, *argv)
    assert code == 2
    assert "Traceback" not in err
    assert err.splitlines()[-1].endswith(("is too long", "reaches back too far", "is out of range"))


async def test_export_to_a_missing_directory_is_one_line(
    redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with full_stack(redis) as stack:
        endpoints = stack.client.endpoints
        targets = {
            "scheduling": endpoints.scheduling,
            "incidents": endpoints.incidents,
            "notification": endpoints.notification,
            "escalation": stack.escalation_address,
        }
        code, out, err = await run_cli(monkeypatch, targets, "export", "-o", "/no/such/dir/x.yaml")
    assert code == 1 and out == ""
    assert _one_line(err) == (
        "tocsin export: cannot write /no/such/dir/x.yaml: No such file or directory"
    )


@pytest.fixture
async def served(redis: RedisClient) -> AsyncIterator[Served]:
    async with serve_incidents(redis, ManualClock()) as served:
        await create_payments(served.stub)
        for n in range(3):
            await served.stub.Trigger(trigger_request(dedup_key=f"k{n}"))
        yield served


async def test_a_closed_pipe_ends_quietly(served: Served) -> None:
    """The real command in its own process, its stdout a pipe whose reader has gone."""
    env = {**os.environ, "TOCSIN_INCIDENTS_ADDR": served.target}
    env.pop("TOCSIN_API_TOKEN", None)
    read, write = os.pipe()
    os.close(read)  # like `| head -1` that has already exited
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tocsin.cli.main",
            "incidents",
            "--json",
            stdout=write,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        os.close(write)
    assert stderr.decode() == ""
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("variable", "value"), [("TOCSIN_LOG_LEVEL", "verbose"), ("TOCSIN_INSTANCE", "a|b")]
)
async def test_tocsin_up_refuses_a_bad_setting_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    monkeypatch.setenv("TOCSIN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(variable, value)
    code, out, err = await run_cli(monkeypatch, {}, "up")
    assert code == 2 and out == ""
    assert _one_line(err).startswith(f"tocsin up: {variable}={value!r}: expected")
    assert not (tmp_path / "endpoints.json").exists()  # nothing started


async def test_a_token_for_a_remote_service_without_tls_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    remote = dict.fromkeys(("scheduling", "incidents", "escalation", "notification"), "10.9.9.9:1")
    for name in ("TOCSIN_TLS_CERT", "TOCSIN_TLS_KEY", "TOCSIN_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TOCSIN_ALLOW_INSECURE_TOKENS", raising=False)
    for name, target in remote.items():
        monkeypatch.setenv(f"TOCSIN_{name.upper()}_ADDR", target)
    monkeypatch.setenv("TOCSIN_API_TOKEN", "secret-value-123")
    err = io.StringIO()

    def call() -> object:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
            main(["incidents"])
        return exited.value.code

    assert await asyncio.to_thread(call) == 2
    line = _one_line(err.getvalue())
    assert "TOCSIN_ALLOW_INSECURE_TOKENS" in line and "secret-value-123" not in line
