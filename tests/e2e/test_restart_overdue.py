"""The whole stack restarts with an escalation level overdue: the services start in
whatever order, escalation's calls wait for notification to listen, and the overdue page
goes out within about a second of it, with no ERROR and no traceback in the log."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.pager import minutes
from tests.e2e.paging_stack import paging_stack
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
BURST_KEY = "8" * 32
"""chaos.yaml's burst-api: quinn at once, rosa one minute later."""
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def listens(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def test_an_overdue_level_pages_within_a_second_of_a_restarted_stack_listening(
    tmp_path: Path,
) -> None:
    with paging_stack(tmp_path, start=START, configs=(HERE / "chaos.yaml",)) as tocsin:
        pager = tocsin.pager()
        pager.person("quinn", "+12025550141")
        pager.person("rosa", "+12025550142")
        triggered = tocsin.now()
        tocsin.enqueue(BURST_KEY, "trigger", "overdue", "disk full before the restart")
        pager.expect_sms("quinn", "disk full before the restart")
        tocsin.stack.stop()
        # rosa's level falls due while nothing runs
        time.sleep(tocsin.log.real_seconds_until(triggered + minutes(1.5)))

        tocsin.stack.start()
        peers = [tocsin.stack.env[f"TOCSIN_{name}_ADDR"] for name in ("SCHEDULING", "NOTIFICATION")]
        wait_for(lambda: all(map(listens, peers)), 60, "scheduling and notification", 0.01)
        listening_ms = time.time() * 1000
        rosa = pager.expect_sms("rosa", "disk full before the restart", not_before=triggered)
        clock = tocsin.clock
        paged_ms = clock.real_anchor_ms + (rosa.at - clock.virtual_anchor_ms) / clock.speed
        assert (paged_ms - listening_ms) / 1000 < 2.0, "the overdue level paged late"
        tocsin.stack.wait_healthy(timeout_s=60)
        pager.expect_no_more_pages(until=tocsin.now() + minutes(1.5))
        output = tocsin.stack.output()
        assert "Traceback" not in output, output
        assert " ERROR " not in output, output
