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


def _connections(client: redis.Redis) -> tuple[int, int]:
    """Connections Redis has accepted so far, and those open now."""
    return (
        client.info("stats")["total_connections_received"],
        client.info("clients")["connected_clients"],
    )


def test_an_idle_stack_drops_no_connection_and_logs_no_warning(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    try:
        stack.wait_healthy()
        with redis.Redis.from_url(stack.redis_url()) as client:
            time.sleep(2)  # every consumer connected and blocking
            before = _connections(client)
            time.sleep(IDLE_S)  # idling is the behaviour under test, not a wait for a page
            after = _connections(client)
        # A pool may grow (a periodic loop's first run opens a connection it then keeps);
        # a dropped connection replaced by a new one is what must not happen.
        opened, kept = after[0] - before[0], after[1] - before[1]
        assert opened == kept, f"{opened - kept} connections dropped and remade while idle"
        assert stack.healthy()
    finally:
        output = stack.stop()
    loud = [line for line in output.splitlines() if " WARNING " in line or " ERROR " in line]
    assert loud == [], "\n".join(loud[:20])
