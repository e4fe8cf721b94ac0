"""`/healthz` follows Redis and the workers: with the embedded redis-server of `tocsin up`
stopped (SIGSTOP: it hangs, as behind a partition, and is not dead, so nothing restarts
it), every service turns NOT_SERVING within seconds and `/healthz` answers 503; once
Redis answers again, 200."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import Stack, descendants

pytestmark = pytest.mark.slow

SERVICES = ["escalation", "history", "incidents", "notification", "scheduling"]


def wait_for_healthz(
    stack: Stack, status: int, timeout_s: float, not_serving: list[str] | None = None
) -> tuple[float, dict[str, object]]:
    """Seconds until `/healthz` answered `status` (naming `not_serving`), and that answer
    (polling processes)."""
    started = time.monotonic()
    body: dict[str, object] = {}
    while time.monotonic() - started < timeout_s:
        try:
            reply = httpx.get(f"{stack.http}/healthz", timeout=5)
            body = reply.json()
            if reply.status_code == status and body.get("not_serving") == not_serving:
                return time.monotonic() - started, body
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling real processes, not waiting for an escalation
    raise AssertionError(f"/healthz never answered {status} within {timeout_s}s: {body}")


def test_healthz_is_unhealthy_while_redis_does_not_answer_and_healthy_after(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    assert stack.process is not None
    try:
        stack.wait_healthy()
        redis = [
            pid
            for pid in descendants(stack.process.pid)
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(redis) == 1
        os.kill(redis[0], signal.SIGSTOP)
        try:
            # Every service: each one's PING to Redis goes unanswered for 5 s.
            seconds, _ = wait_for_healthz(stack, 503, timeout_s=20, not_serving=SERVICES)
            assert seconds < 12, seconds
        finally:
            os.kill(redis[0], signal.SIGCONT)
        seconds, _ = wait_for_healthz(stack, 200, timeout_s=20)
        assert seconds < 5, seconds
    finally:
        stack.stop()
