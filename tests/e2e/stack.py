"""Running `tocsin up` as a real process tree for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SERVICES = ("scheduling", "incidents", "escalation", "notification")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (
                (task / "children").read_text().split() if (task / "children").exists() else []
            )
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


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return f"http://{self.env['TOCSIN_HTTP_ADDR']}"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        self.env = {
            **os.environ,
            "TOCSIN_DATA_DIR": str(self.data_dir),
            "TOCSIN_HTTP_ADDR": f"127.0.0.1:{free_port()}",
            **{f"TOCSIN_{name.upper()}_ADDR": f"127.0.0.1:{free_port()}" for name in SERVICES},
            **(extra_env or {}),
        }
        for variable in ("TOCSIN_REDIS_URL", "TOCSIN_API_TOKEN", "TWILIO_ACCOUNT_SID"):
            if variable not in (extra_env or {}):
                self.env.pop(variable, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tocsin.cli.main", "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_healthy(self, timeout_s: float = 30.0) -> float:
        """Seconds until /healthz answered 200 (polling a starting process, not a clock)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assert self.process is not None and self.process.poll() is None, self.stop()
            try:
                if httpx.get(f"{self.http}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"stack not healthy after {timeout_s}s:\n{self.stop()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> str:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        out, _ = self.process.communicate(timeout=timeout_s)
        return out
