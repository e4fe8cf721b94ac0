"""`/healthz` follows Redis refusing writes: with the embedded redis-server of `tocsin up`
at maxmemory (PING still answers, every write gets `OOM command not allowed`), every
service turns NOT_SERVING within seconds and `/healthz` answers 503; once memory is
freed (maxmemory raised), 200 again."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.e2e.stack import Stack
from tests.e2e.test_health_follows_redis import SERVICES, wait_for_healthz

pytestmark = pytest.mark.slow


def test_healthz_is_unhealthy_while_redis_refuses_writes_and_healthy_after(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    try:
        stack.wait_healthy()
        with redis.Redis.from_url(stack.redis_url()) as client:
            client.config_set("maxmemory", 1)
            try:
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    client.set("probe", "x")
                seconds, _ = wait_for_healthz(stack, 503, timeout_s=20, not_serving=SERVICES)
                assert seconds < 5, seconds
            finally:
                client.config_set("maxmemory", 0)
        seconds, _ = wait_for_healthz(stack, 200, timeout_s=20)
        assert seconds < 5, seconds
    finally:
        stack.stop()
