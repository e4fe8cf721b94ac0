"""The metrics endpoint: its configuration, where it binds, its token, and the gRPC
server metrics every service gets from the shared bootstrap."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.metrics import sample
from tests.tls_certs import Pki, make_pki
from tocsin.client.channel import create_channel
from tocsin.runtime.config import DEFAULT_METRICS_PORTS, Address, ConfigError, load_config
from tocsin.runtime.errors import NotFound
from tocsin.runtime.grpcserver import GrpcServer, start_grpc_server
from tocsin.runtime.metrics import (
    render,
    serve_process_metrics,
    setup_metrics,
    start_metrics_server,
)
from tocsin.runtime.supervisor import Stack
from tocsin.v1 import scheduling_pb2, scheduling_pb2_grpc

GET_USER = "/tocsin.v1.SchedulingService/GetUser"


def test_every_process_serves_metrics_on_loopback_by_default() -> None:
    config = load_config({})
    for process, port in DEFAULT_METRICS_PORTS.items():
        assert config.metrics_listen_addr(process) == Address("127.0.0.1", port)


def test_metrics_can_be_turned_off_or_moved() -> None:
    assert load_config({"TOCSIN_METRICS_ADDR": "off"}).metrics_listen_addr("incidents") is None
    moved = load_config({"TOCSIN_METRICS_ADDR": "127.0.0.1:9999"})
    assert moved.metrics_listen_addr("incidents") == Address("127.0.0.1", 9999)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOCSIN_METRICS_ADDR": "9464"}, "TOCSIN_METRICS_ADDR='9464': expected HOST:PORT"),
        ({"TOCSIN_METRICS_TOKEN": "two words"}, "TOCSIN_METRICS_TOKEN must be printable"),
    ],
)
def test_bad_metrics_settings_stop_the_process_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env)


@pytest.mark.parametrize(
    "env",
    [
        {"TOCSIN_METRICS_ADDR": "0.0.0.0:9464"},
        # The API token does not open the metrics port: Prometheus gets a token of its own.
        {"TOCSIN_METRICS_ADDR": "0.0.0.0:9464", "TOCSIN_API_TOKEN": "s3cret"},
    ],
)
def test_metrics_beyond_loopback_need_their_own_token(env: dict[str, str]) -> None:
    config = load_config(env)
    with pytest.raises(ConfigError, match=r"TOCSIN_METRICS_ADDR=0\.0\.0\.0:9464.*METRICS_TOKEN"):
        config.metrics_listen_addr("incidents")


def test_a_metrics_token_allows_listening_beyond_loopback_over_tls_or_with_consent(
    pki: Pki,
) -> None:
    env = {"TOCSIN_METRICS_ADDR": "0.0.0.0:9464", "TOCSIN_METRICS_TOKEN": "m-s3cret"}
    with pytest.raises(ConfigError, match=r"plaintext.*TOCSIN_ALLOW_INSECURE_TOKENS=1"):
        load_config(env).metrics_listen_addr("gateway")
    for extra in ({"TOCSIN_ALLOW_INSECURE_TOKENS": "1"}, pki.env(mutual=False)):
        config = load_config({**env, **extra})
        assert config.metrics_listen_addr("gateway") == Address("0.0.0.0", 9464)
        assert "m-s3cret" not in repr(config) and "metrics_token" not in repr(config)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_with_a_certificate_metrics_are_served_over_https(pki: Pki) -> None:
    config = load_config({**pki.env(), "TOCSIN_METRICS_ADDR": "127.0.0.1:0"})
    server = await serve_process_metrics(config, "scheduling")
    assert server is not None
    try:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=pki.ca)) as http:
            reply = await http.get(f"https://localhost:{server.port}/metrics")
            assert reply.status_code == 200 and "process_cpu_seconds_total" in reply.text
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.HTTPError):  # no plaintext on the same port
                await http.get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        await server.stop()


def test_tocsin_up_gives_each_process_its_own_port_from_the_base() -> None:
    stack = Stack(load_config({"TOCSIN_METRICS_ADDR": "127.0.0.1:19460"}))
    assert stack.metrics_env("gateway") == {"TOCSIN_METRICS_ADDR": "127.0.0.1:19460"}
    assert stack.metrics_env("scheduling") == {"TOCSIN_METRICS_ADDR": "127.0.0.1:19461"}
    assert stack.metrics_env("notification") == {"TOCSIN_METRICS_ADDR": "127.0.0.1:19464"}
    default = Stack(load_config({}))
    assert default.metrics_env("escalation") == {"TOCSIN_METRICS_ADDR": "127.0.0.1:9463"}
    off = Stack(load_config({"TOCSIN_METRICS_ADDR": "off"}))
    assert off.metrics_env("incidents") == {"TOCSIN_METRICS_ADDR": "off"}


def _other_address() -> str | None:
    """An address of this host that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
        except OSError:
            return None
        host = str(probe.getsockname()[0])
    return None if host.startswith("127.") or host == "0.0.0.0" else host


async def test_the_endpoint_listens_on_loopback_only() -> None:
    server = await start_metrics_server(Address("127.0.0.1", 0))
    try:
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{server.port}/metrics")
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        other = _other_address()
        if other is not None:  # the same port on the host's own address answers nothing
            with pytest.raises(OSError), socket.create_connection((other, server.port), 2):
                pass
    finally:
        await server.stop()


async def test_a_token_is_needed_when_one_is_set() -> None:
    server = await start_metrics_server(Address("127.0.0.1", 0), token="scrape-me")
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await http.get(url, headers=wrong)).status_code == 401
            right = {"Authorization": "Bearer scrape-me"}
            assert (await http.get(url, headers=right)).status_code == 200
    finally:
        await server.stop()


class _Servicer(scheduling_pb2_grpc.SchedulingServiceServicer):
    async def GetUser(self, request, context):
        if request.id == "missing":
            raise NotFound("user 'missing' does not exist")
        return scheduling_pb2.GetUserResponse(user=scheduling_pb2.User(id=request.id))


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    setup_metrics("test")
    server = await start_grpc_server(
        load_config({}),
        Address("127.0.0.1", 0),
        lambda s: scheduling_pb2_grpc.add_SchedulingServiceServicer_to_server(
            _Servicer(),  # type: ignore[abstract]
            s,
        ),
        ["tocsin.v1.SchedulingService"],
    )
    yield server
    await server.stop(0)


def _calls(method: str, code: str) -> float:
    labels = {"method": method, "code": code}
    return sample(render().decode(), "tocsin_grpc_server_duration_seconds_count", labels)


async def test_grpc_calls_are_counted_and_timed_by_method_and_status_code(
    server: GrpcServer,
) -> None:
    ok, not_found = _calls(GET_USER, "OK"), _calls(GET_USER, "NOT_FOUND")
    health = _calls("/grpc.health.v1.Health/Check", "OK")
    async with create_channel(f"127.0.0.1:{server.port}") as channel:
        stub = scheduling_pb2_grpc.SchedulingServiceStub(channel)
        for _ in range(3):
            await stub.GetUser(scheduling_pb2.GetUserRequest(id="alice"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetUser(scheduling_pb2.GetUserRequest(id="missing"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        # A method nobody registered is not a label: callers choose its name.
        unknown = channel.unary_unary("/nope.Nope/Anything")
        with pytest.raises(grpc.aio.AioRpcError):
            await unknown(b"")
    assert _calls(GET_USER, "OK") == ok + 3
    assert _calls(GET_USER, "NOT_FOUND") == not_found + 1
    assert _calls("/grpc.health.v1.Health/Check", "OK") == health + 1
    text = render().decode()
    assert "/nope.Nope/Anything" not in text
    assert sample(text, "tocsin_grpc_server_duration_seconds_sum", {"method": GET_USER}) > 0
