"""Running tocsin as a real process tree for end-to-end tests.

`Stack` runs `tocsin up` (every service and the gateway as child processes of the
supervisor); `FakeTwilioProcess` runs `tocsin fake-twilio` as its own process and is
driven through its HTTP control API; `Service` runs one extra `tocsin serve NAME`. Ports
are picked in advance so every URL can be configured before anything starts.

`fast_clock()` gives every process of a stack the same ScaledClock (TOCSIN_TEST_CLOCK):
at speed 60 a virtual minute passes in a real second, so a five-minute escalation level
takes five seconds of waiting, and the test reads virtual time from the same clock.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from subprocess import PIPE
from typing import IO, Any

import httpx

from loadtests.procs import free_ports
from tocsin.runtime.clock import TEST_CLOCK_VARIABLE, ScaledClock, datetime_to_ms
from tocsin.runtime.config import DEFAULT_METRICS_PORTS

SERVICES = ("scheduling", "incidents", "escalation", "notification", "history")
TOCSIN = [sys.executable, "-m", "tocsin.cli.main"]

ACCOUNT_SID = "AC" + "e2" * 16
AUTH_TOKEN = "e2e-twilio-auth-token"
FROM_NUMBER = "+15017122661"
"""tocsin's own number: what pages come from and what people reply to."""

UNLIMITED_SENDING = {"TOCSIN_TWILIO_SENDS_PER_SECOND": "0", "TOCSIN_NUMBER_SEND_INTERVAL": "0"}
"""Rate limits off: acceptance scenarios are about who is paged when, not about pacing."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int) -> int:
    """A port P with P .. P+count-1 all free now (`tocsin up` numbers from its base), below
    the kernel's ephemeral range, so no port picked for the stack's other listeners (port
    0, `free_port()`) or an outgoing connection can land in it meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        base = random.randrange(10_000, max(10_001, low - count))
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no run of free ports")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:  # the task (or process) ended while we looked: no children
                children = []
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode() for part in raw.split(b"\0") if part]


def fast_clock(start: datetime, speed: float = 60.0) -> ScaledClock:
    """A clock that reads `start` now and runs `speed` times faster than wall time."""
    return ScaledClock(time.time_ns() // 1_000_000, datetime_to_ms(start), speed)


def clock_env(clock: ScaledClock) -> dict[str, str]:
    value = f"{clock.real_anchor_ms},{clock.virtual_anchor_ms},{clock.speed}"
    return {TEST_CLOCK_VARIABLE: value}


def wait_for(condition: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `condition()` until it returns something truthy (a process, not product time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not after {timeout_s}s")
        time.sleep(interval_s)


@dataclass
class FakeTwilioProcess:
    """`tocsin fake-twilio` in its own process, seen through its `/_fake/` control API."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *TOCSIN,
                "fake-twilio",
                "--port",
                str(self.port),
                "--account-sid",
                ACCOUNT_SID,
                "--auth-token",
                AUTH_TOKEN,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        first_line = self.process.stdout.readline()
        assert "fake twilio listening on" in first_line, first_line

    def stack_env(self, public_url: str) -> dict[str, str]:
        """What a stack needs to send through this fake and verify its callbacks."""
        return {
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_FROM_NUMBER": FROM_NUMBER,
            "TOCSIN_TWILIO_BASE_URL": self.base_url,
            "TOCSIN_PUBLIC_URL": public_url,
        }

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    _log: IO[str] | None = None

    @property
    def http(self) -> str:
        return f"http://{self.env['TOCSIN_HTTP_ADDR']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def plan(self, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        """Pick the ports and the environment (so URLs are known before anything starts)."""
        http, *ports = free_ports(1 + len(SERVICES))
        self.env = {
            **os.environ,
            "TOCSIN_DATA_DIR": str(self.data_dir),
            "TOCSIN_HTTP_ADDR": f"127.0.0.1:{http}",
            **{
                f"TOCSIN_{name.upper()}_ADDR": f"127.0.0.1:{port}"
                for name, port in zip(SERVICES, ports, strict=True)
            },
            # Its own metrics ports: another stack on this host may hold the defaults.
            "TOCSIN_METRICS_ADDR": f"127.0.0.1:{free_port_run(len(DEFAULT_METRICS_PORTS))}",
            **(extra_env or {}),
        }
        for variable in (
            "TOCSIN_REDIS_URL",
            "TOCSIN_API_TOKEN",
            "TOCSIN_SERVICE_TOKEN",
            "TOCSIN_TOKEN",
            "TWILIO_ACCOUNT_SID",
        ):
            if variable not in (extra_env or {}):
                self.env.pop(variable, None)
        return self.env

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        if not self.env or extra_env is not None:
            self.plan(extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A file, not a pipe: five chatty children must never block on a full pipe.
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*TOCSIN, "up"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def redis_url(self) -> str:
        """The Redis the stack uses: TOCSIN_REDIS_URL, or the embedded one it printed."""
        if self.env.get("TOCSIN_REDIS_URL"):
            return self.env["TOCSIN_REDIS_URL"]
        for line in self.output().splitlines():
            if line.startswith("redis ") and "(embedded" in line:
                # Printed with the password masked; it is in the data dir (mode 0600).
                password = (self.data_dir / "redis" / "password").read_text().strip()
                return line.split()[1].replace("***@", f":{password}@", 1)
        raise AssertionError(f"no Redis URL in the output of tocsin up:\n{self.output()}")

    def wait_healthy(self, timeout_s: float = 30.0) -> float:
        """Seconds until /healthz answered 200 (polling a starting process, not a clock)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assert self.process is not None and self.process.poll() is None, self.stop()
            if self.healthy():
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"stack not healthy after {timeout_s}s:\n{self.stop()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.http}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def child_pid(self, name: str) -> int | None:
        """The pid of the running `tocsin serve ... NAME ...` child of the supervisor (the
        process NAME shares with others, with TOCSIN_PROCESSES)."""
        assert self.process is not None
        for pid in descendants(self.process.pid):
            argv = command_line(pid)
            served = argv[argv.index("serve") + 1 :] if "serve" in argv else []
            if name in served and alive(pid):
                return pid
        return None

    def kill_child(self, name: str) -> int:
        """kill -9 one child process; returns its pid (the supervisor will restart it)."""
        pid = self.child_pid(name)
        assert pid is not None, f"no running {name} process"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 5, f"{name} ({pid}) to die")
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout_s: float = 20.0) -> None:
        """Wait until the supervisor restarted `name` and the stack is healthy again."""

        def restarted() -> bool:
            pid = self.child_pid(name)
            return pid is not None and pid != old_pid and self.healthy()

        wait_for(restarted, timeout_s, f"{name} restarted and healthy", interval_s=0.1)

    def cli(self, *args: str) -> str:
        """Run a `tocsin` command against this stack; returns its standard output."""
        return self.cli_all([list(args)])[0]

    def cli_all(self, commands: list[list[str]]) -> list[str]:
        """Run independent `tocsin` commands at the same time; their standard outputs."""
        running = [
            (args, subprocess.Popen([*TOCSIN, *args], env=self.env, stdout=PIPE, stderr=PIPE))
            for args in commands
        ]
        outputs = []
        for args, process in running:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, f"tocsin {' '.join(args)}: {err!r}{out!r}"
            outputs.append(out.decode())
        return outputs

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> str:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout_s)
        finally:
            if self._log is not None:
                self._log.close()
        return self.output()


@dataclass
class Service:
    """One more `tocsin serve NAME` process beside a stack (e.g. a second replica)."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [*TOCSIN, "serve", self.name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def kill(self) -> None:
        """kill -9: no clean shutdown, so its leases and pending stream entries stay behind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
