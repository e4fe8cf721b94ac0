"""`tocsin up`'s supervision of its embedded Redis, on a real redis-server: a dead server
comes back on the same port with its data, and a restart that fails (the port taken
meanwhile) is logged and tried again with backoff, never ending the supervisor."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tocsin.runtime import supervisor
from tocsin.runtime.config import load_config
from tocsin.runtime.embedded_redis import HOST, EmbeddedRedis
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
