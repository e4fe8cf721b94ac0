"""Concurrent script calls sharing pipelines: each caller gets its own result or error."""

from __future__ import annotations

import asyncio

from redis.exceptions import ResponseError

from tocsin.runtime.batching import BatchedScript
from tocsin.runtime.redis import RedisClient, register_lua

ECHO = """
if ARGV[1] == 'bad' then
  return redis.error_reply('bad input')
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return ARGV[1]
"""


async def test_each_call_gets_its_own_result_or_error(any_redis: RedisClient) -> None:
    script = BatchedScript(any_redis, register_lua(any_redis, ECHO), max_batch=8)
    results = await asyncio.gather(
        *(script(["{t1}:echo"], [str(i) if i % 7 else "bad"]) for i in range(50)),
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        if i % 7:
            assert result == str(i).encode()
        else:
            assert isinstance(result, ResponseError) and "bad input" in str(result)
    stored = await any_redis.lrange("{t1}:echo", 0, -1)
    assert sorted(int(v) for v in stored) == [i for i in range(50) if i % 7]


async def test_calls_after_a_script_flush_load_it_again(any_redis: RedisClient) -> None:
    script = BatchedScript(any_redis, register_lua(any_redis, ECHO))
    assert await script(["{t1}:echo"], ["first"]) == b"first"
    await any_redis.script_flush()
    results = await asyncio.gather(*(script(["{t1}:echo"], [f"v{i}"]) for i in range(10)))
    assert results == [f"v{i}".encode() for i in range(10)]


async def test_a_burst_starts_one_sender(redis: RedisClient) -> None:
    """Calls made in one turn of the event loop are all taken by one sender: a second
    is started only once the first is on the wire (earlier, each of the first
    `max_senders` calls of a burst started a task that then found nothing to send)."""
    script = BatchedScript(redis, register_lua(redis, ECHO))
    calls = [asyncio.create_task(script(["{t1}:echo"], [f"v{i}"])) for i in range(40)]
    await asyncio.sleep(0)  # every call has queued itself; the sender has not run yet
    assert len(script._senders) == 1
    assert await asyncio.gather(*calls) == [f"v{i}".encode() for i in range(40)]
