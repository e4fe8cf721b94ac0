"""Urgency and support hours, as the on-call engineer lives them: an `info` alert on a
service whose urgency follows severity texts and never rings; a low-urgency alert at
night waits, unpaged, for support hours and then pages, across a DST change and on the
Redis Cluster too. Every service is real; time is a ManualClock; any page the test does
not expect fails it."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.escalation.stack import FullStack, user
from tests.notification.stack import ALICE, SMS, VOICE
from tocsin.v1 import (
    common_pb2,
    incidents_pb2,
    notification_pb2,
    scheduling_pb2,
    urgency_pb2,
)


async def configure(stack: FullStack, service: incidents_pb2.Service) -> None:
    service.id = "payments-api"
    service.escalation_policy_id = "payments"
    await stack.client.incidents.UpdateService(incidents_pb2.UpdateServiceRequest(service=service))


async def trigger(
    stack: FullStack, summary: str, severity: common_pb2.Severity.ValueType
) -> incidents_pb2.Incident:
    reply = await stack.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api", summary=summary, dedup_key=summary, severity=severity
        )
    )
    await stack.run_until_quiet()
    return reply.incident


def by_severity() -> incidents_pb2.Service:
    return incidents_pb2.Service(
        urgency=urgency_pb2.UrgencyRule(mode=urgency_pb2.URGENCY_MODE_SEVERITY)
    )


async def test_an_info_alert_on_a_severity_service_sends_one_sms_and_no_call(
    stack: FullStack,
) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60), (VOICE, 300)])
    await stack.policy(([user("alice")], 30))
    await configure(stack, by_severity())

    info = await trigger(stack, "TLS certificate expires in 30 days", common_pb2.SEVERITY_INFO)
    assert info.urgency == common_pb2.URGENCY_LOW
    await stack.pager.expect_sms("alice", "TLS certificate expires")
    await stack.tick(minutes=29)
    await stack.pager.expect_no_more_pages()  # no call at 1 or 5 minutes
    incident = await stack.paging.incident(info.id)
    opened = incident.timeline[0]
    assert opened.attributes["urgency"] == "low"
    assert opened.attributes["urgency_reason"] == "service payments-api: severity info is low"
    assert "low urgency" in opened.message

    # The same service, a critical alert: high urgency, every rule.
    critical = await trigger(stack, "payments down", common_pb2.SEVERITY_CRITICAL)
    assert critical.urgency == common_pb2.URGENCY_HIGH
    await stack.pager.expect_sms("alice", "payments down")
    await stack.tick(minutes=1)
    await stack.pager.expect_voice("alice", "payments down")


async def test_low_urgency_rules_replace_the_default(stack: FullStack) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.client.notification.SetNotificationRules(
        notification_pb2.SetNotificationRulesRequest(
            user_id="alice",
            rules=[
                notification_pb2.NotificationRule(contact_method_id="alice-sms"),
                notification_pb2.NotificationRule(
                    contact_method_id="alice-voice", urgency=common_pb2.URGENCY_LOW
                ),
            ],
        )
    )
    await stack.policy(([user("alice")], 30))
    await configure(
        stack,
        incidents_pb2.Service(
            urgency=urgency_pb2.UrgencyRule(mode=urgency_pb2.URGENCY_MODE_ALWAYS_LOW)
        ),
    )
    await trigger(stack, "queue growing", common_pb2.SEVERITY_CRITICAL)
    await stack.pager.expect_voice("alice", "queue growing")  # her low rule, not her SMS


async def test_a_user_with_only_calls_cannot_be_paged_at_low_urgency(stack: FullStack) -> None:
    await stack.paging.add_user("alice", ALICE, [(VOICE, 0)])
    await stack.policy(([user("alice")], 30))
    await configure(stack, by_severity())
    incident = await trigger(stack, "disk 80% full", common_pb2.SEVERITY_WARNING)
    await stack.pager.expect_no_more_pages()
    lines = [e.message for e in (await stack.paging.incident(incident.id)).timeline]
    assert any("no low-urgency notification rules" in line for line in lines), lines


@pytest.mark.parametrize("defer", [True])
async def test_a_low_urgency_alert_at_night_pages_when_support_hours_begin_across_dst(
    any_stack: FullStack, defer: bool
) -> None:
    stack = any_stack  # standalone, then the 3-master Redis Cluster
    await stack.paging.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    await stack.policy(([user("alice")], 30))
    weekdays = [
        getattr(scheduling_pb2, f"WEEKDAY_{d}")
        for d in ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY")
    ]
    window = scheduling_pb2.Restriction(days=weekdays, to="17:00")
    setattr(window, "from", "09:00")
    await configure(
        stack,
        incidents_pb2.Service(
            urgency=urgency_pb2.UrgencyRule(
                mode=urgency_pb2.URGENCY_MODE_SUPPORT_HOURS, defer_low_outside_support_hours=defer
            ),
            support_hours=urgency_pb2.SupportHours(time_zone="Europe/London", windows=[window]),
        ),
    )
    # Saturday 27 March 2027, 02:00 in London (GMT). The clocks go forward on Sunday
    # 28 March, so Monday's 09:00 is BST: 08:00Z, not 09:00Z.
    stack.paging.clock.set(datetime(2027, 3, 27, 2, 0, tzinfo=UTC))
    incident = await trigger(stack, "nightly report late", common_pb2.SEVERITY_CRITICAL)
    assert incident.urgency == common_pb2.URGENCY_LOW
    assert incident.page_at.ToDatetime(UTC) == datetime(2027, 3, 29, 8, 0, tzinfo=UTC)
    escalation = await stack.escalation_of(incident.id)
    assert escalation.next_fire_at.ToDatetime(UTC) == datetime(2027, 3, 29, 8, 0, tzinfo=UTC)

    await stack.tick(hours=53, minutes=59, seconds=59)  # Monday 07:59:59Z
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)  # 09:00 BST: support hours begin
    await stack.pager.expect_sms("alice", "nightly report late")
    await stack.tick(minutes=5)
    await stack.pager.expect_no_more_pages()  # low urgency: no call
    timeline = (await stack.paging.incident(incident.id)).timeline
    assert "paging waits until 2027-03-29T08:00:00Z" in timeline[0].attributes["urgency_reason"]

    # Inside support hours the same service's incidents are high urgency and page at once.
    high = await trigger(stack, "payments down", common_pb2.SEVERITY_CRITICAL)
    assert high.urgency == common_pb2.URGENCY_HIGH and not high.HasField("page_at")
    await stack.pager.expect_sms("alice", "payments down")
    await stack.tick(minutes=1)
    await stack.pager.expect_voice("alice", "payments down")


async def test_bad_urgency_settings_are_refused_naming_the_field(stack: FullStack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await configure(
            stack,
            incidents_pb2.Service(
                urgency=urgency_pb2.UrgencyRule(mode=urgency_pb2.URGENCY_MODE_SUPPORT_HOURS)
            ),
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "support_hours" in (raised.value.details() or "")


async def test_an_acknowledged_incident_pages_again_after_the_ack_timeout(
    stack: FullStack,
) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.policy(([user("alice")], 30))
    await configure(stack, incidents_pb2.Service(ack_timeout=Duration(seconds=30 * 60)))
    incident = await trigger(stack, "replication lag", common_pb2.SEVERITY_CRITICAL)
    sms = await stack.pager.expect_sms("alice", "replication lag")
    assert sms.body is not None
    code = sms.body.split("reply '")[1].split("a'")[0]
    await stack.pager.reply_sms("alice", f"{code}a")  # acknowledged from the phone
    await stack.run_until_quiet()
    acked = await stack.paging.incident(incident.id)
    assert acked.status == incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
    assert acked.HasField("ack_timeout_at")

    await stack.tick(minutes=29, seconds=59)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)  # forgotten: triggered again, escalation starts over
    await stack.pager.expect_sms("alice", "replication lag")
    again = await stack.paging.incident(incident.id)
    assert again.status == incidents_pb2.INCIDENT_STATUS_TRIGGERED
    lines = [e.message for e in again.timeline]
    assert any(
        "Acknowledged for 30m and not resolved (ack timeout of service payments-api)" in line
        for line in lines
    ), lines

    # A new acknowledgement starts the timeout again; acknowledging again restarts it.
    await ack(stack, incident.id)
    await stack.tick(minutes=20)
    await ack(stack, incident.id)  # at 20m: now due at 50m
    await stack.tick(minutes=29)
    await stack.pager.expect_no_more_pages()
    await stack.tick(minutes=1)
    await stack.pager.expect_sms("alice", "replication lag")

    # A resolve ends it: nothing pages again.
    await ack(stack, incident.id)
    await stack.client.incidents.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
    await stack.tick(hours=2)
    await stack.pager.expect_no_more_pages()


async def ack(stack: FullStack, incident_id: str) -> None:
    reply = await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id)
    )
    assert reply.changed
    await stack.run_until_quiet()


async def test_a_service_without_an_urgency_rule_opens_high_urgency_incidents_as_before(
    stack: FullStack,
) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.policy(([user("alice")], 30))
    incident = await trigger(stack, "disk full on db1", common_pb2.SEVERITY_INFO)
    assert incident.urgency == common_pb2.URGENCY_HIGH and not incident.urgency_reason
    await stack.pager.expect_sms("alice", "disk full on db1")
    opened = (await stack.paging.incident(incident.id)).timeline[0]
    assert opened.message == "Triggered: disk full on db1"
