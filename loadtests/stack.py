"""The system under test: its addresses, and (by default) a private stack started for it.

`LocalStack` starts the fake Twilio as its own process and a `tocsin up` process tree
(embedded Redis, four services, the gateway) with its own data directory, ports picked
free beforehand, Twilio pointed at the fake, and the send rate limits off, as a load
test against a fake provider needs. Delivery status callbacks are off unless asked for:
on a 2-core machine the fake's callbacks (three per SMS, sent with httpx) cost more CPU
than the page itself and, once a backlog forms, make the fake the bottleneck. Both
processes log to files in the output directory.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from loadtests.procs import free_ports
from tocsin.client.endpoints import Endpoints

SERVICES = ("scheduling", "incidents", "escalation", "notification", "history")
ACCOUNT_SID = "AC" + "10ad" * 8
AUTH_TOKEN = "loadtest-auth-token"
FROM_NUMBER = "+15005550006"
UNLIMITED = {
    "TOCSIN_TWILIO_SENDS_PER_SECOND": "0",  # per-sender pages/s; 0 = unlimited
    "TOCSIN_NUMBER_SEND_INTERVAL": "0",  # least time between pages to one number; 0 = none
    "TOCSIN_EVENTS_API_RATE": "0",  # /v2/enqueue events per minute per routing key; 0 = off
}
_INHERITED_AWAY = (
    "TOCSIN_REDIS_URL",
    "TOCSIN_API_TOKEN",
    "TOCSIN_SERVICE_TOKEN",
    "TOCSIN_TOKEN",
    "TOCSIN_TEST_CLOCK",
    "TOCSIN_INSTANCE",
)


@dataclass(frozen=True)
class Target:
    """Where the system under test listens."""

    endpoints: Endpoints
    fake_twilio: str
    """Base URL of the fake Twilio the stack sends to (its /_fake/ API is read)."""
    stack_root: int | None = None
    """The stack's top process: its CPU and its descendants' count (None: not measured)."""
    fake_pid: int | None = None
    redis_url: str | None = None
    """The stack's Redis, to count the commands a run costs (None: not counted)."""


def _wait_http(url: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            pass  # not listening yet (or, if it never answers, something else holds the port)
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f}s")


@dataclass
class LocalStack:
    data_dir: Path
    log_dir: Path
    log_level: str = "WARNING"
    status_callbacks: bool = False
    env: dict[str, str] = field(default_factory=dict)
    """Variables for the stack beyond (or instead of) the load-test defaults above."""
    up: subprocess.Popen[bytes] | None = None
    fake: subprocess.Popen[bytes] | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, timeout_s: float = 60.0) -> Target:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in _INHERITED_AWAY}
        twilio = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
        fake_port, http_port, *grpc_ports = free_ports(2 + len(SERVICES))
        fake_url = f"http://127.0.0.1:{fake_port}"
        self.fake = self._spawn(
            [sys.executable, "-m", "tocsin.faketwilio", "--port", str(fake_port)],
            base | twilio,
            "fake-twilio.log",
        )
        addrs = {name: f"127.0.0.1:{port}" for name, port in zip(SERVICES, grpc_ports, strict=True)}
        http_addr = f"127.0.0.1:{http_port}"
        env = base | twilio | UNLIMITED
        env |= {
            "TWILIO_FROM_NUMBER": FROM_NUMBER,
            "TOCSIN_TWILIO_BASE_URL": fake_url,
            "TOCSIN_TWILIO_STATUS_CALLBACKS": "on" if self.status_callbacks else "off",
            "TOCSIN_DATA_DIR": str(self.data_dir),
            "TOCSIN_HTTP_ADDR": http_addr,
            "TOCSIN_LOG_LEVEL": self.log_level,
            **{f"TOCSIN_{name.upper()}_ADDR": addr for name, addr in addrs.items()},
        }
        env |= self.env
        self.up = self._spawn([sys.executable, "-m", "tocsin.cli.main", "up"], env, "stack.log")
        try:
            _wait_http(f"{fake_url}/_fake/stats", timeout_s, self.fake)
            _wait_http(f"http://{http_addr}/healthz", timeout_s, self.up)
        except BaseException:
            self.stop()
            raise
        return Target(
            endpoints=Endpoints(http=http_addr, **addrs),
            fake_twilio=fake_url,
            stack_root=self.up.pid,
            fake_pid=self.fake.pid,
            redis_url=embedded_redis_url(self.log_dir / "stack.log", self.data_dir),
        )

    def _spawn(self, command: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        out = (self.log_dir / log).open("ab")
        self._logs.append(out)
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the stack (it stops its children, Redis last), then the fake."""
        for process in (self.up, self.fake):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.up, self.fake):
            if process is None:
                continue
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()


def embedded_redis_url(log: Path, data_dir: Path) -> str:
    """The embedded Redis `tocsin up` printed (password masked; it is in the data dir)."""
    for line in reversed(log.read_text().splitlines()):  # this run's: the log is appended
        if line.startswith("redis ") and "(embedded" in line:
            password = (data_dir / "redis" / "password").read_text().strip()
            return line.split()[1].replace("***@", f":{password}@", 1)
    raise RuntimeError(f"no Redis URL in {log}")
