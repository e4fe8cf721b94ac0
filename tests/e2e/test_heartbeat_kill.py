"""A missed heartbeat pages once even when a process is killed -9 at the moment of expiry,
and the next ping resolves it (the real stack: `tocsin up` processes, the fake Twilio as a
process, a 60x clock).

The monitor's one durable timer lives in Redis: the incidents process that fires it may
die before or after opening the incident (the timer is offered again after its lease,
and finds the incident open), and the escalation process that pages may die as the
incident opens (its event waits in the outbox for the restarted consumer). Either way
hank gets exactly one SMS (the pager fails on any page nobody expected)."""

from __future__ import annotations

import time

import httpx
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.e2e.pager import minutes
from tests.e2e.paging_stack import PagingStack
from tocsin.v1 import incidents_pb2, routing_pb2

pytestmark = pytest.mark.slow

INTERVAL_S = 120
GRACE_S = 60


@pytest.mark.parametrize("service", ["escalation", "incidents"])
def test_a_missed_heartbeat_pages_once_when_a_process_dies_at_its_expiry(
    tocsin: PagingStack, service: str
) -> None:
    pager = tocsin.pager()
    pager.person("hank", "+12025550161")
    monitor_id = f"backup-{service}"
    monitor = tocsin.client.incidents.CreateHeartbeatMonitor(
        routing_pb2.CreateHeartbeatMonitorRequest(
            monitor=routing_pb2.HeartbeatMonitor(
                id=monitor_id,
                service_id="beat-api",
                interval=Duration(seconds=INTERVAL_S),
                grace=Duration(seconds=GRACE_S),
            )
        )
    ).monitor
    url = f"{tocsin.stack.http}/v1/heartbeat/{monitor.token}"
    try:
        pinged = tocsin.now()
        reply = httpx.post(url, timeout=10)
        assert reply.status_code == 200 and reply.json() == {
            "monitor": monitor_id,
            "recovered": False,
        }
        deadline = pinged + (INTERVAL_S + GRACE_S) * 1000
        time.sleep(max(0.0, tocsin.log.real_seconds_until(deadline)))
        killed = tocsin.stack.kill_child(service)  # at the moment of expiry
        tocsin.stack.wait_restarted(service, killed)

        sms = pager.expect_sms("hank", f"Heartbeat missed: {monitor_id}", not_before=deadline)
        listed = tocsin.client.incidents.ListIncidents(
            incidents_pb2.ListIncidentsRequest(service_ids=["beat-api"], page_size=500)
        ).incidents
        opened = [i for i in listed if i.dedup_key == f"heartbeat:{monitor_id}"]
        assert len(opened) == 1  # opened once, whoever fired the timer
        incident = opened[0]
        assert incident.status == incidents_pb2.INCIDENT_STATUS_TRIGGERED
        reply = httpx.get(url, timeout=10)  # the job runs again: its ping resolves it
        assert reply.json() == {"monitor": monitor_id, "recovered": True}
        resolved = tocsin.incident_by_id(incident.id)
        assert resolved.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
        pager.expect_no_more_pages(until=sms.at + minutes(2))
    finally:
        tocsin.client.incidents.DeleteHeartbeatMonitor(
            routing_pb2.DeleteHeartbeatMonitorRequest(id=monitor_id)
        )
