"""`tocsin up`: the whole stack from one command, healthy within 20 s, and gone after
SIGTERM, Redis included."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
import redis

from tests.e2e.stack import TOCSIN, Stack, alive, descendants
from tocsin.client.client import SyncTocsinClient
from tocsin.client.endpoints import resolve_endpoints
from tocsin.v1 import notification_pb2

pytestmark = pytest.mark.slow


def test_up_prints_endpoints_turns_healthy_and_stops_cleanly(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    assert stack.process is not None
    seconds = stack.wait_healthy(timeout_s=20)
    endpoints = json.loads((tmp_path / "data" / "endpoints.json").read_text())
    assert endpoints["http"] == stack.env["TOCSIN_HTTP_ADDR"]
    assert endpoints["incidents"] == stack.env["TOCSIN_INCIDENTS_ADDR"]
    health = httpx.get(f"{stack.http}/healthz").json()
    assert health["status"] == "ok" and set(health["services"]) == {
        "scheduling",
        "incidents",
        "escalation",
        "notification",
        "history",
    }
    children = descendants(stack.process.pid)
    assert len(children) >= 7  # five services, the gateway, redis-server
    # The embedded Redis: refused without the password, which is in no argv and no output.
    redis_dir = tmp_path / "data" / "redis"
    password = (redis_dir / "password").read_text().strip()
    url = urlsplit(stack.redis_url())
    assert url.hostname == "127.0.0.1" and url.password == password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=url.hostname, port=url.port or 0, protocol=2).get("x")
    for pid in children:
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert stat.S_IMODE(redis_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((redis_dir / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE((redis_dir / "appendonly.aof").stat().st_mode) == 0o600
    # The services reach it over its Unix socket (owner only), with the same password.
    assert stat.S_IMODE((redis_dir / "redis.sock").stat().st_mode) == 0o700
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(unix_socket_path=str(redis_dir / "redis.sock"), protocol=2).get("x")
    service_urls = {
        entry.split(b"=", 1)[1]
        for pid in children
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if entry.startswith(b"TOCSIN_REDIS_URL=")
    }
    assert service_urls == {f"unix://:{password}@{redis_dir / 'redis.sock'}".encode()}
    assert password not in (tmp_path / "data" / "endpoints.json").read_text()
    # The service credential: generated 0600 into the data directory, handed over in the
    # environment, on no command line; the local CLI works without it (the local admin)
    # and it is the only credential the internal RPCs take.
    service_token_file = tmp_path / "data" / "service-token"
    service_token = service_token_file.read_text().strip()
    assert stat.S_IMODE(service_token_file.stat().st_mode) == 0o600
    for pid in children:
        assert service_token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    cli_env = {**stack.env, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    whoami = subprocess.run(
        [*TOCSIN, "whoami", "--json"], env=cli_env, capture_output=True, text=True, timeout=30
    )
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["credential"] == "local_admin"
    anonymous = SyncTocsinClient(resolve_endpoints(cli_env), token="")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.notification.Notify(notification_pb2.NotifyRequest(user_id="x"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        anonymous.close()
    started = time.monotonic()
    output = stack.stop()
    assert password not in output  # what tocsin up printed and every service logged
    assert service_token not in output
    assert time.monotonic() - started < 10, output
    assert stack.process.returncode == 0, output
    assert not [pid for pid in children if alive(pid)], output
    assert not (tmp_path / "data" / "endpoints.json").exists()
    for name in ("scheduling", "incidents", "escalation", "notification", "gateway", "redis"):
        assert name in output
    assert (tmp_path / "data" / "redis").is_dir()  # the embedded Redis kept its AOF there
    assert seconds < 20


def test_healthz_names_a_service_that_is_down(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    assert stack.process is not None
    try:
        stack.wait_healthy()
        gateway_and_services = descendants(stack.process.pid)
        notification = [
            pid
            for pid in gateway_and_services
            if b"notification" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert notification
        os.kill(notification[0], signal.SIGSTOP)  # hung, not dead: the supervisor leaves it
        try:
            reply = httpx.get(f"{stack.http}/healthz", timeout=5)
            assert reply.status_code == 503
            assert reply.json()["not_serving"] == ["notification"]
        finally:
            os.kill(notification[0], signal.SIGCONT)
    finally:
        stack.stop()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["up"], {"TOCSIN_HTTP_ADDR": "8080"}, "TOCSIN_HTTP_ADDR='8080': expected HOST:PORT"),
        (["serve", "incidents"], {}, "TOCSIN_REDIS_URL must be set"),
        (["serve", "incidents", "history"], {}, "TOCSIN_REDIS_URL must be set to run incidents+"),
        (["serve", "incidents", "gateway"], {}, "the gateway runs in a process of its own"),
        (
            ["serve", "incidents", "history"],
            {"TOCSIN_REDIS_URL": "redis://127.0.0.1:9", "TOCSIN_LISTEN_ADDR": "0.0.0.0:50051"},
            "each listens on its own TOCSIN_<SERVICE>_ADDR",
        ),
        (["up"], {"TOCSIN_PROCESSES": "incidents,gateway"}, "TOCSIN_PROCESSES='incidents,gateway'"),
        (["serve", "gateway"], {"TOCSIN_HTTP_ADDR": "0.0.0.0:0"}, "TOCSIN_API_TOKEN"),
        (["serve", "incidents"], {"TOCSIN_API_TOKEN": "  "}, "TOCSIN_API_TOKEN is blank"),
        (["up"], {"TOCSIN_API_TOKEN": " "}, "TOCSIN_API_TOKEN is blank"),
        (["up"], {"TOCSIN_METRICS_ADDR": "0.0.0.0:0"}, "without TOCSIN_METRICS_TOKEN"),
        (["serve", "gateway"], {"TOCSIN_METRICS_ADDR": "9460"}, "TOCSIN_METRICS_ADDR='9460'"),
        (
            ["serve", "scheduling"],
            {"TOCSIN_REDIS_URL": "redis://127.0.0.1:9", "TOCSIN_METRICS_ADDR": "0.0.0.0:0"},
            "without TOCSIN_METRICS_TOKEN",
        ),
    ],
)
def test_bad_configuration_stops_with_the_variable_named(
    argv: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TOCSIN_", "TWILIO_"))}
    result = subprocess.run(
        [sys.executable, "-m", "tocsin.cli.main", *argv],
        env={**clean, "TOCSIN_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_killing_the_supervisor_takes_every_child_with_it(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    assert stack.process is not None
    stack.wait_healthy()
    children = descendants(stack.process.pid)
    assert any(b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children)
    stack.process.kill()  # SIGKILL: no chance to clean up; the kernel's parent-death signal does
    stack.process.wait()
    deadline = time.monotonic() + 15
    while [pid for pid in children if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for processes to exit, not for an escalation
    assert not [pid for pid in children if alive(pid)]
