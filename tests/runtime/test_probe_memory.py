"""The Redis probe sees Redis refusing writes at maxmemory (PING still answers then): on
one master of a Cluster of the test's own (so the session's shared servers keep their
limits), and its verdict follows INFO memory's policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tocsin.runtime.embedded_redis import start_cluster
from tocsin.runtime.loops import WorkerHealth, probe_redis, refuses_writes
from tocsin.runtime.redis import connect_redis


def test_only_a_full_redis_that_cannot_evict_refuses_writes() -> None:
    full = {"used_memory": 2_000_000, "maxmemory": 1_000_000}
    assert refuses_writes(full | {"maxmemory_policy": "noeviction"})
    assert refuses_writes(full | {"maxmemory_policy": "volatile-lru"})
    assert refuses_writes(full | {"maxmemory_policy": "allkeys-lru"}) is None
    assert refuses_writes(full | {"maxmemory": 0, "maxmemory_policy": "noeviction"}) is None
    assert refuses_writes({"used_memory": 10, "maxmemory": 1_000_000}) is None


async def wait_until(health: WorkerHealth, healthy: bool) -> None:
    async with asyncio.timeout(10):
        while health.healthy != healthy:  # noqa: ASYNC110 - polling the probe task
            await asyncio.sleep(0.02)


@pytest.mark.cluster
async def test_the_probe_sees_one_cluster_master_refusing_writes(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "cluster", masters=3, appendonly=False)
    try:
        client = await connect_redis(cluster.url)
        health = WorkerHealth()
        stop = asyncio.Event()
        probe = asyncio.create_task(probe_redis(client, health, stop, interval_s=0.05))
        try:
            await wait_until(health, True)
            with cluster.nodes[-1].client() as node:  # not the node PINGed by default
                node.config_set("maxmemory", 1)
                await wait_until(health, False)
                assert "maxmemory" in " ".join(health.problems())
                node.config_set("maxmemory", 0)
            await wait_until(health, True)
        finally:
            stop.set()
            await probe
            await client.aclose()
    finally:
        cluster.stop()
