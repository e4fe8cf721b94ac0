"""The ingest path's service and maintenance-window caches kept fresh ahead of the alerts
(service_store.py `refresh`, maintenance.py `refresh`, run twice a second by the incidents
process): an alert more than a second after the last one no longer waits for a Redis
read before trigger.lua, and another replica's change still shows within the cache's
second. A ManualClock for the caches' lifetimes; standalone and Cluster."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tocsin.incidents.maintenance import Maintenance
from tocsin.incidents.service_store import REFRESH_RECENT_MS, ServiceStore
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2, urgency_pb2


def counting_finds(store: ServiceStore) -> list[int]:
    finds = [0]
    find = store.find

    async def counted(**kwargs: str) -> incidents_pb2.Service | None:
        finds[0] += 1
        return await find(**kwargs)

    store.find = counted  # type: ignore[method-assign]
    return finds


async def test_a_refreshed_service_is_never_read_by_an_alert(any_redis: RedisClient) -> None:
    clock = ManualClock()
    here, other_replica = ServiceStore(any_redis, clock), ServiceStore(any_redis, clock)
    await other_replica.create(incidents_pb2.Service(id="payments-api", name="Payments"))
    finds = counting_finds(here)
    assert (await here.lookup(service_id="payments-api")).name == "Payments"  # type: ignore[union-attr]
    assert finds == [1]
    service = await other_replica.get("payments-api")
    service.name = "Payments API"
    await other_replica.update(service)
    for _ in range(10):  # five seconds of the refresh loop
        clock.advance(seconds=0.5)
        assert await here.refresh() == 1
    looked_up = await here.lookup(service_id="payments-api")
    assert looked_up is not None and looked_up.name == "Payments API"  # the other's change
    assert finds == [1]  # the first lookup's; none by the alert after the refreshes


async def test_one_refresh_reads_every_recent_service_by_id_or_key_in_two_round_trips(
    any_redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    here, other_replica = ServiceStore(any_redis, clock), ServiceStore(any_redis, clock)
    created = [
        await other_replica.create(incidents_pb2.Service(id=f"svc-{n}", name=f"Service {n}"))
        for n in range(20)
    ]
    for service in created[:10]:
        assert await here.lookup(service_id=service.id) is not None
    for service in created[10:]:
        assert await here.lookup(integration_key=service.integration_key) is not None
    gone = created[3]
    await other_replica.delete(gone.id)
    renamed = await other_replica.get("svc-15")
    renamed.name = "Renamed"
    await other_replica.update(renamed)
    commands: list[str] = []
    hmget = here.redis.hmget

    async def counted(*args: Any, **kwargs: Any) -> Any:
        commands.append("HMGET")
        return await hmget(*args, **kwargs)

    monkeypatch.setattr(here.redis, "hmget", counted)
    assert await here.refresh() == 20
    assert commands == ["HMGET", "HMGET"]
    finds = counting_finds(here)
    assert await here.lookup(service_id=gone.id) is None  # dropped: read by the alert
    assert finds == [1]
    by_key = await here.lookup(integration_key=renamed.integration_key)
    assert by_key is not None and by_key.name == "Renamed"
    assert await here.lookup(service_id="svc-9") is not None
    assert finds == [1]  # the others from the refresh


async def test_a_service_deleted_elsewhere_leaves_the_cache_at_the_refresh(
    any_redis: RedisClient,
) -> None:
    clock = ManualClock()
    here, other_replica = ServiceStore(any_redis, clock), ServiceStore(any_redis, clock)
    await other_replica.create(incidents_pb2.Service(id="payments-api"))
    assert await here.lookup(service_id="payments-api") is not None
    await other_replica.delete("payments-api")
    await here.refresh()
    assert await here.lookup(service_id="payments-api") is None


async def test_services_no_alert_came_for_lately_are_not_refreshed(
    any_redis: RedisClient,
) -> None:
    clock = ManualClock()
    store = ServiceStore(any_redis, clock)
    await store.create(incidents_pb2.Service(id="payments-api"))
    await store.lookup(service_id="payments-api")
    finds = counting_finds(store)
    clock.advance(seconds=REFRESH_RECENT_MS / 1000)
    assert await store.refresh() == 0
    assert finds == [0]
    await store.lookup(service_id="payments-api")  # its entry ran out: read by the alert
    assert finds == [1]


async def test_a_refreshed_window_cache_is_never_read_by_an_alert(
    any_redis: RedisClient,
) -> None:
    clock = ManualClock()
    here, other_replica = Maintenance(any_redis, clock), Maintenance(any_redis, clock)
    assert await here.active_for("payments-api") is None
    reads = [0]
    load = here._load

    async def counted() -> list[urgency_pb2.MaintenanceWindow]:
        reads[0] += 1
        return await load()

    here._load = counted  # type: ignore[method-assign]
    start = clock.now()
    window = urgency_pb2.MaintenanceWindow(
        id="deploy", service_ids=["payments-api"], time_zone="UTC"
    )
    window.start.FromDatetime(start)
    window.duration.FromTimedelta(timedelta(hours=1))
    await other_replica.create(window)
    for _ in range(4):
        clock.advance(seconds=0.5)
        await here.refresh()
    assert await here.active_for("payments-api") is not None  # the other's window
    assert reads == [4]  # the refreshes', none by the alert
