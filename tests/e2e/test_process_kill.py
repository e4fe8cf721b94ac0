"""No page lost, none twice, whichever service process is killed -9 during an escalation.

Scenario 1 in a compact form (failover.yaml): olga is paged by SMS, called a minute later,
and after 2 minutes the `relief` schedule pages pete, whose SMS reply acknowledges.
During it one process of `tocsin up` is killed -9 at a moment that hurts it most; the
supervisor restarts it, and every page still arrives exactly once (the pager fails on
any page nobody expected) and the timeline records each level once.

A restart takes a few real seconds, i.e. minutes of escalation: pages that fall due
meanwhile go out when the process is back. The policy's last page is pete's SMS, so the
expected pages do not depend on how long the restart took; what could still arrive
afterwards are duplicates of redone work, which would come within a timer lease (at
most 30 s virtual) of the restart.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.pager import minutes, reply_code
from tests.e2e.paging_stack import PagingStack

pytestmark = pytest.mark.slow

FAST_KEY = "7" * 32
LEVEL_DELAY = minutes(2)


def sleep_until(tocsin: PagingStack, virtual_ms: int) -> None:
    time.sleep(tocsin.log.real_seconds_until(virtual_ms))


@pytest.mark.parametrize(
    ("service", "moment"),
    [
        pytest.param("scheduling", "as level 2 falls due", id="scheduling"),
        pytest.param("incidents", "after the first SMS", id="incidents"),
        pytest.param("escalation", "as level 2 falls due", id="escalation"),
        pytest.param("notification", "after the first SMS", id="notification"),
        pytest.param("gateway", "after the first SMS", id="gateway"),
    ],
)
def test_every_page_arrives_exactly_once_when_a_service_process_is_killed(
    tocsin: PagingStack, service: str, moment: str
) -> None:
    pager = tocsin.pager()
    pager.person("olga", "+12025550131")
    pager.person("pete", "+12025550132")
    summary = f"{service} killed {moment}"

    triggered = tocsin.now()
    tocsin.enqueue(FAST_KEY, "trigger", f"kill-{service}", summary)
    pager.expect_sms("olga", summary)
    if moment == "as level 2 falls due":
        sleep_until(tocsin, triggered + LEVEL_DELAY - 5_000)
    killed = tocsin.stack.kill_child(service)
    tocsin.stack.wait_restarted(service, killed)

    pager.expect_voice("olga", summary, not_before=triggered + minutes(1))
    pete_sms = pager.expect_sms("pete", summary, not_before=triggered + LEVEL_DELAY)
    incident = tocsin.incident("fast-api", f"kill-{service}")
    answer = pager.reply_sms("pete", f"{reply_code(pete_sms)}a")
    assert answer.startswith(f"Acknowledged #{incident.id}")
    pager.expect_no_more_pages(until=pete_sms.at + minutes(1.5))

    lines = tocsin.timeline(incident.id)
    assert lines.count("Escalation level 1 (loop 1) paged olga (schedule first-line)") == 1
    assert lines.count("Escalation level 2 (loop 1) paged pete (schedule relief)") == 1
    assert lines.count("Acknowledged by pete") == 1
