"""Urgency, ack timeouts and maintenance windows on the real stack: `tocsin up` processes,
the fake Twilio as a process, a 60x clock (see conftest.py; people and services in
urgency.yaml). The pager fails the session on any page nobody expected."""

from __future__ import annotations

import time

import pytest
from google.protobuf.duration_pb2 import Duration

from tests.e2e.pager import minutes
from tests.e2e.paging_stack import PagingStack
from tocsin.runtime.clock import ms_to_datetime
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2, scheduling_pb2, urgency_pb2

pytestmark = pytest.mark.slow

SEV_KEY = "71" * 16
ACKTO_KEY = "72" * 16
MAINT_KEY = "73" * 16
DEFER_KEY = "74" * 16


def test_an_info_alert_on_a_severity_service_sends_one_sms_and_no_call(
    tocsin: PagingStack,
) -> None:
    pager = tocsin.pager()
    pager.person("uma", "+12025550171")
    sent = tocsin.now()
    tocsin.enqueue(SEV_KEY, "trigger", "tls-expiry", "TLS certificate expires in 30 days", "info")
    sms = pager.expect_sms("uma", "TLS certificate expires")
    pager.expect_no_more_pages(until=sent + minutes(3))  # his call comes at 1m: not for info
    incident = tocsin.incident("sev-api", "tls-expiry")
    assert incident.urgency == common_pb2.URGENCY_LOW
    assert sms.at >= sent


@pytest.mark.parametrize("kill", [False, True])
def test_an_acknowledged_incident_pages_again_after_its_ack_timeout(
    tocsin: PagingStack, kill: bool
) -> None:
    """With `kill`, the incidents process that holds the timer is killed -9 at the moment
    of the timeout: the restarted one (or its timer, offered again) pages exactly once."""
    pager = tocsin.pager()
    pager.person("vic", "+12025550172")
    key = f"replica-lag-{kill}"
    tocsin.enqueue(ACKTO_KEY, "trigger", key, f"replication lag {kill}")
    pager.expect_sms("vic", f"replication lag {kill}")
    incident = tocsin.incident("ackto-api", key)
    acked = tocsin.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident.id)
    ).incident
    due = acked.ack_timeout_at.ToMilliseconds()
    assert due == acked.acknowledged_at.ToMilliseconds() + minutes(5)
    if kill:
        time.sleep(max(0.0, tocsin.log.real_seconds_until(due)))
        killed = tocsin.stack.kill_child("incidents")
        tocsin.stack.wait_restarted("incidents", killed)
    sms = pager.expect_sms("vic", f"replication lag {kill}", not_before=due)
    again = tocsin.incident_by_id(incident.id)
    assert again.status == incidents_pb2.INCIDENT_STATUS_TRIGGERED
    assert any("ack timeout of service ackto-api" in line for line in tocsin.timeline(incident.id))
    tocsin.client.incidents.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
    pager.expect_no_more_pages(until=sms.at + minutes(6))


def test_an_alert_during_a_maintenance_window_pages_nobody_and_is_listed(
    tocsin: PagingStack,
) -> None:
    pager = tocsin.pager()
    pager.person("wes", "+12025550173")
    window = tocsin.client.incidents.CreateMaintenanceWindow(
        urgency_pb2.CreateMaintenanceWindowRequest(
            window=urgency_pb2.MaintenanceWindow(
                service_ids=["maint-api"], duration=Duration(seconds=3600)
            )
        )
    ).window
    sent = tocsin.now()
    tocsin.enqueue(MAINT_KEY, "trigger", "deploy-restart", "api restarted during deploy")
    pager.expect_no_more_pages(until=sent + minutes(3))
    listed = tocsin.client.incidents.ListSuppressedAlerts(
        routing_pb2.ListSuppressedAlertsRequest(service_id="maint-api")
    )
    assert [(a.rule, a.summary) for a in listed.alerts] == [
        (f"maintenance/{window.id}", "api restarted during deploy")
    ]
    windows = tocsin.cli_json("maintenance", "list", "--service", "maint-api")
    assert [(w["id"], w["active"], w["alerts_recorded"]) for w in windows] == [(window.id, True, 1)]
    tocsin.client.incidents.EndMaintenanceWindow(
        urgency_pb2.EndMaintenanceWindowRequest(id=window.id)
    )
    tocsin.enqueue(MAINT_KEY, "trigger", "after-deploy", "api down after deploy")
    pager.expect_sms("wes", "api down after deploy")


def test_a_low_urgency_alert_outside_support_hours_pages_once_when_they_begin_despite_a_kill(
    tocsin: PagingStack,
) -> None:
    """Support hours begin in a few (virtual) minutes; the alert raised now waits for them
    on escalation's durable timer, and the escalation process is killed -9 at that
    moment: the restarted one pages, exactly once, by SMS only (low urgency)."""
    pager = tocsin.pager()
    pager.person("xia", "+12025550174")
    opens = ms_to_datetime(tocsin.now() + minutes(6)).replace(second=0, microsecond=0)
    closes = ms_to_datetime(int(opens.timestamp() * 1000) + minutes(60))
    window = scheduling_pb2.Restriction(
        days=[scheduling_pb2.Weekday.ValueType(d) for d in range(1, 8)], to=closes.strftime("%H:%M")
    )
    setattr(window, "from", opens.strftime("%H:%M"))
    tocsin.client.incidents.UpdateService(
        incidents_pb2.UpdateServiceRequest(
            service=incidents_pb2.Service(
                id="defer-api",
                name="Deferred API",
                escalation_policy_id="xia-only",
                integration_key=DEFER_KEY,
                urgency=urgency_pb2.UrgencyRule(
                    mode=urgency_pb2.URGENCY_MODE_SUPPORT_HOURS,
                    defer_low_outside_support_hours=True,
                ),
                support_hours=urgency_pb2.SupportHours(time_zone="UTC", windows=[window]),
            )
        )
    )
    time.sleep(1.2)  # every incidents replica's service cache (1 s) sees the change
    tocsin.enqueue(DEFER_KEY, "trigger", "nightly-report", "nightly report late")
    incident = tocsin.incident("defer-api", "nightly-report")
    start = int(opens.timestamp() * 1000)
    assert incident.urgency == common_pb2.URGENCY_LOW
    assert incident.page_at.ToMilliseconds() == start
    time.sleep(max(0.0, tocsin.log.real_seconds_until(start)))
    killed = tocsin.stack.kill_child("escalation")  # at the moment support hours begin
    tocsin.stack.wait_restarted("escalation", killed)
    sms = pager.expect_sms("xia", "nightly report late", not_before=start)
    tocsin.client.incidents.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
    pager.expect_no_more_pages(until=sms.at + minutes(3))  # no call: low urgency
