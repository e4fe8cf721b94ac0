"""`tocsin up`'s supervision of its embedded Redis, on a real redis-server: a dead server
comes back on the same port with its data, and a restart that fails (the port taken
meanwhile) is logged and tried again with backoff, never ending the supervisor."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_py

from tocsin.runtime import supervisor
from tocsin.runtime.config import load_config
from tocsin.runtime.embedded_redis import HOST, EmbeddedRedis, EmbeddedRedisError
from tocsin.runtime.supervisor import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    redis = EmbeddedRedis(tmp_path / "redis")
    redis.start()
    stack = Stack(load_config({"TOCSIN_DATA_DIR": str(tmp_path)}), echo=lambda _: None)
    stack.redis = redis
    yield stack
    redis.stop()


def test_a_dead_redis_is_started_again_on_its_port_with_its_data(stack: Stack) -> None:
    redis = stack.redis
    assert redis is not None
    port = redis.port
    with redis.client() as client:
        client.set("incident:1", "kept")  # in the AOF (written before the reply)
    redis.kill()
    assert redis.pid is None
    stack._supervise_redis()  # the first restart is immediate
    assert redis.pid is not None and redis.port == port
    with redis.client() as client:
        assert client.get("incident:1") == b"kept"
    assert stack.redis_restarts == 1


def test_a_restart_that_fails_is_retried_with_backoff(
    stack: Stack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = stack.redis
    assert redis is not None
    monkeypatch.setattr(supervisor, "_REDIS_RESTART_BACKOFF_S", (0.0, 0.05, 0.05))
    redis.kill()
    with socket.socket() as squatter:  # another process took the port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((HOST, redis.port))
        squatter.listen()
        stack._supervise_redis()
        assert redis.pid is None
        assert any(r.levelno == logging.ERROR for r in caplog.records)
        stack._supervise_redis()  # within the backoff: nothing yet
        assert redis.pid is None
    deadline = time.monotonic() + 5
    while redis.pid is None and time.monotonic() < deadline:
        stack._supervise_redis()
        time.sleep(0.01)  # the supervisor's own poll (not product time)
    assert redis.pid is not None
    with redis.client() as client:
        assert client.ping()


def test_a_child_that_cannot_be_started_is_retried_and_supervision_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "_RESTART_BACKOFF_S", (0.05,))
    stack = Stack(load_config({"TOCSIN_DATA_DIR": str(tmp_path)}), echo=lambda _: None)
    missing = supervisor.Child("ghost", [str(tmp_path / "no-such-program")], {})
    stack.children.append(missing)
    runner = threading.Thread(target=stack.supervise)
    runner.start()
    deadline = time.monotonic() + 5
    while missing.restarts < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the supervisor's thread at work (not product time)
    stack.stop_requested.set()
    runner.join(5)
    assert not runner.is_alive()
    assert missing.restarts >= 3
    assert any("ghost could not be started" in r.getMessage() for r in caplog.records)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_embedded_redis_is_for_its_owner_only_and_keeps_its_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "redis"
    data.mkdir(mode=0o755)  # made by an older version: opened to others
    (data / "appendonly.aof").write_bytes(b"")
    os.chmod(data / "appendonly.aof", 0o644)
    redis = EmbeddedRedis(data, require_password=True)
    redis.start()
    try:
        password = redis.password
        assert password and len(password) >= 32
        assert (data / "password").read_text().strip() == password
        with redis.client() as client:
            client.set("contact:alice", "+15005550006")
        with pytest.raises(redis_py.AuthenticationError, match="Authentication required"):
            with redis_py.Redis(host=HOST, port=redis.port, protocol=2) as anonymous:
                anonymous.get("contact:alice")
        with redis_py.Redis.from_url(redis.url) as client:
            assert client.get("contact:alice") == b"+15005550006"
        assert _mode(data) == 0o700
        for name in ("password", "redis.conf", "appendonly.aof", "redis-server.log"):
            assert _mode(data / name) == 0o600, name
        assert redis.pid is not None
        argv = Path(f"/proc/{redis.pid}/cmdline").read_bytes()
        assert password.encode() not in argv
        assert password not in (data / "redis-server.log").read_text()
        assert password not in redis.display_url and "***@" in redis.display_url

        # A supervised restart (kill -9) and a new process (tocsin up again): same password.
        stack = Stack(load_config({"TOCSIN_DATA_DIR": str(tmp_path)}), echo=caplog_echo(caplog))
        stack.redis = redis
        redis.kill()
        stack._supervise_redis()
        with redis_py.Redis.from_url(redis.url) as client:
            assert client.get("contact:alice") == b"+15005550006"
        redis.stop()
        again = EmbeddedRedis(data, require_password=True)
        with again:
            assert again.password == password
            with redis_py.Redis.from_url(again.url) as client:
                assert client.get("contact:alice") == b"+15005550006"
    finally:
        redis.stop()
    printed = [r.getMessage() for r in caplog.records]
    assert any("restarted on redis://***@" in line for line in printed)
    assert not [line for line in printed if password in line]


def caplog_echo(caplog: pytest.LogCaptureFixture) -> Callable[[str], None]:
    """An echo that records what `tocsin up` prints with the log lines."""
    printed = logging.getLogger("tocsin up (printed)")
    return lambda line: printed.warning("%s", line)


def test_a_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    (data / "password").write_text("guessable\n")
    os.chmod(data / "password", 0o644)
    with pytest.raises(EmbeddedRedisError, match="readable by other users"):
        EmbeddedRedis(data, require_password=True).start()


def test_a_child_that_keeps_failing_at_start_up_is_retried_within_seconds(
    tmp_path: Path,
) -> None:
    """A service that exits at start-up (its Redis or a peer briefly away) is started
    again with a short backoff: five retries take ~6 s (they took 18.5 s, then one every
    10 s, which left a service down that long after its dependency was back)."""
    stack = Stack(load_config({"TOCSIN_DATA_DIR": str(tmp_path)}), echo=lambda _: None)
    failing = supervisor.Child("flaky", ["/bin/false"], {})
    failing.start()
    stack.children.append(failing)
    runner = threading.Thread(target=stack.supervise)
    started = time.monotonic()
    runner.start()
    try:
        while failing.restarts < 5 and time.monotonic() - started < 10:
            time.sleep(0.05)  # the supervisor's thread at work (not product time)
        elapsed = time.monotonic() - started
    finally:
        stack.stop_requested.set()
        runner.join(5)
    assert failing.restarts >= 5, f"{failing.restarts} restarts in {elapsed:.1f}s"
    assert elapsed < 9
