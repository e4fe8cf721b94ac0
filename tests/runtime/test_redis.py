from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from tocsin.runtime.embedded_redis import EmbeddedCluster, EmbeddedRedis
from tocsin.runtime.redis import RedisClient, connect_redis, create_redis, register_lua


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:6379", "expected scheme://"),
        ("http://localhost:6379", "unknown scheme 'http'"),
        ("redis://", "missing host"),
        ("redis://localhost:port", "invalid port"),
        ("redis://localhost:99999", "invalid port"),
        ("redis://localhost:6379/zero", "database must be a number"),
        ("redis://localhost:6379/0?socket_timeout=soon", "socket_timeout"),
        ("unix://", "needs a socket path"),
        ("redis+cluster://localhost", "needs an explicit port"),
        ("redis+cluster://localhost:7000,:7001", "missing host"),
        ("redis+cluster://localhost:7000/3", "only database 0"),
        ("rediss+cluster://localhost:x", "invalid port"),
    ],
)
def test_malformed_urls_are_rejected_naming_the_setting(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match="TOCSIN_REDIS_URL") as error:
        create_redis(url)
    assert reason in str(error.value)


def test_error_does_not_echo_the_password() -> None:
    with pytest.raises(ValueError) as error:
        create_redis("redis://user:hunter2@localhost:port")
    assert "hunter2" not in str(error.value)


def test_schemes_select_the_client_kind() -> None:
    assert isinstance(create_redis("redis://localhost:6379/2"), Redis)
    assert isinstance(create_redis("rediss://localhost:6380"), Redis)
    assert isinstance(create_redis("unix:///run/redis.sock"), Redis)
    cluster = create_redis("redis+cluster://a.example:7000,b.example:7001")
    assert isinstance(cluster, RedisCluster)
    seeds = {(n.host, n.port) for n in cluster.nodes_manager.startup_nodes.values()}
    assert seeds == {("a.example", 7000), ("b.example", 7001)}


async def test_standalone_url_connects_and_returns_bytes(redis_url: str) -> None:
    client = create_redis(redis_url)
    try:
        await client.set("tocsin:test", b"\x00\xff")
        assert await client.get("tocsin:test") == b"\x00\xff"
    finally:
        await client.aclose()


def test_standalone_connections_pack_commands_in_c() -> None:
    """Every standalone scheme keeps its connection kind (TCP, TLS, unix socket) and packs
    with hiredis, byte for byte as redis-py's own packer does."""
    kinds = {
        "redis://localhost:6379": Connection,
        "rediss://localhost:6380": SSLConnection,
        "unix:///run/redis.sock": UnixDomainSocketConnection,
    }
    args = ("EVALSHA", "ab" * 20, 1, "k:é", b"\x00\xff", 42, 1.5, 1e20, -7)
    for url, kind in kinds.items():
        client = create_redis(url)
        assert isinstance(client, Redis)
        connection_class = client.connection_pool.connection_class
        assert issubclass(connection_class, kind) and connection_class is not kind
        packed = b"".join(client.connection_pool.make_connection().pack_command(*args))
        plain = kind(path="/x") if kind is UnixDomainSocketConnection else kind()
        assert packed == b"".join(plain.pack_command(*args))


async def test_unencodable_arguments_are_a_data_error(redis_url: str) -> None:
    client = create_redis(redis_url)
    try:
        for value in (None, True):
            with pytest.raises(DataError):
                await client.set("tocsin:test", value)  # type: ignore[arg-type]
        await client.set("tocsin:test", "é")
        assert await client.get("tocsin:test") == "é".encode()
    finally:
        await client.aclose()


async def test_cluster_url_connects_to_every_master(redis_cluster_server: EmbeddedCluster) -> None:
    client = create_redis(redis_cluster_server.url)
    assert isinstance(client, RedisCluster)
    try:
        # Keys spread over all slots land on all three masters.
        for n in range(30):
            await client.set(f"tocsin:spread:{n}", n)
        assert len(client.get_primaries()) == 3
        assert [await client.get(f"tocsin:spread:{n}") for n in range(30)] == [
            str(n).encode() for n in range(30)
        ]
        sizes = [await client.dbsize(target_nodes=node) for node in client.get_primaries()]
        assert all(size > 0 for size in sizes)
    finally:
        await client.aclose()


async def test_connected_cluster_client_takes_concurrent_first_commands(
    redis_cluster_server: EmbeddedCluster,
) -> None:
    # A bare RedisCluster fails about half the time here (redis-py initialisation race).
    for attempt in range(5):
        client = await connect_redis(redis_cluster_server.url)
        try:
            keys = [f"tocsin:{{t{shard}}}:first-use" for shard in range(16)]
            await asyncio.gather(*(client.set(key, attempt) for key in keys))
            assert await client.get(keys[-1]) == str(attempt).encode()
        finally:
            await client.aclose()


async def test_lua_scripts_run_on_both_kinds(any_redis: RedisClient) -> None:
    script = register_lua(
        any_redis,
        "local function double(x) return 2 * tonumber(x) end",
        "redis.call('SET', KEYS[1], double(ARGV[1])) return redis.call('GET', KEYS[2])",
    )
    await any_redis.set("tocsin:{s}:b", b"seen")
    assert await script(keys=["tocsin:{s}:a", "tocsin:{s}:b"], args=[21]) == b"seen"
    assert await any_redis.get("tocsin:{s}:a") == b"42"
    await any_redis.script_flush()
    # NOSCRIPT after a flush is handled by reloading.
    assert await script(keys=["tocsin:{s}:a", "tocsin:{s}:b"], args=[1]) == b"seen"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_redis_persists_across_restart_and_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data")
    with server:
        first_pid = server.pid
        assert first_pid is not None
        port = server.port
        with server.client() as client:
            client.set("tocsin:kept", b"yes")
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
            assert client.config_get("protected-mode") == {"protected-mode": "yes"}
    assert server.pid is None
    assert not _pid_exists(first_pid)
    assert (tmp_path / "data" / "appendonly.aof").exists()

    restarted = EmbeddedRedis(tmp_path / "data", port=port)
    with restarted:
        assert restarted.url == f"redis://127.0.0.1:{port}"
        with restarted.client() as client:
            assert client.get("tocsin:kept") == b"yes"
        second_pid = restarted.pid
    assert second_pid is not None and not _pid_exists(second_pid)


def test_embedded_redis_survives_kill_9(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.start()
    try:
        with server.client() as client:
            client.set("tocsin:written", b"before the crash")
        killed = server.pid
        server.kill()
        assert killed is not None and not _pid_exists(killed)
        server.start()
        with server.client() as client:
            assert client.get("tocsin:written") == b"before the crash"
    finally:
        server.stop()


def test_relative_data_dir_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis(Path(".tocsin/redis")) as server:
        assert server.data_dir == tmp_path / ".tocsin" / "redis"
    assert (tmp_path / ".tocsin" / "redis" / "appendonly.aof").exists()


def test_two_servers_get_different_ports(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as a, EmbeddedRedis(tmp_path / "b") as b:
        assert a.port != b.port
        with a.client() as client:
            client.set("tocsin:where", b"a")
        with b.client() as client:
            assert client.get("tocsin:where") is None
