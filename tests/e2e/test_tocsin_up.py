"""`tocsin up`: the whole stack from one command, healthy within 20 s, and gone after
SIGTERM, Redis included."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import Stack, alive, descendants

pytestmark = pytest.mark.slow


def test_up_prints_endpoints_turns_healthy_and_stops_cleanly(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    assert stack.process is not None
    seconds = stack.wait_healthy(timeout_s=20)
    endpoints = json.loads((tmp_path / "data" / "endpoints.json").read_text())
    assert endpoints["http"] == stack.env["TOCSIN_HTTP_ADDR"]
    assert endpoints["incidents"] == stack.env["TOCSIN_INCIDENTS_ADDR"]
    health = httpx.get(f"{stack.http}/healthz").json()
    assert health["status"] == "ok" and set(health["services"]) == {
        "scheduling",
        "incidents",
        "escalation",
        "notification",
    }
    children = descendants(stack.process.pid)
    assert len(children) >= 6  # four services, the gateway, redis-server
    started = time.monotonic()
    output = stack.stop()
    assert time.monotonic() - started < 10, output
    assert stack.process.returncode == 0, output
    assert not [pid for pid in children if alive(pid)], output
    assert not (tmp_path / "data" / "endpoints.json").exists()
    for name in ("scheduling", "incidents", "escalation", "notification", "gateway", "redis"):
        assert name in output
    assert (tmp_path / "data" / "redis").is_dir()  # the embedded Redis kept its AOF there
    assert seconds < 20


def test_healthz_names_a_service_that_is_down(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    assert stack.process is not None
    try:
        stack.wait_healthy()
        gateway_and_services = descendants(stack.process.pid)
        notification = [
            pid
            for pid in gateway_and_services
            if b"notification" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert notification
        import os
        import signal

        os.kill(notification[0], signal.SIGSTOP)  # hung, not dead: the supervisor leaves it
        try:
            reply = httpx.get(f"{stack.http}/healthz", timeout=5)
            assert reply.status_code == 503
            assert reply.json()["not_serving"] == ["notification"]
        finally:
            os.kill(notification[0], signal.SIGCONT)
    finally:
        stack.stop()
