"""Backpressure (issue 19): with the escalation consumer not running, the incident-events
backlog ages past TOCSIN_BACKLOG_MAX_AGE (1s here), and the Events API and Alertmanager
endpoints refuse alerts that would open a NEW incident with 503 and `Retry-After`, while
a repeat of an open incident's alert, its acknowledgement and its resolve are accepted;
once the backlog drains, new incidents are accepted again. The backlog's age and size are
what the OpenTelemetry gauges report.

Every service is real (scheduling, incidents, notification, the gateway) on real Redis.
The backlog's age is wall-clock time by design (stream ids carry Redis's clock), so the
test waits real seconds for it; no escalation is waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from tests.metrics import sample as metric_sample
from tests.notification.stack import PagingStack, paging_stack
from tocsin.incidents.backlog import SAMPLE_INTERVAL_S, Backlog, BacklogSample, latest_sample
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.events import (
    CONSUMER_GROUPS,
    EVENT_LANES,
    INCIDENT_SHARDS,
    EventConsumer,
    ensure_groups,
    lane_of,
    stream_key,
)
from tocsin.runtime.loops import WorkerHealth
from tocsin.runtime.metrics import render, setup_metrics
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2

MAX_AGE_S = 1


@pytest.fixture
async def stack(redis: RedisClient) -> AsyncIterator[PagingStack]:
    async with paging_stack(redis, {"TOCSIN_BACKLOG_MAX_AGE": f"{MAX_AGE_S}s"}) as paging:
        yield paging


def base_url(stack: PagingStack) -> str:
    url = stack.pager.sms_webhook_url
    assert url is not None
    return url.removesuffix("/twilio/sms")


def event(key: str, action: str, dedup_key: str) -> dict[str, object]:
    body: dict[str, object] = {"routing_key": key, "event_action": action, "dedup_key": dedup_key}
    if action == "trigger":
        body["payload"] = {"summary": dedup_key, "source": "db1", "severity": "critical"}
    return body


def alertmanager(name: str) -> dict[str, object]:
    return {
        "version": "4",
        "status": "firing",
        "alerts": [{"status": "firing", "labels": {"alertname": name}, "fingerprint": name}],
    }


def gauge(name: str) -> float:
    """A backlog gauge as Prometheus scrapes it from this process."""
    setup_metrics("test")
    return metric_sample(render().decode(), name)


async def nothing(_event: incidents_pb2.IncidentEvent) -> None:
    return None


async def test_new_incidents_are_refused_past_the_backlog_age_and_the_rest_accepted(
    stack: PagingStack,
) -> None:
    reply = await stack.client.incidents.GetService(
        incidents_pb2.GetServiceRequest(id="payments-api")
    )
    key = reply.service.integration_key
    async with httpx.AsyncClient(base_url=base_url(stack), timeout=10) as http:
        opened = await http.post("/v2/enqueue", json=event(key, "trigger", "disk full"))
        assert opened.status_code == 202, opened.text
        # Nobody consumes the escalation group: its backlog ages (real time, see above).
        await asyncio.sleep(MAX_AGE_S + SAMPLE_INTERVAL_S + 0.2)

        refused = await http.post("/v2/enqueue", json=event(key, "trigger", "cpu hot"))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert "TOCSIN_BACKLOG_MAX_AGE" in refused.json()["message"]
        refused = await http.post(f"/v1/alertmanager/{key}", json=alertmanager("web1 down"))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert "TOCSIN_BACKLOG_MAX_AGE" in refused.json()["message"]
        sample = latest_sample()
        assert sample.oldest_age_s > MAX_AGE_S, sample
        assert gauge("tocsin_incidents_backlog_age_seconds") > MAX_AGE_S  # what is scraped
        assert gauge("tocsin_incidents_backlog_entries") == latest_sample().entries

        for action in ("trigger", "acknowledge", "resolve"):  # the open incident's
            reply = await http.post("/v2/enqueue", json=event(key, action, "disk full"))
            assert reply.status_code == 202, (action, reply.text)

        drained = await EventConsumer(stack.redis, "escalation", nothing).drain_once()
        assert drained >= 3
        await stack.drain_events()  # notification's group too
        await asyncio.sleep(SAMPLE_INTERVAL_S + 0.1)  # the next sample
        reply = await http.post("/v2/enqueue", json=event(key, "trigger", "cpu hot"))
        assert reply.status_code == 202, reply.text
        assert latest_sample().oldest_age_s < MAX_AGE_S
        assert gauge("tocsin_incidents_backlog_age_seconds") < MAX_AGE_S


def test_a_bad_backlog_limit_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="TOCSIN_BACKLOG_MAX_AGE"):
        load_config({"TOCSIN_BACKLOG_MAX_AGE": "lots"})
    assert load_config({"TOCSIN_BACKLOG_MAX_AGE": "0"}).backlog_max_age.total_seconds() == 0


async def test_the_sample_sees_undelivered_and_unacknowledged_events(
    any_redis: RedisClient,
) -> None:
    redis = any_redis  # on the standalone server, then on the Redis Cluster
    await ensure_groups(redis, CONSUMER_GROUPS, "0")
    backlog = Backlog(redis, timedelta(seconds=60), interval_s=0)
    assert (await backlog.current()).oldest_age_s == 0
    assert await backlog.refusal() is None
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    await redis.xadd(stream_key(3), {"e": b""}, id=f"{an_hour_ago}-0")
    sample = await backlog.current()
    assert 3_590 < sample.oldest_age_s < 3_700, sample
    refusal = await backlog.refusal()
    assert refusal is not None and "TOCSIN_BACKLOG_MAX_AGE=60s" in str(refusal)
    # delivered to notification, not acknowledged: still the backlog, and counted
    await redis.xreadgroup("notification", "n1", {stream_key(3): ">"})
    await redis.xreadgroup("escalation", "e1", {stream_key(3): ">"})
    sample = await backlog.current()
    assert sample.entries == 2 and sample.oldest_age_s > 3_590, sample
    await redis.xack(stream_key(3), "notification", f"{an_hour_ago}-0")
    await redis.xack(stream_key(3), "escalation", f"{an_hour_ago}-0")
    assert await backlog.current() == BacklogSample(
        0, 0.0, (0.0,) * EVENT_LANES, (0,) * EVENT_LANES
    )
    assert await Backlog(redis, timedelta(0), interval_s=0).refusal() is None


def as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def two_services_in_different_lanes() -> tuple[str, str]:
    names = [f"service-{n}" for n in range(64)]
    stormy = next(name for name in names if lane_of(name) != 0)
    quiet = next(name for name in names if lane_of(name) not in (0, lane_of(stormy)))
    return stormy, quiet


async def test_a_storm_ages_only_its_own_lane(any_redis: RedisClient) -> None:
    """A service's new incidents are refused for the age of its own lane: another
    service's storm does not refuse them (the consumers take lanes round robin)."""
    redis = any_redis
    await ensure_groups(redis, CONSUMER_GROUPS, "0")
    stormy, quiet = two_services_in_different_lanes()
    backlog = Backlog(redis, timedelta(seconds=60), interval_s=0)
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    for shard in (3, 9):
        await redis.xadd(stream_key(shard, lane_of(stormy)), {"e": b""}, id=f"{an_hour_ago}-0")
    sample = await backlog.current()
    assert sample.oldest_age_s > 3_590 and sample.age_for(stormy) > 3_590, sample
    assert sample.age_for(quiet) == 0
    refusal = await backlog.refusal(stormy)
    assert refusal is not None and "TOCSIN_BACKLOG_MAX_AGE=60s" in str(refusal)
    assert await backlog.refusal(quiet) is None
    assert await backlog.refusal() is not None  # no service: every lane counts


async def test_a_backlog_that_cannot_be_measured_refuses_nothing(redis: RedisClient) -> None:
    await ensure_groups(redis, CONSUMER_GROUPS, "0")
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    await redis.xadd(stream_key(3), {"e": b""}, id=f"{an_hour_ago}-0")
    # one shard more than exist: its XINFO GROUPS fails (no such key), so the measurement
    backlog = Backlog(redis, timedelta(seconds=1), shards=INCIDENT_SHARDS + 1, interval_s=0)
    assert await backlog.refusal() is None


async def test_with_its_sampler_running_an_alert_never_waits_for_a_measurement(
    redis: RedisClient,
) -> None:
    """A measurement reads every lane of every shard; under load it took long enough to
    stall each new incident behind it once a second. With the process's sampler loop
    running, refusal answers from the latest sample while a measurement hangs."""
    await ensure_groups(redis, CONSUMER_GROUPS, "0")
    backlog = Backlog(redis, timedelta(seconds=60), interval_s=0.5)
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    await redis.xadd(stream_key(5), {"e": b""}, id=f"{an_hour_ago}-0")
    measure = backlog._sample_now
    hang = asyncio.Event()
    measured = asyncio.Event()

    async def slow_after_the_first() -> BacklogSample:
        if measured.is_set():
            await hang.wait()
        sample = await measure()
        measured.set()
        return sample

    backlog._sample_now = slow_after_the_first  # type: ignore[method-assign]
    stop = asyncio.Event()
    health = WorkerHealth()
    sampler = asyncio.create_task(backlog.run(stop, health))
    try:
        await asyncio.wait_for(measured.wait(), 30)
        async with asyncio.timeout(5):  # the old code awaited the hanging measurement
            refusal = await backlog.refusal()
        assert refusal is not None and "TOCSIN_BACKLOG_MAX_AGE=60s" in str(refusal)
        assert health.healthy
        # The measurement still hangs: once the sample is 3 intervals old it refuses
        # nothing (before, the last sample over a limit refused new incidents for good).
        deadline = time.monotonic() + 10
        while await backlog.refusal() is not None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # polling real time: the sample's age is monotonic
        assert await backlog.refusal() is None
    finally:
        stop.set()
        hang.set()
        await asyncio.wait_for(sampler, 30)


async def test_a_lane_with_too_many_waiting_events_refuses_its_new_incidents(
    any_redis: RedisClient,
) -> None:
    """An age limit does not bound a burst: 30,000 new incidents in 10 s were all taken
    before the oldest was a minute old, and paged minutes late. Past
    TOCSIN_BACKLOG_MAX_EVENTS events waiting in a service's lane (pending or not yet
    delivered, over every shard), its new incidents are refused; other lanes are not."""
    redis = any_redis  # on the standalone server, then on the Redis Cluster
    await ensure_groups(redis, CONSUMER_GROUPS, "0")
    stormy, quiet = two_services_in_different_lanes()
    backlog = Backlog(redis, timedelta(0), max_entries=40, interval_s=0)
    lane = lane_of(stormy)
    for shard in range(INCIDENT_SHARDS):
        for _ in range(3):  # 48 events in all, fresh: the age limit is off anyway
            await redis.xadd(stream_key(shard, lane), {"e": b""})
    sample = await backlog.current()
    assert sample.entries_for(stormy) == 48 and sample.entries_for(quiet) == 0, sample
    refusal = await backlog.refusal(stormy)
    assert refusal is not None and "TOCSIN_BACKLOG_MAX_EVENTS=40" in str(refusal)
    assert await backlog.refusal(quiet) is None
    # Delivered to escalation but not acknowledged: still waiting (escalation's pending);
    # notification has not even read them.
    for shard in range(INCIDENT_SHARDS):
        await redis.xreadgroup("escalation", "e1", {stream_key(shard, lane): ">"})
    assert (await backlog.current()).entries_for(stormy) == 48
    # Both groups done with all but a shard's: 3 wait, under the limit.
    for shard in range(1, INCIDENT_SHARDS):
        key = stream_key(shard, lane)
        ids = [as_text(entry[0]) for entry in await redis.xrange(key) or []]
        await redis.xreadgroup("notification", "n1", {key: ">"})
        await redis.xack(key, "escalation", *ids)
        await redis.xack(key, "notification", *ids)
    assert (await backlog.current()).entries_for(stormy) == 3
    assert await backlog.refusal(stormy) is None
    assert await Backlog(redis, timedelta(0), interval_s=0).refusal(stormy) is None


def test_a_bad_backlog_length_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="TOCSIN_BACKLOG_MAX_EVENTS"):
        load_config({"TOCSIN_BACKLOG_MAX_EVENTS": "many"})
    assert load_config({}).backlog_max_events == 3000
    assert load_config({"TOCSIN_BACKLOG_MAX_EVENTS": "0"}).backlog_max_events == 0
