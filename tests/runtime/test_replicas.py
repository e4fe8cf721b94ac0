"""Calls spread over every replica of a service and follow scale-ups.

Real tocsin gRPC servers (the shared bootstrap, with its max connection age) listen on
distinct loopback addresses (127.0.0.2, 127.0.0.3, ...), and a real tocsin peer client
built from `TOCSIN_SCHEDULING_ADDR` calls them. For a DNS name, a small DNS server on
loopback answers for it, as a headless Kubernetes Service would, and gRPC's resolver is
pointed at it with a `dns://SERVER/NAME:PORT` target.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import IO, Any, cast

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cli_runner import run_cli
from tocsin.client.channel import DNS_REFRESH_MS
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import resolve_endpoints
from tocsin.client.targets import TargetError
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.config import Address, ConfigError, load_config
from tocsin.runtime.grpcserver import GrpcServer, start_grpc_server
from tocsin.runtime.service import peer_client
from tocsin.v1 import scheduling_pb2, scheduling_pb2_grpc

MAX_AGE_S = 1


class _Replica(scheduling_pb2_grpc.SchedulingServiceServicer):
    """Answers GetUser with its own name and counts the calls it got."""

    def __init__(self, name: str, calls: Counter[str]) -> None:
        self.name = name
        self.calls = calls

    async def GetUser(self, request: Any, context: Any) -> scheduling_pb2.GetUserResponse:
        self.calls[self.name] += 1
        return scheduling_pb2.GetUserResponse(user=scheduling_pb2.User(id=self.name))


Start = Callable[[str, int], Any]


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[Counter[str], Start]]:
    """(calls per replica, start(host, port) -> GrpcServer); servers stop at the end."""
    calls: Counter[str] = Counter()
    started: list[GrpcServer] = []
    config = load_config(
        {
            "TOCSIN_GRPC_MAX_CONNECTION_AGE": f"{MAX_AGE_S}s",
            "TOCSIN_GRPC_MAX_CONNECTION_AGE_GRACE": "1s",
        }
    )

    async def start(host: str, port: int) -> GrpcServer:
        server = await start_grpc_server(
            config,
            Address(host, port),
            lambda s: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(
                _Replica(host, calls),  # type: ignore[abstract]
                s,
            ),
            ["tocsin.v1.SchedulingService"],
        )
        started.append(server)
        return server

    yield calls, start
    for server in started:
        await server.stop(0)


def _client(address: str) -> TocsinClient:
    # A DNS name counts as beyond loopback (whatever the test's DNS server answers), so the
    # service credential goes over plaintext only with the operator's explicit consent.
    return peer_client(
        load_config({"TOCSIN_SCHEDULING_ADDR": address, "TOCSIN_ALLOW_INSECURE_TOKENS": "1"})
    )


async def _call(client: TocsinClient, times: int) -> None:
    for _ in range(times):
        await client.scheduling.GetUser(scheduling_pb2.GetUserRequest(id="u"), timeout=5)


# --- configuration -------------------------------------------------------------------


def test_several_addresses_become_one_round_robin_target() -> None:
    config = load_config(
        {
            "TOCSIN_INCIDENTS_ADDR": "10.0.0.7:50052, 10.0.0.8:50052",
            "TOCSIN_NOTIFICATION_ADDR": "[fd00::1]:50054,[fd00::2]:50054",
            "TOCSIN_ESCALATION_ADDR": "dns:///escalation:50053",
        }
    )
    assert config.grpc_targets["incidents"] == "ipv4:10.0.0.7:50052,10.0.0.8:50052"
    assert config.grpc_targets["notification"] == "ipv6:[fd00::1]:50054,[fd00::2]:50054"
    assert config.grpc_targets["escalation"] == "dns:///escalation:50053"
    assert config.grpc_targets["scheduling"] == "127.0.0.1:50051"
    assert config.grpc_addrs["incidents"] == Address("10.0.0.7", 50052)
    assert config.grpc_addrs["escalation"] == Address("escalation", 50053)
    assert config.grpc_listen_addr("scheduling") == Address("127.0.0.1", 50051)
    with pytest.raises(ConfigError, match="TOCSIN_LISTEN_ADDR must be set: TOCSIN_INCIDENTS"):
        config.grpc_listen_addr("incidents")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("incidents-a:50052,incidents-b:50052", "IP literals only"),
        ("10.0.0.7:50052,[fd00::1]:50052", "mixes IPv4 and IPv6"),
        ("10.0.0.7:50052,,10.0.0.8:50052", "empty address"),
        ("10.0.0.7:50052,10.0.0.8", "expected HOST:PORT"),
        ("dns://incidents:50052", "expected dns:///HOST:PORT"),
        ("ipv4:incidents:50052", "IP literals only"),
    ],
)
def test_bad_address_lists_name_the_variable(value: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"TOCSIN_INCIDENTS_ADDR=.*{reason}"):
        load_config({"TOCSIN_INCIDENTS_ADDR": value})
    with pytest.raises(TargetError, match=f"TOCSIN_INCIDENTS_ADDR: .*{reason}"):
        resolve_endpoints({"TOCSIN_INCIDENTS_ADDR": value, "TOCSIN_DATA_DIR": "/nonexistent"})


@pytest.mark.parametrize("variable", ["GRPC_MAX_CONNECTION_AGE", "GRPC_MAX_CONNECTION_AGE_GRACE"])
def test_bad_connection_age_names_the_variable(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"TOCSIN_{variable}"):
        load_config({f"TOCSIN_{variable}": "soon"})


def test_connection_age_defaults_to_a_minute_and_zero_turns_it_off() -> None:
    assert load_config({}).grpc_max_connection_age == timedelta(seconds=60)
    off = load_config({"TOCSIN_GRPC_MAX_CONNECTION_AGE": "0"})
    assert off.grpc_max_connection_age == timedelta(0)


# --- real servers --------------------------------------------------------------------


async def test_calls_split_over_a_list_of_replicas(
    replicas: tuple[Counter[str], Start],
) -> None:
    calls, start = replicas
    a = await start("127.0.0.2", 0)
    b = await start("127.0.0.3", 0)
    async with _client(f"127.0.0.2:{a.port},127.0.0.3:{b.port}") as client:
        await _call(client, 40)
    assert set(calls) == {"127.0.0.2", "127.0.0.3"}
    assert min(calls.values()) >= 10, calls


async def test_a_replica_gone_leaves_calls_to_the_others(
    replicas: tuple[Counter[str], Start],
) -> None:
    calls, start = replicas
    a = await start("127.0.0.2", 0)
    b = await start("127.0.0.3", 0)
    async with _client(f"127.0.0.2:{a.port},127.0.0.3:{b.port}") as client:
        await _call(client, 10)
        await b.stop(0)
        calls.clear()
        await _call(client, 20)
    assert calls == Counter({"127.0.0.2": 20})


class _Dns(asyncio.DatagramProtocol):
    """Answers every A query with `self.addresses` (TTL 0), anything else with none."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        end = 12
        while data[end]:
            end += data[end] + 1
        (qtype,) = struct.unpack(">H", data[end + 1 : end + 3])
        question = data[12 : end + 5]
        answers = self.addresses if qtype == 1 else []
        records = b"".join(
            b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + socket.inet_aton(ip) for ip in answers
        )
        header = data[:2] + struct.pack(">HHHHH", 0x8180, 1, len(answers), 0, 0)
        assert self.transport is not None
        self.transport.sendto(header + question + records, addr)


@pytest.mark.slow
async def test_a_replica_added_later_gets_calls_within_the_connection_age(
    replicas: tuple[Counter[str], Start],
) -> None:
    calls, start = replicas
    a = await start("127.0.0.2", 0)
    await start("127.0.0.3", a.port)
    loop = asyncio.get_running_loop()
    dns = _Dns(["127.0.0.2", "127.0.0.3"])
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    try:
        address = f"dns://127.0.0.1:{dns_port}/scheduling.tocsin.test:{a.port}"
        async with _client(address) as client:
            await _call(client, 20)
            assert set(calls) == {"127.0.0.2", "127.0.0.3"}
            await start("127.0.0.4", a.port)
            dns.addresses.append("127.0.0.4")
            added = time.monotonic()
            # Within the age (+10% jitter), one DNS refresh interval and some slack.
            deadline = added + MAX_AGE_S * 1.1 + DNS_REFRESH_MS / 1000 + 5
            while calls["127.0.0.4"] < 3 and time.monotonic() < deadline:
                await _call(client, 3)
                await asyncio.sleep(0.05)  # pace the calls; nothing here waits on a timer
            took = time.monotonic() - added
            assert calls["127.0.0.4"] >= 3, f"the new replica got no calls in {took:.1f}s"
            calls.clear()
            await _call(client, 30)
        assert set(calls) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}, calls
    finally:
        transport.close()


async def _until_only(
    client: TocsinClient, calls: Counter[str], replica: str, within_s: float = 10
) -> None:
    """Call until five calls in a row went to `replica` alone (the client has learnt which
    replicas serve; a call already on its way when it changed may go to the other), then
    clear the count. Fails after `within_s` real seconds."""
    deadline = time.monotonic() + within_s
    calls.clear()
    while not (calls[replica] >= 5 and set(calls) == {replica}):
        if set(calls) - {replica}:
            calls.clear()  # a call went elsewhere: count again from here
        assert time.monotonic() < deadline, f"calls still go elsewhere than {replica}: {calls}"
        await _call(client, 1)
    calls.clear()


async def test_calls_avoid_a_replica_that_is_not_serving(
    replicas: tuple[Counter[str], Start],
) -> None:
    calls, start = replicas
    a = await start("127.0.0.2", 0)
    b = await start("127.0.0.3", 0)
    async with _client(f"127.0.0.2:{a.port},127.0.0.3:{b.port}") as client:
        await _call(client, 10)
        await b.set_serving(False)  # stopping, or its workers are stuck
        await _until_only(client, calls, "127.0.0.2")  # it learns through Health/Watch
        await _call(client, 20)
        assert calls == Counter({"127.0.0.2": 20})
        await b.set_serving(True)
        await a.set_serving(False)
        await _until_only(client, calls, "127.0.0.3")
        await _call(client, 20)
        assert calls == Counter({"127.0.0.3": 20})


async def test_cli_names_a_malformed_address(monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = await run_cli(
        monkeypatch, {"incidents": "incidents-a:50052,incidents-b:50052"}, "incidents"
    )
    assert code == 2
    assert "TOCSIN_INCIDENTS_ADDR" in err and "IP literals only" in err
    assert "Traceback" not in err


# --- real processes ------------------------------------------------------------------


def _serve(address: str, redis_url: str) -> subprocess.Popen[bytes]:
    """`tocsin serve scheduling` as its own process, listening on `address`."""
    env = {
        **os.environ,
        "TOCSIN_REDIS_URL": redis_url,
        "TOCSIN_LISTEN_ADDR": address,
        "TOCSIN_INSTANCE": f"scheduling-{address}",
        "TOCSIN_GRPC_MAX_CONNECTION_AGE": f"{MAX_AGE_S}s",
        "TOCSIN_GRPC_MAX_CONNECTION_AGE_GRACE": "1s",
        "TOCSIN_SERVICE_TOKEN": process_service_token(),  # the test's client holds it
    }
    env.pop("TOCSIN_API_TOKEN", None)
    command = [sys.executable, "-m", "tocsin.cli.main", "serve", "scheduling"]
    log = tempfile.TemporaryFile()  # read back when it does not start
    process = subprocess.Popen(command, env=env, stderr=log)
    _STDERR[process.pid] = log
    return process


_STDERR: dict[int, IO[bytes]] = {}


def _stderr_tail(process: subprocess.Popen[bytes]) -> str:
    log = _STDERR.get(process.pid)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


async def _serving(address: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)  # polling a starting process, no timer involved
    raise AssertionError(
        f"scheduling on {address} did not start (exit {process.poll()}): {_stderr_tail(process)}"
    )


def _connected_to(host: str, port: int) -> bool:
    """This process has an established TCP connection to host:port (gRPC's sockets are
    IPv6 ones, with IPv4 addresses mapped)."""
    return any(
        c.raddr
        and c.raddr.ip in (host, f"::ffff:{host}")
        and c.raddr.port == port
        and c.status == "ESTABLISHED"
        for c in psutil.Process().net_connections(kind="tcp")
    )


@pytest.mark.slow
async def test_processes_killed_and_added_under_calls(redis_url: str) -> None:
    """kill -9 one of two replicas, add a third, kill -9 the first: not one call fails,
    so the one added later serves them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port = sock.getsockname()[1]
    processes = {ip: _serve(f"{ip}:{port}", redis_url) for ip in ("127.0.0.2", "127.0.0.3")}
    dns = _Dns(list(processes))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: dns, local_addr=("127.0.0.1", 0))
    failures: list[str] = []
    done = 0

    async def calls(client: TocsinClient, count: int) -> None:
        nonlocal done
        for _ in range(count):
            try:
                await client.scheduling.ListUsers(scheduling_pb2.ListUsersRequest(), timeout=5)
                done += 1
            except grpc.aio.AioRpcError as error:
                failures.append(error.code().name)

    try:
        for ip, process in processes.items():
            await _serving(f"{ip}:{port}", process)
        dns_port = transport.get_extra_info("sockname")[1]
        async with _client(f"dns://127.0.0.1:{dns_port}/scheduling.tocsin.test:{port}") as client:
            await calls(client, 20)
            processes["127.0.0.3"].kill()  # kill -9, as a crashed pod
            dns.addresses.remove("127.0.0.3")  # and its DNS record goes
            await calls(client, 20)
            processes["127.0.0.4"] = _serve(f"127.0.0.4:{port}", redis_url)
            await _serving(f"127.0.0.4:{port}", processes["127.0.0.4"])
            # _serving's own health channel to the new replica closes in the background:
            # until its connection is gone, a connection to it says nothing of the client.
            deadline = time.monotonic() + 10
            while _connected_to("127.0.0.4", port) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling the kernel's socket table
            assert not _connected_to("127.0.0.4", port), "the health check's channel stayed open"
            dns.addresses.append("127.0.0.4")
            deadline = time.monotonic() + MAX_AGE_S * 1.1 + DNS_REFRESH_MS / 1000 + 10
            found = False
            while not found and time.monotonic() < deadline:
                await calls(client, 1)
                await asyncio.sleep(0.05)  # pace the calls
                found = _connected_to("127.0.0.4", port)
            assert found, "the client never found the new replica"
            processes["127.0.0.2"].kill()
            dns.addresses.remove("127.0.0.2")
            await calls(client, 20)
        assert failures == []
        assert done >= 60
    finally:
        transport.close()
        for process in processes.values():
            process.kill()
            process.wait()
