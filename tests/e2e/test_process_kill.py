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

import os
import signal
import time

import pytest
import redis

from tests.e2e.pager import minutes, reply_code
from tests.e2e.paging_stack import PagingStack
from tests.e2e.stack import wait_for
from tocsin.runtime.events import incident_stream
from tocsin.v1 import incidents_pb2

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
    assert answer.startswith(f"Acknowledged #{incident.number}:")
    pager.expect_no_more_pages(until=pete_sms.at + minutes(1.5))

    expected = (
        "Escalation level 1 (loop 1) paged olga (schedule first-line)",
        "Escalation level 2 (loop 1) paged pete (schedule relief)",
        "Acknowledged by pete",
    )

    # A line written by a hop the kill interrupted lands when the hop is redone, which may
    # be a few real seconds after the page it records: wait for it (bounded), then count.
    def recorded() -> list[str] | None:
        lines = tocsin.timeline(incident.id)
        return lines if all(line in lines for line in expected) else None

    lines = wait_for(
        recorded,
        15,
        f"the timeline of {summary!r} to record every level and the acknowledgement",
    )
    for line in expected:
        assert lines.count(line) == 1, (line, lines)


def test_an_acknowledgement_the_killed_notification_process_had_received_still_stops_its_pages(
    tocsin: PagingStack,
) -> None:
    """The worst moment for notification: the ACKNOWLEDGED event has been handed to it (it
    is pending for its consumer in Redis) but not handled yet when it dies. The process
    that replaces it must still cancel olga's call and page nobody else."""
    pager = tocsin.pager()
    pager.person("olga", "+12025550131")
    pager.person("pete", "+12025550132")

    triggered = tocsin.now()
    tocsin.enqueue(FAST_KEY, "trigger", "ack-in-flight", "acknowledged as notification died")
    pager.expect_sms("olga", "acknowledged as notification died")
    incident = tocsin.incident("fast-api", "ack-in-flight")
    notification = tocsin.stack.child_pid("notification")
    assert notification is not None
    stream = incident_stream(incident)
    with redis.Redis.from_url(tocsin.stack.redis_url()) as client:
        consumers = client.xinfo_consumers(stream, "notification")
        assert len(consumers) == 1, consumers
        consumer = consumers[0]["name"]
        os.kill(notification, signal.SIGSTOP)
        try:
            tocsin.client.incidents.Acknowledge(
                incidents_pb2.AcknowledgeRequest(incident_id=incident.id)
            )
            # Frozen inside its blocking read, the process has been handed the event by
            # Redis; frozen between reads (just after olga's SMS it may be busy), it has
            # not: then read it for that consumer here, as its next read would have.
            # Either way the event is now pending for the frozen process, unhandled.
            acknowledged = client.xrevrange(stream, count=1)[0][0]  # the event Acknowledge wrote
            client.xreadgroup("notification", consumer, {stream: ">"})
            pending = client.xpending_range(stream, "notification", "-", "+", 100)
            assert {"message_id": acknowledged, "consumer": consumer} in [
                {"message_id": entry["message_id"], "consumer": entry["consumer"]}
                for entry in pending
            ], pending
        finally:
            os.kill(notification, signal.SIGKILL)  # never leave the shared stack frozen
    tocsin.stack.wait_restarted("notification", notification)
    # olga's call was due a minute after the page and pete's level after two; whatever
    # the restarted process would wrongly send, it sends within a minute of starting
    pager.expect_no_more_pages(until=max(triggered + minutes(2.5), tocsin.now() + minutes(1)))
