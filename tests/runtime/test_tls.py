"""Transport security over real gRPC with real certificates (made in the test):
mutual TLS between services, refusals of plaintext and of strangers, and the rule that a
bearer token never crosses a non-loopback plaintext channel unless the operator says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.services import running
from tests.tls_certs import Pki, make_pki
from tocsin.client.channel import create_channel
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import Endpoints
from tocsin.client.tls import InsecureTokenError, TlsError, TlsSettings, tls_from_env
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import peer_client
from tocsin.scheduling.server import create_server
from tocsin.v1 import scheduling_pb2 as pb
from tocsin.v1 import scheduling_pb2_grpc

TOKEN = "tls-test-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def mutual_scheduling(redis: RedisClient, pki: Pki) -> AsyncIterator[tuple[str, dict]]:
    """A real scheduling service requiring client certificates (and the token)."""
    env = {**pki.env(mutual=True), "TOCSIN_API_TOKEN": TOKEN}
    async with running(create_server, redis, ManualClock(0), env) as (_, target):
        yield target, env


def _endpoints(target: str) -> Endpoints:
    return Endpoints(target, target, target, target, "127.0.0.1:9")


async def test_services_talk_over_mutual_tls(mutual_scheduling: tuple[str, dict]) -> None:
    target, server_env = mutual_scheduling
    # A peer service: the same configuration, its address pointing at the server.
    config = load_config({**server_env, "TOCSIN_SCHEDULING_ADDR": target})
    assert config.tls is not None and config.tls.mutual
    peers = peer_client(config)
    try:
        await peers.scheduling.CreateUser(
            pb.CreateUserRequest(user=pb.User(id="alice", name="Alice")), timeout=10
        )
        listed = await peers.scheduling.ListUsers(pb.ListUsersRequest(), timeout=10)
        assert [user.id for user in listed.users] == ["alice"]
    finally:
        await peers.close()


async def test_a_client_without_a_certificate_is_refused(
    mutual_scheduling: tuple[str, dict], pki: Pki
) -> None:
    target, _ = mutual_scheduling
    # Trusts the server, but presents no certificate of its own.
    ca_only = tls_from_env({"TOCSIN_TLS_CA": str(pki.ca)})
    async with create_channel(target, TOKEN, tls=ca_only) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduling_pb2_grpc.SchedulingServiceStub(channel).ListUsers(
                pb.ListUsersRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_from_another_ca_is_refused(
    mutual_scheduling: tuple[str, dict], pki: Pki
) -> None:
    target, _ = mutual_scheduling
    stranger = tls_from_env(
        {
            "TOCSIN_TLS_CERT": str(pki.stranger_cert),
            "TOCSIN_TLS_KEY": str(pki.stranger_key),
            "TOCSIN_TLS_CA": str(pki.ca),
        }
    )
    async with create_channel(target, TOKEN, tls=stranger) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduling_pb2_grpc.SchedulingServiceStub(channel).ListUsers(
                pb.ListUsersRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_to_a_tls_server_fails(mutual_scheduling: tuple[str, dict]) -> None:
    target, _ = mutual_scheduling
    async with create_channel(target, TOKEN) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduling_pb2_grpc.SchedulingServiceStub(channel).ListUsers(
                pb.ListUsersRequest(), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_cli_client_with_its_certificate_from_the_environment(
    mutual_scheduling: tuple[str, dict], pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, _ = mutual_scheduling
    for name, value in pki.env(client=True).items():
        monkeypatch.setenv(name, value)
    async with TocsinClient(_endpoints(target), TOKEN) as client:
        listed = await client.scheduling.ListUsers(pb.ListUsersRequest(), timeout=10)
    assert list(listed.users) == []


async def test_server_only_tls_without_a_ca(redis: RedisClient, pki: Pki) -> None:
    """Without TOCSIN_TLS_CA the server serves TLS but asks for no client certificate."""
    env = pki.env(mutual=False)
    async with running(create_server, redis, ManualClock(0), env) as (_, target):
        ca_only = tls_from_env({"TOCSIN_TLS_CA": str(pki.ca)})
        async with create_channel(target, tls=ca_only) as channel:
            reply = await scheduling_pb2_grpc.SchedulingServiceStub(channel).ListUsers(
                pb.ListUsersRequest(), timeout=10
            )
        assert list(reply.users) == []


@pytest.mark.parametrize(
    "target", ["10.1.2.3:50051", "scheduling:50051", "127.0.0.1:1,10.0.0.1:1", "dns:///db:1"]
)
def test_a_token_over_plaintext_beyond_loopback_is_refused(target: str) -> None:
    with pytest.raises(InsecureTokenError, match="TOCSIN_ALLOW_INSECURE_TOKENS") as refused:
        create_channel(target, TOKEN)
    assert TOKEN not in str(refused.value)


async def test_the_operator_may_allow_plaintext_tokens_and_loopback_needs_no_consent(
    pki: Pki,
) -> None:
    # Building a channel connects lazily: no peer is needed to see it accepted.
    channels = [
        create_channel("10.1.2.3:50051", TOKEN, allow_insecure_tokens=True),
        create_channel("127.0.0.1:50051", TOKEN),
        create_channel("localhost:50051", TOKEN),
        create_channel("10.1.2.3:50051"),  # no token: nothing to protect
        create_channel("10.1.2.3:50051", TOKEN, tls=tls_from_env(pki.env(client=True))),
    ]
    for channel in channels:
        await channel.close()
    peer_env = {"TOCSIN_SCHEDULING_ADDR": "10.1.2.3:50051", "TOCSIN_API_TOKEN": TOKEN}
    with pytest.raises(InsecureTokenError):
        peer_client(load_config(peer_env))
    await peer_client(load_config({**peer_env, "TOCSIN_ALLOW_INSECURE_TOKENS": "1"})).close()


def test_the_cli_refuses_a_token_over_plaintext_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TOCSIN_TLS_CERT", "TOCSIN_TLS_KEY", "TOCSIN_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TOCSIN_ALLOW_INSECURE_TOKENS", raising=False)
    with pytest.raises(InsecureTokenError):
        TocsinClient(_endpoints("10.1.2.3:50051"), TOKEN)
    monkeypatch.setenv("TOCSIN_ALLOW_INSECURE_TOKENS", "yes")
    with pytest.raises(TlsError, match="TOCSIN_ALLOW_INSECURE_TOKENS"):
        TocsinClient(_endpoints("10.1.2.3:50051"), TOKEN)


def test_settings_are_checked_at_start_naming_the_variable(pki: Pki, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, str], str]] = [
        ({"TOCSIN_TLS_CERT": str(pki.server_cert)}, "TOCSIN_TLS_KEY"),
        ({"TOCSIN_TLS_KEY": str(pki.server_key)}, "TOCSIN_TLS_CERT"),
        (
            {"TOCSIN_TLS_CERT": str(tmp_path / "missing.pem"), "TOCSIN_TLS_KEY": "k"},
            "TOCSIN_TLS_CERT",
        ),
        ({**pki.env(), "TOCSIN_TLS_CA": str(tmp_path / "nope.pem")}, "TOCSIN_TLS_CA"),
        (
            {"TOCSIN_TLS_CERT": str(pki.server_cert), "TOCSIN_TLS_KEY": str(pki.client_key)},
            "does not match",
        ),
        ({"TOCSIN_TLS_CA": str(pki.ca)}, "TOCSIN_TLS_CERT"),
        ({"TOCSIN_ALLOW_INSECURE_TOKENS": "true"}, "TOCSIN_ALLOW_INSECURE_TOKENS"),
    ]
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    cases.append(({**pki.env(), "TOCSIN_TLS_CA": str(tmp_path / "garbage.pem")}, "TOCSIN_TLS_CA"))
    for env, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(env)


def test_the_private_key_is_in_no_repr_or_error(pki: Pki) -> None:
    config = load_config(pki.env())
    key = pki.server_key.read_bytes()
    assert isinstance(config.tls, TlsSettings)
    assert config.tls.private_key == key
    body = key.decode().splitlines()[1]
    assert body not in repr(config) and body not in repr(config.tls)
    with pytest.raises(ConfigError) as mismatch:
        load_config(
            {"TOCSIN_TLS_CERT": str(pki.client_cert), "TOCSIN_TLS_KEY": str(pki.server_key)}
        )
    assert body not in str(mismatch.value)
