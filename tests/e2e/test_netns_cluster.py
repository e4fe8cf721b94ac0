"""Replicas as separate hosts (network namespaces) on a 3-master Redis Cluster: a real
partition, a kill -9 and a scale-up under a steady load, and every page counted.

Scheduling, incidents, the gateway, the fake Twilio and the Redis Cluster (the bundled
redis-server, announcing the bridge address) run in the root namespace; two escalation
and two notification replicas (`tocsin serve NAME`, one process each) run each in a
namespace of its own, reaching the rest over a bridge (tests/e2e/netns.py). Every
process runs with the defaults a deployment gets (no `?socket_timeout=` in the URL).

Under a steady load of new alerts (tests/e2e/test_chaos.py's `Load`, chaos.yaml's
`burst`: quinn at once, rosa a minute later, so each accepted alert owes two SMS):

(b) one escalation and one notification replica are partitioned (their link down, every
    packet dropped) for `PARTITION_S` real seconds, longer than Redis' default 15 s
    socket timeout; the other replicas take all their shards meanwhile, and once healed
    the partitioned replicas take shards again (issue 18 finding 2: a replica that lost
    Redis for 30 s never took shards again);
(a) the other escalation and notification replicas are killed -9, so the healed ones must
    take every shard and page every level;
(c) a third escalation and notification replica, each on a new host, join mid-run and
    take shards (the lease owners in Redis) within a minute.

Then every level of every accepted alert is paged exactly once, and the levels due while
the replicas were cut off are paged well before the partition heals. The figures printed
(the README quotes them): how late the latest page was, and the partition's cost: how late
the levels due while the replicas were cut off were paged.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from subprocess import STDOUT
from typing import IO

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from tests.e2e import netns
from tests.e2e.netns import GATEWAY_IP, SUBNET, Host, Network, start_bridge_cluster
from tests.e2e.pager import PageLog, minutes
from tests.e2e.stack import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    TOCSIN,
    UNLIMITED_SENDING,
    clock_env,
    fast_clock,
    free_port,
    wait_for,
)
from tests.e2e.test_chaos import Load, burst_pages, created_at
from tocsin.client.client import SyncTocsinClient
from tocsin.client.endpoints import resolve_endpoints
from tocsin.runtime.clock import ScaledClock

WHY_NOT = netns.unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(300),
    pytest.mark.skipif(WHY_NOT is not None, reason=f"network namespaces: {WHY_NOT}"),
]

HERE = Path(__file__).parent
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SPEED = 60.0
RATE_PER_S = 2.0
PARTITION_S = 45.0
"""Real seconds the partition lasts: past Redis' 15 s default socket timeout, and past
what a level may wait for another replica to take it over (`COST_LIMIT_S`), so a level
held by a cut-off replica until the heal fails the test (45 virtual minutes on this
clock: every lease of the cut-off replicas runs out many times over)."""
COST_LIMIT_S = 30.0
"""Real seconds a level due during the partition may be late at most: a cut-off
consumer's event is claimed after 10-15 s of Redis idle time, a call to a cut-off peer
ends at its 5 s deadline and is retried a second later."""
TOKEN = "netns-cluster-test-token"
GRPC_PORT = 7000


@dataclass
class Cluster:
    """Everything the test started; `env` is what every tocsin process gets."""

    workdir: Path
    network: Network
    clock: ScaledClock
    env: dict[str, str]
    fake_url: str
    http: str
    logs: list[IO[str]] = field(default_factory=list)
    root: list[subprocess.Popen[str]] = field(default_factory=list)
    replicas: dict[str, Host] = field(default_factory=dict)

    def log(self, name: str) -> IO[str]:
        log = (self.workdir / f"{name}.log").open("w")
        self.logs.append(log)
        return log

    def start_root(self, argv: list[str], name: str) -> None:
        """A process in the root namespace."""
        env = {**self.env, "TOCSIN_DATA_DIR": str(self.workdir / name)}
        log = self.log(name)
        self.root.append(subprocess.Popen(argv, env=env, stdout=log, stderr=STDOUT, text=True))

    def start_replica(self, service: str, instance: str) -> Host:
        """`tocsin serve SERVICE` as TOCSIN_INSTANCE=instance on a host of its own."""
        host = self.network.host(instance)
        env = {
            **self.env,
            "TOCSIN_INSTANCE": instance,
            "TOCSIN_LISTEN_ADDR": f"{host.address}:{GRPC_PORT}",
            "TOCSIN_DATA_DIR": str(self.workdir / instance),
        }
        host.popen([*TOCSIN, "serve", service], env, self.log(instance))
        self.replicas[instance] = host
        return host

    def kill(self, instance: str) -> None:
        """kill -9 the replica: no clean shutdown, its leases and pending entries stay."""
        for process in self.replicas[instance].processes:
            process.kill()
            process.wait(5)

    def stop(self) -> None:
        for process in self.root:
            if process.poll() is None:
                process.terminate()
        for process in self.root:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


def owners(client: RedisCluster, group: str) -> set[str]:
    """The instances holding `group`'s shard leases (an owner is "<group>-<instance>")."""
    key = f"tocsin:{{leases:{group}}}:owners"
    leases: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
    return {value.decode().split("|")[0].removeprefix(f"{group}-") for value in leases.values()}


def held_by(client: RedisCluster, group: str, instances: set[str]) -> bool:
    try:
        return owners(client, group) == instances
    except redis.RedisError:
        return False


def healthy(http: str) -> bool:
    try:
        return httpx.get(f"{http}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def base_env(redis_url: str, fake_url: str, http_port: int) -> dict[str, str]:
    """What every tocsin process gets; replicas add their instance and listen address.
    The hosts are created in this order: escalation a, b, notification a, b."""
    replicas = [f"{SUBNET}.{10 + k}:{GRPC_PORT}" for k in range(4)]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TOCSIN_", "TWILIO_"))},
        "TOCSIN_REDIS_URL": redis_url,
        "TOCSIN_API_TOKEN": TOKEN,
        # The replicas talk plaintext over the test's bridge: the operator's consent.
        "TOCSIN_ALLOW_INSECURE_TOKENS": "1",
        "TOCSIN_SCHEDULING_ADDR": f"{GATEWAY_IP}:{free_port()}",
        "TOCSIN_INCIDENTS_ADDR": f"{GATEWAY_IP}:{free_port()}",
        "TOCSIN_ESCALATION_ADDR": ",".join(replicas[:2]),
        "TOCSIN_NOTIFICATION_ADDR": ",".join(replicas[2:]),
        "TOCSIN_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "TOCSIN_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
        "TOCSIN_EVENTS_API_RATE": "0",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": FROM_NUMBER,
        "TOCSIN_TWILIO_BASE_URL": fake_url,
        **UNLIMITED_SENDING,
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    clock = fast_clock(START, SPEED)
    fake_port, http_port = free_port(), free_port()
    fake_url = f"http://{GATEWAY_IP}:{fake_port}"
    with Network() as network:
        redis_cluster = start_bridge_cluster(tmp_path / "redis")
        env = base_env(redis_cluster.url, fake_url, http_port) | clock_env(clock)
        cluster = Cluster(tmp_path, network, clock, env, fake_url, f"http://127.0.0.1:{http_port}")
        try:
            fake = ["fake-twilio", "--host", GATEWAY_IP, "--port", str(fake_port)]
            secrets = ["--account-sid", ACCOUNT_SID, "--auth-token", AUTH_TOKEN]
            cluster.start_root([*TOCSIN, *fake, *secrets], "fake-twilio")
            for name in ("scheduling", "incidents", "gateway"):
                cluster.start_root([*TOCSIN, "serve", name], name)
            for service, instance in ESC[:2] + NTF[:2]:
                cluster.start_replica(service, instance)
            wait_for(lambda: healthy(cluster.http), 90, "the gateway's /healthz", 0.2)
            config = str(HERE / "chaos.yaml")
            apply = subprocess.run(
                [*TOCSIN, "apply", "-f", config], env=env, capture_output=True, text=True
            )
            assert apply.returncode == 0, apply.stderr + apply.stdout
            yield cluster
        finally:
            network.close()  # every replica first: a cut-off one must not outlive the test
            cluster.stop()
            redis_cluster.stop()


ESC = [("escalation", "esc-a"), ("escalation", "esc-b"), ("escalation", "esc-c")]
NTF = [("notification", "ntf-a"), ("notification", "ntf-b"), ("notification", "ntf-c")]


def test_partitioned_killed_and_added_replicas_on_separate_hosts_page_every_level_once(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    log = PageLog(cluster.fake_url, cluster.clock)
    client = SyncTocsinClient(resolve_endpoints(cluster.env), token=TOKEN)
    leases = RedisCluster.from_url(cluster.env["TOCSIN_REDIS_URL"].replace("+cluster", ""))
    load = Load(f"{cluster.http}/v2/enqueue", RATE_PER_S)
    try:
        both = 60
        wait_for(lambda: held_by(leases, "escalation", {"esc-a", "esc-b"}), both, "esc split")
        wait_for(lambda: held_by(leases, "notification", {"ntf-a", "ntf-b"}), both, "ntf split")
        producer = load.run()
        try:
            time.sleep(3)  # steady state first
            # (b) a real partition of one escalation and one notification replica
            cut_at, cut = cluster.clock.now_ms(), time.monotonic()
            for instance in ("esc-a", "ntf-a"):
                cluster.replicas[instance].cut()
            try:
                wait_for(lambda: held_by(leases, "escalation", {"esc-b"}), 15, "esc-b alone")
                wait_for(lambda: held_by(leases, "notification", {"ntf-b"}), 15, "ntf-b alone")
                time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut)))
            finally:
                for instance in ("esc-a", "ntf-a"):
                    cluster.replicas[instance].heal()
            healed_at = cluster.clock.now_ms()
            wait_for(lambda: held_by(leases, "escalation", {"esc-a", "esc-b"}), 60, "esc back")
            wait_for(lambda: held_by(leases, "notification", {"ntf-a", "ntf-b"}), 60, "ntf back")
            rejoined_s = (cluster.clock.now_ms() - healed_at) / SPEED / 1000
            # (a) the replicas that were never cut off die: the healed ones must do it all
            killed_at = cluster.clock.now_ms()
            cluster.kill("esc-b")
            cluster.kill("ntf-b")
            wait_for(lambda: held_by(leases, "escalation", {"esc-a"}), 30, "esc-a alone")
            wait_for(lambda: held_by(leases, "notification", {"ntf-a"}), 30, "ntf-a alone")
            time.sleep(2)
            # (c) a third replica of each on a new host takes shards within a minute
            joined = time.monotonic()
            cluster.start_replica(*ESC[2])
            cluster.start_replica(*NTF[2])
            three = {"esc-a", "esc-c"}
            wait_for(lambda: held_by(leases, "escalation", three), 60, "esc-c's shards")
            wait_for(lambda: held_by(leases, "notification", {"ntf-a", "ntf-c"}), 60, "ntf-c")
            joined_s = time.monotonic() - joined
            time.sleep(2)
        finally:
            load.stop(producer)
        assert not load.refused, load.refused[:5]
        accepted = sorted(load.accepted)
        owed = {(number, level) for number in accepted for level in (1, 2)}

        def all_paged() -> bool:
            return owed <= {(number, level) for number, level, _ in burst_pages(log)}

        wait_for(all_paged, 60, "a page for every level of every accepted alert", 0.5)
        # redone work would page again within a lease (30 s virtual); the policy is
        # exhausted a minute after level 2, which pages nobody
        time.sleep(log.real_seconds_until(cluster.clock.now_ms() + minutes(2)))
        pages = burst_pages(log)
        created = created_at(client)
    finally:
        leases.close()
        client.close()
        log.close()
    per_level = Counter((number, level) for number, level, _ in pages)
    lost = sorted(owed - set(per_level))
    duplicates = sorted(key for key, count in per_level.items() if count > 1)
    unasked = sorted(set(per_level) - owed)
    late_ms: dict[str, int] = {"all": 0, "partition": 0, "kill": 0}
    for number, level, page in pages:
        due = created[number] + (level - 1) * minutes(1)
        assert page.at >= due - 1_000, f"alert {number} level {level} paged early"
        late = page.at - due
        late_ms["all"] = max(late_ms["all"], late)
        if cut_at <= due <= healed_at:
            late_ms["partition"] = max(late_ms["partition"], late)
        if killed_at <= due:
            late_ms["kill"] = max(late_ms["kill"], late)

    def both_clocks(ms: int) -> str:
        return f"{ms / 1000:.0f} s virtual / {ms / SPEED / 1000:.1f} s real"

    print(
        f"\nnetns cluster: {len(accepted)} incidents, {len(pages)} pages, {len(lost)} lost, "
        f"{len(duplicates)} duplicates, {load.retries} sender retries; latest page "
        f"{both_clocks(late_ms['all'])} after its due time; levels due during the "
        f"{PARTITION_S:.0f} s partition: latest {both_clocks(late_ms['partition'])}; "
        f"after the kill: latest {both_clocks(late_ms['kill'])}; the healed replicas held "
        f"shards again {rejoined_s:.1f} s (real) after the heal; the added ones "
        f"{joined_s:.1f} s after they started; {time.monotonic() - started:.0f} s"
    )
    assert set(created) == set(accepted), "every accepted alert has its own incident"
    assert not lost, f"lost: {lost[:10]}"
    assert not duplicates, f"sent twice: {duplicates[:10]}"
    assert not unasked, f"pages for alerts never accepted: {unasked[:10]}"
    # a level due while its replica was cut off is paged by another one, not held until
    # the heal (before peer calls were given back, one waited out most of the partition)
    assert late_ms["partition"] / SPEED / 1000 < COST_LIMIT_S, both_clocks(late_ms["partition"])
