"""Paging throughput and the first page's latency, from one notification process.

The notification service, the incidents service and the fake Twilio each run as their
own process, as deployed, against the session's Redis; the Notify load comes from this
process. Users (one SMS contact method, one rule "SMS at once" each) are written straight
into Redis; incidents are triggered through the incidents service, whose events the
notification service mirrors before the load starts. Rate limits are off
(TOCSIN_TWILIO_SENDS_PER_SECOND=0), as for any load test against the fake.

- throughput: Notify as fast as 64 callers go; SMS per second at the fake, from the first
  to the last request it received;
- latency: Notify at a steady 100 per second, open loop; each page's latency runs from
  just before its Notify call to the fake's arrival time of its SMS (both CLOCK_MONOTONIC
  on one machine), recorded in an HDR histogram.

Run with `.venv/bin/pytest tests/benchmarks/test_notification_bench.py -s` to see the
figures (also in the benchmark JSON's extra_info).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hdrh.histogram import HdrHistogram
from pytest_benchmark.fixture import BenchmarkFixture

from tests.e2e.stack import free_port
from tocsin.client.channel import create_channel
from tocsin.notification import domain
from tocsin.notification.contacts import ContactStore
from tocsin.notification.store import PagingStore
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.clock import SystemClock
from tocsin.runtime.redis import RedisClient, connect_redis
from tocsin.v1 import (
    incidents_pb2,
    incidents_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
)

ACCOUNT_SID = "AC" + "5e" * 16
AUTH_TOKEN = "bench-token"
FROM = "+15005550006"
USERS = 40
THROUGHPUT_INCIDENTS = 100  # x USERS = 4000 pages
LATENCY_PAGES = 1000
LATENCY_RATE = 100
CONCURRENCY = 64


def _number(user: int) -> str:
    return f"+1500556{user:04d}"


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, *args], env=os.environ | env, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _wait_serving(target: str, service: str) -> None:
    async with create_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            with contextlib.suppress(Exception):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{service} at {target} never became SERVING")


@dataclass
class Deployment:
    fake_url: str
    incidents: str
    notification: str
    notification_pid: int

    def notification_cpu_s(self) -> float:
        """CPU time (user + system) the notification process has used so far."""
        fields = Path(f"/proc/{self.notification_pid}/stat").read_text().rpartition(")")[2]
        user, system = fields.split()[11:13]
        return (int(user) + int(system)) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def deployment(redis_url: str) -> Iterator[Deployment]:
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    with _process(["-m", "tocsin.faketwilio", "--port", "0"], env) as fake:
        assert fake.stdout is not None
        fake_url = fake.stdout.readline().removeprefix("fake twilio listening on ").strip()
        incidents = f"127.0.0.1:{free_port()}"
        notification = f"127.0.0.1:{free_port()}"
        service_env = {
            **env,
            "TWILIO_FROM_NUMBER": FROM,
            "TOCSIN_TWILIO_BASE_URL": fake_url,
            "TOCSIN_REDIS_URL": redis_url,
            "TOCSIN_INCIDENTS_ADDR": incidents,
            "TOCSIN_NOTIFICATION_ADDR": notification,
            "TOCSIN_TWILIO_STATUS_CALLBACKS": "off",
            "TOCSIN_TWILIO_SENDS_PER_SECOND": "0",
            "TOCSIN_NUMBER_SEND_INTERVAL": "0",
            "TOCSIN_LOG_LEVEL": "WARNING",
            # The benchmark calls Notify as escalation would: with the service credential.
            "TOCSIN_SERVICE_TOKEN": process_service_token(),
        }
        serve = ["-m", "tocsin.cli.main", "serve"]
        with (
            _process([*serve, "incidents"], service_env),
            _process([*serve, "notification"], service_env) as notifier,
        ):
            yield Deployment(fake_url, incidents, notification, notifier.pid)


@contextlib.asynccontextmanager
async def _stubs(
    deployment: Deployment,
) -> AsyncIterator[
    tuple[incidents_pb2_grpc.IncidentServiceStub, notification_pb2_grpc.NotificationServiceStub]
]:
    await _wait_serving(deployment.incidents, "tocsin.v1.IncidentService")
    await _wait_serving(deployment.notification, "tocsin.v1.NotificationService")
    async with (
        create_channel(deployment.incidents, process_service_token()) as incidents,
        create_channel(deployment.notification, process_service_token()) as notification,
    ):
        yield (
            incidents_pb2_grpc.IncidentServiceStub(incidents),
            notification_pb2_grpc.NotificationServiceStub(notification),
        )


def _sms_at_once(
    method: notification_pb2.ContactMethod,
) -> Callable[[domain.Settings], domain.Settings]:
    rule = notification_pb2.NotificationRule(contact_method_id=method.id)
    return lambda settings: domain.with_rules(domain.with_contact_method(settings, method), [rule])


async def _seed_users(redis: RedisClient) -> None:
    contacts = ContactStore(redis, SystemClock())
    for user in range(USERS):
        user_id = f"u{user}"
        method = notification_pb2.ContactMethod(
            id=f"{user_id}-sms", user_id=user_id, type=domain.SMS, address=_number(user)
        )
        await contacts.change(user_id, _sms_at_once(method))


async def _open_incidents(
    redis: RedisClient, incidents: incidents_pb2_grpc.IncidentServiceStub, count: int, tag: str
) -> list[str]:
    """Trigger `count` incidents and wait until notification has mirrored them all."""
    with contextlib.suppress(Exception):
        await incidents.CreateService(
            incidents_pb2.CreateServiceRequest(
                service=incidents_pb2.Service(
                    id="payments-api", name="Payments API", escalation_policy_id="payments"
                )
            )
        )
    replies = await asyncio.gather(
        *(
            incidents.Trigger(
                incidents_pb2.TriggerRequest(
                    service_id="payments-api", summary=f"load {tag} {n}", dedup_key=f"{tag}{n}"
                )
            )
            for n in range(count)
        )
    )
    ids = [reply.incident.id for reply in replies]
    store = PagingStore(redis, SystemClock(), retention_ms=3_600_000)
    for _ in range(600):
        if all([await store.incident_status(i) is not None for i in ids[-5:]]):
            return ids
        await asyncio.sleep(0.05)
    raise AssertionError("notification never mirrored the incidents")


def _notify(incident_id: str, user: int) -> notification_pb2.NotifyRequest:
    return notification_pb2.NotifyRequest(
        incident_id=incident_id, user_id=f"u{user}", idempotency_key=f"{incident_id}/u{user}"
    )


async def _reset(fake_url: str) -> None:
    async with httpx.AsyncClient() as http:
        await http.post(f"{fake_url}/_fake/reset")


async def _wait_for_sms(fake_url: str, count: int) -> list[dict[str, object]]:
    """Every SMS request the fake received, once `count` have arrived."""
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(1200):
            stats = (await http.get(f"{fake_url}/_fake/stats")).json()
            if stats["accepted"]["sms"] >= count:
                reply = await http.get(f"{fake_url}/_fake/requests", params={"kind": "sms"})
                return list(reply.json())
            await asyncio.sleep(0.05)
    raise AssertionError(f"only {stats['accepted']['sms']} of {count} SMS reached the fake")


@dataclass
class Throughput:
    pages_per_second: float
    cpu_ms_per_page: float
    """Notification process CPU per page: what one core's worth of it can carry."""


async def _throughput(deployment: Deployment, redis_url: str, incidents_n: int) -> Throughput:
    redis = await connect_redis(redis_url)
    try:
        await _seed_users(redis)
        async with _stubs(deployment) as (incidents, notification):
            ids = await _open_incidents(redis, incidents, incidents_n, "t")
            await _reset(deployment.fake_url)
            work = iter([(i, u) for i in ids for u in range(USERS)])

            async def caller() -> None:
                for incident_id, user in work:
                    reply = await notification.Notify(_notify(incident_id, user))
                    assert reply.started

            cpu_before = deployment.notification_cpu_s()
            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
            pages = await _wait_for_sms(deployment.fake_url, len(ids) * USERS)
            cpu_s = deployment.notification_cpu_s() - cpu_before
    finally:
        await redis.aclose()
    assert all(p["http_status"] == 201 for p in pages) and len(pages) == len(ids) * USERS
    arrivals = sorted(int(str(p["received_monotonic_ns"])) for p in pages)
    rate = (len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1e9)
    return Throughput(rate, 1000 * cpu_s / len(pages))


async def _latency(deployment: Deployment, redis_url: str, pages_n: int) -> HdrHistogram:
    redis = await connect_redis(redis_url)
    try:
        await _seed_users(redis)
        async with _stubs(deployment) as (incidents, notification):
            ids = await _open_incidents(redis, incidents, pages_n // USERS, "l")
            await _reset(deployment.fake_url)
            pairs = [(i, u) for i in ids for u in range(USERS)][:pages_n]
            started: dict[str, int] = {}
            calls = []
            begin = time.monotonic()
            for n, (incident_id, user) in enumerate(pairs):
                delay = begin + n / LATENCY_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                started[f"{incident_id}/{_number(user)}"] = time.monotonic_ns()
                calls.append(asyncio.ensure_future(notification.Notify(_notify(incident_id, user))))
            await asyncio.gather(*calls)
            pages = await _wait_for_sms(deployment.fake_url, len(pairs))
    finally:
        await redis.aclose()
    histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds
    by_key = {}
    for page in pages:  # "tocsin: [Payments API] load l 7 - reply ..." is incident ids[7]
        n = int(str(page["body"]).split("load l ")[1].split(" ")[0])
        by_key[f"{ids[n]}/{page['to']}"] = int(str(page["received_monotonic_ns"]))
    assert len(by_key) == len(pairs)
    for key, arrived in by_key.items():
        histogram.record_value(max(1, (arrived - started[key]) // 1000))
    return histogram


def test_sms_pages_per_second_from_one_notification_process(
    benchmark: BenchmarkFixture, deployment: Deployment, redis_url: str
) -> None:
    results: list[Throughput] = []
    # Disabled (the test suite's smoke run): a tenth of the work, the same checks.
    incidents_n = THROUGHPUT_INCIDENTS // 10 if benchmark.disabled else THROUGHPUT_INCIDENTS
    benchmark.pedantic(
        lambda: results.append(asyncio.run(_throughput(deployment, redis_url, incidents_n))),
        rounds=1,
        iterations=1,
    )
    result = results[0]
    benchmark.extra_info["sms_per_second"] = round(result.pages_per_second)
    benchmark.extra_info["notification_cpu_ms_per_page"] = round(result.cpu_ms_per_page, 2)
    print(
        f"\nNotify -> SMS at the fake: {result.pages_per_second:.0f} pages/s "
        f"({CONCURRENCY} callers); notification process CPU {result.cpu_ms_per_page:.2f} ms/page"
    )


def test_notify_to_twilio_latency_at_100_per_second(
    benchmark: BenchmarkFixture, deployment: Deployment, redis_url: str
) -> None:
    histograms: list[HdrHistogram] = []
    pages_n = LATENCY_PAGES // 10 if benchmark.disabled else LATENCY_PAGES
    benchmark.pedantic(
        lambda: histograms.append(asyncio.run(_latency(deployment, redis_url, pages_n))),
        rounds=1,
        iterations=1,
    )
    histogram = histograms[0]
    figures = {
        f"p{p}_ms": round(histogram.get_value_at_percentile(p) / 1000, 2) for p in (50, 90, 99)
    }
    figures["max_ms"] = round(histogram.get_max_value() / 1000, 2)
    benchmark.extra_info.update(figures)
    print(f"\nNotify -> Twilio request at {LATENCY_RATE}/s, {pages_n} pages: {figures}")
