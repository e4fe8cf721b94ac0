"""Redis clients for tocsin: one factory for standalone and Cluster, and Lua loading.

`TOCSIN_REDIS_URL` selects the server:

- `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS), `unix:///path/to.sock`
- `redis+cluster://[user:password@]host:port[,host:port...]` (and `rediss+cluster://`) for a
  Redis Cluster; the listed nodes are only seeds, the client discovers the rest.

Query parameters (e.g. `?socket_timeout=30`) are passed through to redis-py. Every client
returns raw bytes (`decode_responses=False`): payloads are protobuf.

Timeouts: a reply must come within `socket_timeout` (default `DEFAULT_SOCKET_TIMEOUT_S`,
15 s; redis-py's own default is 5 s), a connection within `socket_connect_timeout`
(default 5 s). A blocking command (XREADGROUP/XREAD BLOCK) must block for less than the
socket timeout, or an idle read races the timeout and the client drops the connection (on
a Cluster, connections other tasks are using): `blocking_ms` caps a block at a third of
the client's socket timeout, so `?socket_timeout=` can never re-create that race.

Scripts: `redis-py`'s `register_script` works on both clients. On a cluster the script
is routed by the slot of its KEYS, which must all share one hash tag; scripts are loaded
lazily per node (EVALSHA, then SCRIPT LOAD on NOSCRIPT).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any
from urllib.parse import SplitResult, urlsplit

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import DataError

RedisClient = Redis | RedisCluster
"""Either client; code written against it must keep every multi-key call in one slot."""

URL_SETTING = "TOCSIN_REDIS_URL"

_STANDALONE_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


async def connect_redis(url: str) -> RedisClient:
    """`create_redis`, then connect, so an unreachable server fails here (RedisError).

    Use this rather than `create_redis` whenever the client may serve concurrent tasks:
    redis-py's async RedisCluster fails (AttributeError on a half-made connection) when
    its first commands run concurrently before it has learned the slot map.
    """
    client = create_redis(url)
    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
        else:
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client


def create_redis(url: str) -> RedisClient:
    """Build a client for `url` without connecting; raise ValueError if `url` is malformed.

    A cluster client must see one command (or `initialize()`) before concurrent use;
    `connect_redis` does that.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise _bad_url(url, "expected scheme://..., e.g. redis://127.0.0.1:6379/0")
    if scheme in _STANDALONE_SCHEMES:
        return _create_standalone(url)
    if scheme in _CLUSTER_SCHEMES:
        return _create_cluster(url, _CLUSTER_SCHEMES[scheme])
    schemes = ", ".join(f"{s}://" for s in (*_STANDALONE_SCHEMES, *_CLUSTER_SCHEMES))
    raise _bad_url(url, f"unknown scheme {scheme!r}; expected one of {schemes}")


def socket_timeout_s(redis: RedisClient) -> float | None:
    """The client's per-reply socket timeout in seconds (None: wait forever)."""
    timeout = redis.get_connection_kwargs().get("socket_timeout")
    return None if timeout is None else float(timeout)


def blocking_ms(redis: RedisClient, wanted_ms: int) -> int:
    """How long a blocking read on `redis` may block: `wanted_ms`, but at most a third of
    the socket timeout, so the server's empty reply always beats the client's timeout
    (which would drop the connection and log a failure on an idle stream)."""
    timeout = socket_timeout_s(redis)
    if timeout is None:
        return wanted_ms
    return max(1, min(wanted_ms, int(timeout * 1000 / 3)))  # BLOCK 0 would mean forever


def read_lua(package: str, name: str) -> str:
    """The text of the Lua file `name` shipped inside `package` (e.g. 'tocsin.runtime')."""
    return files(package).joinpath(name).read_text(encoding="utf-8")


def register_lua(redis: RedisClient, *sources: str) -> AsyncScript:
    """Register the concatenation of `sources` (a library first, then the script body)."""
    return redis.register_script("\n".join(sources))


def _create_standalone(url: str) -> Redis:
    parts = _split(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise _bad_url(url, "unix:// needs a socket path, e.g. unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise _bad_url(url, "missing host")
        _port(url, parts)
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise _bad_url(url, f"database must be a number, got {db!r}")
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            decode_responses=False,
            retry=_retry(),
            max_connections=_MAX_CONNECTIONS,
            timeout=_POOL_WAIT_S,
            socket_timeout=DEFAULT_SOCKET_TIMEOUT_S,  # the URL's own value wins
            socket_connect_timeout=DEFAULT_CONNECT_TIMEOUT_S,
        )
    except ValueError as error:
        raise _bad_url(url, str(error)) from error
    pool.connection_class = _HIREDIS_PACKING[pool.connection_class]
    return Redis(connection_pool=pool)


class _HiredisPacking(AbstractConnection):
    """Packs commands with hiredis's C packer, as redis-py's synchronous client does.

    redis-py's asyncio connections pack every argument in Python: on the ingest path (one
    EVALSHA of 20 arguments per alert) that was a quarter of the incidents service's CPU.
    hiredis encodes str, bytes, int and float as redis-py's Encoder does and refuses the
    rest (None, bool), which becomes redis-py's DataError.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as error:
            raise DataError(str(error)) from error


class _HiredisConnection(_HiredisPacking, Connection):
    pass


class _HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_HIREDIS_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _HiredisConnection,
    SSLConnection: _HiredisSSLConnection,
    UnixDomainSocketConnection: _HiredisUnixConnection,
}


DEFAULT_SOCKET_TIMEOUT_S = 15.0
"""Three times the longest block tocsin asks for (the consumers' 5 s XREADGROUP): with
redis-py 8's default of 5 s, idle reads timed out every few seconds, and on a Cluster the
timeouts closed connections in use by other tasks. Still short enough that a Redis that
stopped answering is noticed within seconds (the health probe says so after 5)."""
DEFAULT_CONNECT_TIMEOUT_S = 5.0

_MAX_CONNECTIONS = 512
"""Per process (per node on a Cluster). Each consumer group holds one blocking connection
per shard stream."""
_POOL_WAIT_S = 10
"""A burst beyond the pool waits for a free connection instead of failing a page."""


def _create_cluster(url: str, base_scheme: str) -> RedisCluster:
    parts = _split(url)
    if parts.path.strip("/") not in ("", "0"):
        raise _bad_url(url, "a Redis Cluster has only database 0")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = [_cluster_seed(url, base_scheme, host) for host in hosts.split(",")]
    # Let redis-py parse credentials and query options, using the first seed as the host.
    credentials = f"{userinfo}@" if userinfo else ""
    query = f"?{parts.query}" if parts.query else ""
    try:
        parsed = parse_url(f"{base_scheme}://{credentials}{hosts.split(',')[0]}{query}")
    except ValueError as error:
        raise _bad_url(url, str(error)) from error
    skip = ("host", "port", "db", "connection_class")
    options: dict[str, Any] = {k: v for k, v in parsed.items() if k not in skip}
    options.setdefault("max_connections", _MAX_CONNECTIONS)
    options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT_S)
    options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)
    return RedisCluster(
        startup_nodes=seeds,
        ssl=base_scheme == "rediss",
        decode_responses=False,
        retry=_retry(),
        **options,
    )


def _retry() -> Retry:
    """Ride out a Redis restart or failover of a few seconds (redis-py's from_url has none).

    A command retried after a lost reply may have run once already, so writes must be
    idempotent or fenced. The timer scripts are: a repeated claim finds the timer in
    flight and it is re-offered when the lease ends; a repeated completion reports stale.
    """
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=8)


def _cluster_seed(url: str, base_scheme: str, host: str) -> ClusterNode:
    seed = _split(f"{base_scheme}://{host}", original=url)
    if not seed.hostname:
        raise _bad_url(url, f"missing host in cluster node {host!r}")
    port = _port(url, seed)
    if port is None:
        raise _bad_url(url, f"cluster node {host!r} needs an explicit port")
    return ClusterNode(seed.hostname, port)


def _split(url: str, original: str | None = None) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as error:
        raise _bad_url(original or url, str(error)) from error


def _port(url: str, parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError as error:
        raise _bad_url(url, f"invalid port: {error}") from error


def _bad_url(url: str, reason: str) -> ValueError:
    return ValueError(f"{URL_SETTING} is malformed ({reason}): {_redact(url)}")


def _redact(url: str) -> str:
    """The URL without its credentials, so errors can be logged."""
    scheme, sep, rest = url.partition("://")
    _, at, hosts = rest.rpartition("@")
    return f"{scheme}://***@{hosts}" if sep and at else url
