"""The router's copy of the webhooks (tocsin.webhooks.store.routing_webhooks): read at
most once per interval, not per event; a change made through the same store seen by the
next event; one made through another replica's store once the interval has passed; a
read that a change overtook is not kept. Standalone Redis and a 3-master Cluster."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from tocsin.runtime.redis import RedisClient
from tocsin.v1 import webhooks_pb2 as pb
from tocsin.webhooks import store as store_module
from tocsin.webhooks.store import ROUTING_READ_INTERVAL_S, WebhookStore


class Monotonic:
    """time.monotonic for the store module, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> Monotonic:
    clock = Monotonic()
    # the store module's `time` only: asyncio's own clock keeps running
    monkeypatch.setattr(store_module, "time", SimpleNamespace(monotonic=clock))
    return clock


def hook(hook_id: str) -> pb.Webhook:
    return pb.Webhook(id=hook_id, url=f"https://hooks.example.org/{hook_id}")


def counting_reads(store: WebhookStore) -> list[int]:
    """Counts the store's reads of the whole configuration."""
    reads = [0]
    read = store.webhooks

    async def counted() -> dict[str, pb.Webhook]:
        reads[0] += 1
        return await read()

    store.webhooks = counted  # type: ignore[method-assign]
    return reads


async def test_the_router_reads_the_webhooks_once_per_interval(
    any_redis: RedisClient, monotonic: Monotonic
) -> None:
    router, other_replica = WebhookStore(any_redis), WebhookStore(any_redis)
    reads = counting_reads(router)
    await other_replica.put_webhook(hook("a"))
    for _ in range(50):  # fifty events
        assert set(await router.routing_webhooks()) == {"a"}
    assert reads[0] == 1
    await other_replica.put_webhook(hook("b"))
    monotonic.now += ROUTING_READ_INTERVAL_S / 2
    assert set(await router.routing_webhooks()) == {"a"}  # another replica's change: later
    monotonic.now += ROUTING_READ_INTERVAL_S / 2
    assert set(await router.routing_webhooks()) == {"a", "b"}  # within the interval
    assert reads[0] == 2


async def test_a_change_through_the_same_store_is_routed_by_the_next_event(
    any_redis: RedisClient, monotonic: Monotonic
) -> None:
    store = WebhookStore(any_redis)
    assert await store.routing_webhooks() == {}
    await store.put_webhook(hook("a"))
    assert set(await store.routing_webhooks()) == {"a"}
    await store.put_webhook(pb.Webhook(id="a", url="https://hooks.example.org/moved"))
    assert (await store.routing_webhooks())["a"].url == "https://hooks.example.org/moved"
    assert await store.delete_webhook("a")
    assert await store.routing_webhooks() == {}


async def test_a_read_overtaken_by_a_change_is_not_kept(
    any_redis: RedisClient, monotonic: Monotonic
) -> None:
    store = WebhookStore(any_redis)
    read = store.webhooks
    release = asyncio.Event()
    reading = asyncio.Event()

    async def slow() -> dict[str, Any]:
        got = await read()  # the configuration before the change
        reading.set()
        await release.wait()
        return got

    store.webhooks = slow  # type: ignore[method-assign]
    routing = asyncio.create_task(store.routing_webhooks())
    await reading.wait()
    store.webhooks = read  # type: ignore[method-assign]
    await store.put_webhook(hook("a"))
    release.set()
    assert await routing == {}  # what it read, for the event that asked before the change
    assert set(await store.routing_webhooks()) == {"a"}  # not the overtaken copy
