"""`tocsin up` supervises its embedded Redis: killed -9, it is started again on the same
port and data (the AOF replayed), the services reconnect by themselves, and a level that
fell due while Redis was gone is paged within about a second of Redis answering again.

To make the level fall due during the outage, the supervisor is frozen (SIGSTOP) while
redis-server is killed and thawed once the level is overdue; the supervisor then brings
Redis back as it would after any crash.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.pager import minutes
from tests.e2e.paging_stack import PagingStack, paging_stack, redis_answers
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
BURST_KEY = "8" * 32
"""chaos.yaml's burst-api: quinn at once, rosa one minute later."""
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[PagingStack]:
    with paging_stack(tmp_path, start=START, configs=(HERE / "chaos.yaml",)) as running:
        yield running


def real_ms(tocsin: PagingStack, virtual_ms: int) -> float:
    clock = tocsin.clock
    return clock.real_anchor_ms + (virtual_ms - clock.virtual_anchor_ms) / clock.speed


def test_a_killed_embedded_redis_comes_back_with_its_data_and_overdue_levels_page(
    stack: PagingStack,
) -> None:
    tocsin = stack
    pager = tocsin.pager()
    pager.person("quinn", "+12025550141")
    pager.person("rosa", "+12025550142")
    url = tocsin.stack.redis_url()
    supervisor = tocsin.stack.process
    assert supervisor is not None

    triggered = tocsin.now()
    tocsin.enqueue(BURST_KEY, "trigger", "before", "disk full before the crash")
    pager.expect_sms("quinn", "disk full before the crash")
    before = tocsin.incident("burst-api", "before")

    killed = tocsin.redis_pid()
    assert killed is not None
    os.kill(supervisor.pid, signal.SIGSTOP)  # nobody restarts Redis until thawed
    try:
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: not redis_answers(url), 5, "redis-server to die")
        # rosa's level falls due while Redis is gone
        time.sleep(tocsin.log.real_seconds_until(triggered + minutes(1.5)))
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    wait_for(lambda: redis_answers(url), 10, "the embedded Redis back on the same port", 0.01)
    back_ms = time.time() * 1000
    restarted = tocsin.redis_pid()
    assert restarted is not None and restarted != killed
    assert urlsplit(tocsin.stack.redis_url()).port == urlsplit(url).port

    rosa = pager.expect_sms("rosa", "disk full before the crash", not_before=triggered + minutes(1))
    late_s = (real_ms(tocsin, rosa.at) - back_ms) / 1000
    assert late_s < 2.0, f"the overdue level paged {late_s:.2f}s after Redis was back"
    assert tocsin.incident_by_id(before.id).summary == "disk full before the crash"  # AOF

    after = tocsin.now()
    tocsin.enqueue(BURST_KEY, "trigger", "after", "disk full after the crash")
    pager.expect_sms("quinn", "disk full after the crash")
    pager.expect_sms("rosa", "disk full after the crash", not_before=after + minutes(1))
    tocsin.stack.wait_healthy(timeout_s=20)
    # each policy is exhausted a minute after its second level, which pages nobody
    pager.expect_no_more_pages(until=tocsin.now() + minutes(1.5))
    lines = tocsin.timeline(before.id)
    assert lines.count("Escalation level 2 (loop 1) paged rosa") == 1, lines
    assert "redis        restarted on" in tocsin.stack.output()
