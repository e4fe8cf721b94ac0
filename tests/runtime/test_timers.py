from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError
from redis.typing import EncodableT

from tests.redis_wire import recording_writes
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient, register_lua
from tocsin.runtime.timers import (
    TIMER_LUA,
    ClaimedTimer,
    RetryLater,
    TimerStore,
    TimerWorker,
    shard_of,
    shard_tag,
    timer_keys,
)

SHARDS = 8
LEASE_MS = 30_000
PAYLOAD = b"\x00\xffproto\x00traceparent"


class Recorder:
    """A handler that records what fired; it can be told to fail."""

    def __init__(self) -> None:
        self.fired: list[ClaimedTimer] = []
        self.failing = False
        self.event = asyncio.Event()

    async def __call__(self, timer: ClaimedTimer) -> None:
        self.fired.append(timer)
        self.event.set()
        if self.failing:
            raise RuntimeError("handler failed")

    def ids(self) -> list[str]:
        return [timer.timer_id for timer in self.fired]


def all_shards() -> range:
    return range(SHARDS)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(any_redis: RedisClient, clock: ManualClock) -> TimerStore:
    return TimerStore(any_redis, clock, shards=SHARDS)


def worker_for(
    store: TimerStore, clock: ManualClock, handler: Recorder, **options: int
) -> TimerWorker:
    return TimerWorker(store, clock, handler, all_shards, lease_ms=LEASE_MS, **options)


def test_shard_helpers_are_stable() -> None:
    assert shard_of("incident-42", 64) == shard_of("incident-42", 64)
    assert 0 <= shard_of("incident-42", 64) < 64
    assert len({shard_of(f"incident-{n}", 64) for n in range(1000)}) == 64
    assert shard_tag(17) == "{t17}"
    assert timer_keys(17)[:2] == ["tocsin:{t17}:timers", "tocsin:{t17}:inflight"]
    assert all(key.startswith("tocsin:{t17}:") for key in timer_keys(17))


async def test_due_timer_fires_once(store: TimerStore, clock: ManualClock) -> None:
    handler = Recorder()
    worker = worker_for(store, clock, handler)
    await store.arm("page-1", clock.now_ms(), PAYLOAD)

    assert await worker.run_once() == 1
    assert await worker.run_once() == 0
    clock.advance(hours=1)
    assert await worker.run_once() == 0

    [fired] = handler.fired
    assert (fired.timer_id, fired.payload, fired.due_ms) == (
        "page-1",
        PAYLOAD,
        clock.now_ms() - 3_600_000,
    )
    assert fired.shard == shard_of("page-1", SHARDS)
    assert await store.pending_count(fired.shard) == 0


async def test_timer_not_yet_due_does_not_fire(store: TimerStore, clock: ManualClock) -> None:
    handler = Recorder()
    worker = worker_for(store, clock, handler)
    due = clock.now_ms() + 60_000
    await store.arm("later", due, PAYLOAD)
    assert await store.next_due_ms(store.shard_for("later")) == due

    clock.advance(seconds=59.999)
    assert await worker.run_once() == 0
    clock.advance(seconds=0.001)
    assert await worker.run_once() == 1
    assert handler.ids() == ["later"]


async def test_claim_of_a_dead_worker_is_offered_again_with_a_higher_fence(
    store: TimerStore, clock: ManualClock
) -> None:
    due = clock.now_ms()
    await store.arm("page", due, PAYLOAD)
    shard = store.shard_for("page")
    [first] = await store.claim_due(shard, limit=10, lease_ms=LEASE_MS)
    assert first.lease_deadline_ms == clock.now_ms() + LEASE_MS
    assert await store.next_due_ms(shard) == first.lease_deadline_ms

    clock.advance(seconds=29)
    assert await store.claim_due(shard, limit=10, lease_ms=LEASE_MS) == []
    clock.advance(seconds=1)
    [second] = await store.claim_due(shard, limit=10, lease_ms=LEASE_MS)

    assert (second.timer_id, second.payload, second.due_ms) == ("page", PAYLOAD, due)
    assert second.fence > first.fence
    assert await store.complete(first) is False
    assert await store.pending_count(shard) == 1
    assert await store.complete(second) is True
    assert await store.pending_count(shard) == 0
    assert await store.complete(second) is False


async def test_reap_puts_expired_claims_back(store: TimerStore, clock: ManualClock) -> None:
    shard = 3
    for n in range(5):
        await store.arm(f"t{n}", clock.now_ms(), PAYLOAD, shard=shard)
    claimed = await store.claim_due(shard, limit=10, lease_ms=LEASE_MS)
    assert len(claimed) == 5
    assert await store.reap_expired(shard) == 0
    clock.advance(seconds=30)
    assert await store.reap_expired(shard) == 5
    assert [await store.complete(c) for c in claimed] == [False] * 5
    again = await store.claim_due(shard, limit=10, lease_ms=LEASE_MS)
    assert sorted(c.timer_id for c in again) == [f"t{n}" for n in range(5)]


async def test_failing_handler_is_retried_after_its_lease(
    store: TimerStore, clock: ManualClock
) -> None:
    handler = Recorder()
    worker = worker_for(store, clock, handler)
    await store.arm("flaky", clock.now_ms(), PAYLOAD)
    handler.failing = True
    assert await worker.run_once() == 1
    clock.advance(seconds=29)
    assert await worker.run_once() == 0

    handler.failing = False
    clock.advance(seconds=1)
    assert await worker.run_once() == 1
    clock.advance(minutes=5)
    assert await worker.run_once() == 0
    assert handler.ids() == ["flaky", "flaky"]
    assert handler.fired[1].fence > handler.fired[0].fence


async def test_a_handler_that_asks_to_retry_later_gets_its_timer_back_soon(
    store: TimerStore, clock: ManualClock
) -> None:
    """RetryLater (a peer still starting) gives the timer back due in its delay, not
    after the 30 s lease; the same payload, a higher fence."""
    fired: list[ClaimedTimer] = []

    async def not_yet(timer: ClaimedTimer) -> None:
        fired.append(timer)
        if len(fired) == 1:
            raise RetryLater(1_000)

    worker = TimerWorker(store, clock, not_yet, all_shards, lease_ms=LEASE_MS)
    await store.arm("hop", clock.now_ms(), PAYLOAD)
    assert await worker.run_once() == 1
    assert await store.next_due_ms(shard_of("hop", SHARDS)) == clock.now_ms() + 1_000
    clock.advance(seconds=0.999)
    assert await worker.run_once() == 0
    clock.advance(seconds=0.001)
    assert await worker.run_once() == 1
    assert [t.payload for t in fired] == [PAYLOAD, PAYLOAD]
    assert fired[1].fence > fired[0].fence
    clock.advance(minutes=5)
    assert await worker.run_once() == 0


async def test_retry_of_a_stale_claim_changes_nothing(
    store: TimerStore, clock: ManualClock
) -> None:
    await store.arm("t", clock.now_ms(), PAYLOAD)
    first = await store.claim("t", None, 1_000)
    assert first is not None
    clock.advance(seconds=2)  # its lease ended; another worker claims it
    (second,) = await store.claim_due(shard_of("t", SHARDS), 10, LEASE_MS)
    assert not await store.retry(first, clock.now_ms())
    assert await store.claim("t", None, LEASE_MS) is None  # still in flight for `second`
    assert await store.retry(second, clock.now_ms() + 5_000)
    assert not await store.complete(second)


async def test_cancelled_timer_never_fires(store: TimerStore, clock: ManualClock) -> None:
    handler = Recorder()
    worker = worker_for(store, clock, handler)
    await store.arm("waiting", clock.now_ms() + 1000, PAYLOAD)
    await store.arm("inflight", clock.now_ms(), PAYLOAD)
    [claimed] = await store.claim_due(store.shard_for("inflight"), 10, LEASE_MS)

    assert await store.cancel("waiting") is True
    assert await store.cancel("inflight") is True
    assert await store.cancel("waiting") is False
    assert await store.complete(claimed) is False

    clock.advance(hours=1)
    assert await worker.run_once() == 0
    assert handler.fired == []
    assert sum([await store.pending_count(s) for s in all_shards()]) == 0


async def test_rearm_replaces_the_earlier_arming(store: TimerStore, clock: ManualClock) -> None:
    handler = Recorder()
    worker = worker_for(store, clock, handler)
    start = clock.now_ms()
    await store.arm("step", start + 10_000, b"first")
    await store.arm("step", start + 20_000, b"second")

    clock.advance(seconds=10)
    assert await worker.run_once() == 0
    clock.advance(seconds=10)
    assert await worker.run_once() == 1
    assert [(t.payload, t.due_ms) for t in handler.fired] == [(b"second", start + 20_000)]


async def test_rearm_while_in_flight_makes_the_old_claim_stale(
    store: TimerStore, clock: ManualClock
) -> None:
    await store.arm("repeat", clock.now_ms(), b"one")
    old = await store.claim("repeat", None, LEASE_MS)
    assert old is not None
    await store.arm("repeat", clock.now_ms() + 60_000, b"two")
    assert await store.complete(old) is False

    clock.advance(minutes=1)
    [new] = await store.claim_due(store.shard_for("repeat"), 10, LEASE_MS)
    assert (new.payload, new.due_ms) == (b"two", clock.now_ms())
    assert new.fence > old.fence


async def test_explicit_shard_keeps_related_timers_together(
    store: TimerStore, clock: ManualClock
) -> None:
    await store.arm("incident-9/step-0", clock.now_ms(), PAYLOAD, shard=5)
    await store.arm("incident-9/notify", clock.now_ms(), PAYLOAD, shard=5)
    assert await store.pending_count(5) == 2
    assert await store.claim("incident-9/notify", None, LEASE_MS) is None  # default shard
    claimed = await store.claim("incident-9/notify", 5, LEASE_MS)
    assert claimed is not None and claimed.shard == 5
    with pytest.raises(ValueError, match="shard"):
        await store.arm("x", 0, PAYLOAD, shard=SHARDS)


async def test_claim_fast_path_takes_one_due_timer(store: TimerStore, clock: ManualClock) -> None:
    await store.arm("now", clock.now_ms(), PAYLOAD)
    await store.arm("soon", clock.now_ms() + 1, PAYLOAD)
    assert await store.claim("soon", None, LEASE_MS) is None
    claimed = await store.claim("now", None, LEASE_MS)
    assert claimed is not None and claimed.timer_id == "now"
    assert await store.claim("now", None, LEASE_MS) is None  # already in flight
    assert await store.claim("missing", None, LEASE_MS) is None
    assert await store.complete(claimed) is True


async def test_worker_fires_only_the_shards_it_is_given(
    store: TimerStore, clock: ManualClock
) -> None:
    handler = Recorder()
    worker = TimerWorker(store, clock, handler, lambda: {2})
    await store.arm("mine", clock.now_ms(), PAYLOAD, shard=2)
    await store.arm("theirs", clock.now_ms(), PAYLOAD, shard=6)
    assert await worker.run_once() == 1
    assert handler.ids() == ["mine"]
    assert await store.pending_count(6) == 1


async def test_two_workers_run_every_timer_exactly_once_and_never_together(
    store: TimerStore, clock: ManualClock
) -> None:
    running: set[str] = set()
    runs: Counter[str] = Counter()
    overlaps: list[str] = []

    async def handler(timer: ClaimedTimer) -> None:
        if timer.timer_id in running:
            overlaps.append(timer.timer_id)
        running.add(timer.timer_id)
        runs[timer.timer_id] += 1
        await asyncio.sleep(0)  # let the other worker interleave
        running.discard(timer.timer_id)

    ids = [f"timer-{n}" for n in range(300)]
    for n, timer_id in enumerate(ids):
        await store.arm(timer_id, clock.now_ms() + n % 7, PAYLOAD)
    clock.advance(seconds=1)
    workers = [
        TimerWorker(store, clock, handler, all_shards, lease_ms=LEASE_MS, batch=5) for _ in range(2)
    ]
    for _ in range(100):
        fired = await asyncio.gather(*(worker.run_once() for worker in workers))
        if sum(fired) == 0:
            break
    assert overlaps == []
    assert runs == Counter(ids)
    assert sum([await store.pending_count(s) for s in all_shards()]) == 0


async def test_lua_library_composes_state_change_with_timer(
    any_redis: RedisClient, store: TimerStore, clock: ManualClock
) -> None:
    incident_shard = shard_of("incident-7", SHARDS)
    tag = shard_tag(incident_shard)
    state_key = f"tocsin:{tag}:escalation:incident-7"
    advance = register_lua(
        any_redis,
        TIMER_LUA,
        """
        local tag, fence = ARGV[1], ARGV[2]
        if fence ~= '' and timer_complete(tag, ARGV[3], fence) == 0 then
          return 0
        end
        redis.call('SET', KEYS[1], ARGV[4])
        timer_arm(tag, ARGV[5], ARGV[6], ARGV[7])
        return 1
        """,
    )
    keys = [state_key, *timer_keys(incident_shard)]
    due = clock.now_ms() + 60_000
    step0: list[EncodableT] = [tag, "", "", "step-0", "incident-7/0", due, b"page step 0"]
    assert await advance(keys=keys, args=step0) == 1
    assert await any_redis.get(state_key) == b"step-0"

    clock.advance(minutes=1)
    [claimed] = await store.claim_due(incident_shard, 10, LEASE_MS)
    assert (claimed.timer_id, claimed.payload) == ("incident-7/0", b"page step 0")
    fence = claimed.fence
    step1: list[EncodableT] = [tag, fence, "incident-7/0", "step-1", "incident-7/1", due, b"1"]
    assert await advance(keys=keys, args=step1) == 1
    # A duplicate of the same claim fails the fence and changes nothing.
    assert await advance(keys=keys, args=[*step1[:3], "step-X", "x", 0, b""]) == 0
    assert await any_redis.get(state_key) == b"step-1"
    assert await store.complete(claimed) is False  # already completed inside the script
    assert await store.claim("incident-7/1", incident_shard, LEASE_MS) is not None


async def test_run_sleeps_until_due_and_can_be_woken(store: TimerStore, clock: ManualClock) -> None:
    handler = Recorder()
    worker = worker_for(store, clock, handler, poll_interval_ms=3_600_000)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await store.arm("in-5-min", clock.now_ms() + 300_000, PAYLOAD)
        worker.wake()  # learn about the new due time instead of sleeping for the hour
        clock.advance(minutes=5)
        await asyncio.wait_for(handler.event.wait(), 5)
        assert handler.ids() == ["in-5-min"]

        handler.event.clear()
        await store.arm("now", clock.now_ms(), PAYLOAD)
        worker.wake()
        await asyncio.wait_for(handler.event.wait(), 5)
        assert handler.ids() == ["in-5-min", "now"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_timers_survive_a_redis_crash_and_the_worker_recovers(
    redis: Redis, crash_redis: Callable[[], None]
) -> None:
    clock = ManualClock()
    store = TimerStore(redis, clock, shards=SHARDS)
    handler = Recorder()
    worker = worker_for(store, clock, handler)
    await store.arm("durable", clock.now_ms() + 60_000, PAYLOAD)
    crash_redis()
    clock.advance(minutes=1)
    assert await worker.run_once() == 1
    assert handler.ids() == ["durable"]


async def _claimed(store: TimerStore, clock: ManualClock, timer_id: str) -> ClaimedTimer:
    await store.arm(timer_id, clock.now_ms(), PAYLOAD)
    [claimed] = await store.claim_due(store.shard_for(timer_id), limit=10, lease_ms=LEASE_MS)
    return claimed


async def test_a_completion_goes_with_other_commands_in_one_round_trip(
    store: TimerStore, clock: ManualClock, any_redis: RedisClient
) -> None:
    """complete_with: the commands first, then the completion; one write (MULTI/EXEC) on
    one server; on a Cluster the commands, then the script."""
    assert await store.complete(await _claimed(store, clock, "hop:0"))  # the script loaded
    claimed = await _claimed(store, clock, "hop:1")
    shard = store.shard_for("hop:1")

    with recording_writes(lambda args: args[0].upper() in (b"XADD", b"EVALSHA")) as writes:
        done = await store.complete_with(
            claimed, lambda pipe: pipe.xadd("tocsin:{outbox}:s", {b"r": b"note"})
        )

    assert done and await store.pending_count(shard) == 0
    entries = await any_redis.xrange("tocsin:{outbox}:s")
    assert entries is not None and [f for _, f in entries] == [{b"r": b"note"}]
    sent = [[c[0].upper() for c in write] for write in writes]
    if isinstance(any_redis, RedisCluster):
        assert sent == [[b"XADD"], [b"EVALSHA"]]
    else:
        assert sent == [[b"MULTI", b"XADD", b"EVALSHA", b"EXEC"]]
    # a stale claim: the commands are written, the timer is not someone else's to complete
    assert not await store.complete_with(claimed, lambda pipe: pipe.set("tocsin:{outbox}:k", 1))


async def test_a_completion_refused_with_its_commands_leaves_the_timer_to_fire_again(
    clock: ManualClock, redis: Redis
) -> None:
    """A command Redis refuses before running any (here a wrong argument count) aborts
    the MULTI: nothing is written, the timer stays in flight and is offered again after
    its lease, as when the handler failed."""
    store = TimerStore(redis, clock, shards=SHARDS)
    claimed = await _claimed(store, clock, "hop:2")
    shard = store.shard_for("hop:2")

    with pytest.raises(ResponseError):
        await store.complete_with(claimed, lambda pipe: pipe.execute_command("XADD", "s"))

    assert await store.pending_count(shard) == 1
    clock.advance(seconds=LEASE_MS / 1000)
    [again] = await store.claim_due(shard, limit=10, lease_ms=LEASE_MS)
    assert again.timer_id == "hop:2" and again.fence > claimed.fence


async def test_a_completion_with_commands_after_redis_lost_its_scripts(
    clock: ManualClock, redis: Redis
) -> None:
    store = TimerStore(redis, clock, shards=SHARDS)
    claimed = await _claimed(store, clock, "hop:3")
    await redis.script_flush()

    assert await store.complete_with(claimed, lambda pipe: pipe.set("tocsin:{outbox}:k", 1))

    assert await store.pending_count(store.shard_for("hop:3")) == 0
    assert await redis.get("tocsin:{outbox}:k") == b"1"
