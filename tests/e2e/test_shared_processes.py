"""`tocsin up` with TOCSIN_PROCESSES=small: the services of the page path share processes
(scheduling, escalation and notification in one; incidents and history in another; the
gateway alone), each service still its own gRPC server reached through the contracts.
The stack turns healthy, pages as before, and when the shared process of escalation and
notification is killed -9 mid-escalation, the supervisor restarts it and every page still
arrives exactly once (the pager fails on any page nobody expected)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.e2e.pager import minutes, reply_code
from tests.e2e.paging_stack import EXAMPLE_CONFIG, PagingStack, paging_stack
from tests.e2e.stack import command_line, descendants

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
FAST_KEY = "7" * 32
LEVEL_DELAY = minutes(2)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PagingStack]:
    with paging_stack(
        tmp_path_factory.mktemp("shared"),
        start=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
        configs=(EXAMPLE_CONFIG, HERE / "failover.yaml"),
        extra_env={"TOCSIN_PROCESSES": "small"},
    ) as stack:
        yield stack


def test_the_services_share_three_processes_and_all_report_healthy(shared: PagingStack) -> None:
    assert shared.stack.process is not None
    served = sorted(
        tuple(argv[argv.index("serve") + 1 :])
        for pid in descendants(shared.stack.process.pid)
        if "serve" in (argv := command_line(pid))
    )
    assert served == [
        ("gateway",),
        ("incidents", "history"),
        ("scheduling", "escalation", "notification"),
    ]
    health = httpx.get(f"{shared.stack.http}/healthz").json()
    assert health["status"] == "ok"
    assert set(health["services"]) == {
        "scheduling",
        "incidents",
        "escalation",
        "notification",
        "history",
    }


def test_every_page_arrives_once_when_the_shared_process_is_killed(shared: PagingStack) -> None:
    pager = shared.pager()
    pager.person("olga", "+12025550131")
    pager.person("pete", "+12025550132")
    summary = "the page path's shared process killed"

    triggered = shared.now()
    shared.enqueue(FAST_KEY, "trigger", "kill-shared", summary)
    pager.expect_sms("olga", summary)
    killed = shared.stack.kill_child("escalation")  # and scheduling and notification with it
    shared.stack.wait_restarted("escalation", killed)
    assert shared.stack.child_pid("notification") == shared.stack.child_pid("escalation")

    pager.expect_voice("olga", summary, not_before=triggered + minutes(1))
    pete_sms = pager.expect_sms("pete", summary, not_before=triggered + LEVEL_DELAY)
    incident = shared.incident("fast-api", "kill-shared")
    answer = pager.reply_sms("pete", f"{reply_code(pete_sms)}a")
    assert answer.startswith(f"Acknowledged #{incident.number}:")
    pager.expect_no_more_pages(until=pete_sms.at + minutes(1.5))
