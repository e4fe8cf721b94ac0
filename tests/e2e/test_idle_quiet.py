"""An idle `tocsin up` drops no Redis connection and logs nothing at WARNING or above:
its blocking stream reads end with Redis' empty reply, never with the client's socket
timeout. Before the fix every idle 5 s XREADGROUP of the 32 consumer shards raced
redis-py's 5 s timeout and mostly lost: the connection was dropped and the read retried
on a new one, and a shard that lost nine times in a row logged `stream read failed:
Timeout reading from ...` (16 such warnings in 65 s of idling)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow

IDLE_S = 12
"""Two of the consumers' 5 s blocks and more."""


def test_an_idle_stack_drops_no_connection_and_logs_no_warning(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    try:
        stack.wait_healthy()
        with redis.Redis.from_url(stack.redis_url()) as client:
            time.sleep(2)  # every consumer connected and blocking
            before = client.info("stats")["total_connections_received"]
            time.sleep(IDLE_S)  # idling is the behaviour under test, not a wait for a page
            after = client.info("stats")["total_connections_received"]
        assert after == before, f"{after - before} connections made while idle"
        assert stack.healthy()
    finally:
        output = stack.stop()
    loud = [line for line in output.splitlines() if " WARNING " in line or " ERROR " in line]
    assert loud == [], "\n".join(loud[:20])
