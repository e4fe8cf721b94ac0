"""Noise control as the on-call engineer lives it, over every real service with the fake
Twilio and a ManualClock; any page the test does not expect fails it. Standalone Redis
and the 3-master Redis Cluster (`any_stack`)."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from tests.escalation.stack import MINUTE, FullStack, schedule, user
from tests.notification.stack import ALICE, BOB, SMS, VOICE
from tocsin.v1 import common_pb2, escalation_pb2, incidents_pb2, routing_pb2

CAROL = "+15005550012"


async def people(stack: FullStack) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.paging.add_user("bob", BOB, [(SMS, 0)])
    await stack.paging.add_user("carol", CAROL, [(SMS, 0)])


async def trigger(
    stack: FullStack, summary: str, dedup_key: str | None = None
) -> incidents_pb2.TriggerResponse:
    reply = await stack.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api", summary=summary, dedup_key=dedup_key or summary
        )
    )
    await stack.run_until_quiet()
    return reply


async def test_a_suppressing_rule_records_the_alert_and_pages_nobody(any_stack: FullStack) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("alice")], 5))
    await stack.client.incidents.SetEventRules(
        routing_pb2.SetEventRulesRequest(
            rule_set=routing_pb2.EventRuleSet(
                service_id="payments-api",
                rules=[
                    routing_pb2.EventRule(
                        id="tls-notice",
                        conditions=[
                            routing_pb2.EventCondition(
                                field="summary",
                                operator=routing_pb2.MATCH_OPERATOR_REGEX,
                                value=r"certificate expires in \d+ days",
                            )
                        ],
                        actions=routing_pb2.EventRuleActions(suppress=True),
                    )
                ],
            )
        )
    )
    reply = await trigger(stack, "TLS certificate expires in 30 days")
    assert reply.suppressed_by == "payments-api/tls-notice"
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()  # nobody paged
    listed = await stack.client.incidents.ListSuppressedAlerts(
        routing_pb2.ListSuppressedAlertsRequest(service_id="payments-api")
    )
    assert [a.rule for a in listed.alerts] == ["payments-api/tls-notice"]
    # an alert no rule matches pages as always
    await trigger(stack, "disk full on db1")
    await stack.pager.expect_sms("alice", "disk full on db1")


async def test_grouping_by_time_joins_a_second_alert_without_a_second_page(
    any_stack: FullStack,
) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("alice")], 30))
    service = (
        await stack.client.incidents.GetService(incidents_pb2.GetServiceRequest(id="payments-api"))
    ).service
    service.grouping.window.CopyFrom(Duration(seconds=10 * MINUTE))
    await stack.client.incidents.UpdateService(incidents_pb2.UpdateServiceRequest(service=service))
    first = await trigger(stack, "db1 disk full", "disk-db1")
    await stack.pager.expect_sms("alice", "db1 disk full")
    await stack.tick(minutes=3)
    second = await trigger(stack, "api 5xx rate high", "api-5xx")
    assert not second.created and second.incident.id == first.incident.id
    assert second.incident.alert_count == 2
    await stack.tick(minutes=5)
    await stack.pager.expect_no_more_pages()  # the second alert joined: no second page


async def test_round_robin_pages_the_next_target_for_the_next_incident(
    any_stack: FullStack,
) -> None:
    stack = any_stack
    await people(stack)
    await stack.escalation_client.CreatePolicy(
        escalation_pb2.CreatePolicyRequest(
            policy=escalation_pb2.EscalationPolicy(
                id="payments",
                name="Payments",
                levels=[
                    escalation_pb2.EscalationLevel(
                        targets=[user("alice"), user("bob"), user("carol")],
                        delay=Duration(seconds=30 * MINUTE),
                        strategy=escalation_pb2.LEVEL_STRATEGY_ROUND_ROBIN,
                    )
                ],
            )
        )
    )
    first = await trigger(stack, "first: disk full")
    await stack.pager.expect_sms("alice", "first: disk full")
    second = await trigger(stack, "second: cpu high")
    await stack.pager.expect_sms("bob", "second: cpu high")
    third = await trigger(stack, "third: 5xx")
    await stack.pager.expect_sms("carol", "third: 5xx")
    fourth = await trigger(stack, "fourth: queue backlog")
    await stack.pager.expect_sms("alice", "fourth: queue backlog")
    await stack.pager.expect_no_more_pages()  # one target per incident, not all three
    incident = await stack.paging.incident(second.incident.id)
    assert any(e.attributes.get("round_robin_target") == "user:bob" for e in incident.timeline), [
        e.message for e in incident.timeline
    ]
    for reply in (first, third, fourth):
        assert reply.created


async def test_a_missed_heartbeat_pages_once_and_a_ping_resolves_it(any_stack: FullStack) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("alice")], 60))
    incidents = stack.paging.incidents
    assert incidents is not None
    created = await stack.client.incidents.CreateHeartbeatMonitor(
        routing_pb2.CreateHeartbeatMonitorRequest(
            monitor=routing_pb2.HeartbeatMonitor(
                id="nightly-backup",
                service_id="payments-api",
                interval=Duration(seconds=60 * MINUTE),
                grace=Duration(seconds=5 * MINUTE),
            )
        )
    )
    worker = incidents.heartbeat_worker
    await stack.tick(minutes=64)
    assert await worker.run_once() == 0
    await stack.tick(minutes=1)
    # the timer comes due; the replica firing it dies after opening the incident, before
    # completing the timer: another fires it again after the lease
    store = incidents.servicer.heartbeats
    claimed = await store.timers.claim_due(0, 10, lease_ms=30_000)
    monitor = await store.expire(claimed[0].timer_id, claimed[0].payload)
    assert monitor is not None
    await incidents.servicer.open_heartbeat_incident(monitor)
    await stack.tick(minutes=1)
    assert await worker.run_once() == 1
    await stack.run_until_quiet()
    await stack.pager.expect_sms("alice", "Heartbeat missed: nightly-backup")
    await stack.tick(minutes=30)
    assert await worker.run_once() == 0
    await stack.pager.expect_no_more_pages()  # once
    ping = await stack.client.incidents.PingHeartbeat(
        routing_pb2.PingHeartbeatRequest(token=created.monitor.token)
    )
    assert ping.recovered
    await stack.tick(minutes=90)
    await stack.pager.expect_no_more_pages()  # resolved: escalation stopped


async def test_a_rule_that_sets_low_urgency_sends_an_sms_and_no_call(any_stack: FullStack) -> None:
    stack = any_stack
    await stack.paging.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    await stack.policy(([user("alice")], 30))
    await stack.client.incidents.SetEventRules(
        routing_pb2.SetEventRulesRequest(
            rule_set=routing_pb2.EventRuleSet(
                rules=[
                    routing_pb2.EventRule(
                        id="disk-notices",
                        conditions=[
                            routing_pb2.EventCondition(
                                field="summary",
                                operator=routing_pb2.MATCH_OPERATOR_CONTAINS,
                                value="80% full",
                            )
                        ],
                        actions=routing_pb2.EventRuleActions(urgency=common_pb2.URGENCY_LOW),
                    )
                ]
            )
        )
    )
    reply = await trigger(stack, "disk 80% full on db1")
    assert reply.incident.urgency == common_pb2.URGENCY_LOW
    await stack.pager.expect_sms("alice", "disk 80% full on db1")
    await stack.tick(minutes=10)
    await stack.pager.expect_no_more_pages()  # low urgency: no voice call after a minute


async def test_round_robin_passes_over_a_schedule_with_nobody_on_call(stack: FullStack) -> None:
    await people(stack)
    await stack.schedule("later", ["carol"], start="2027-06-01T00:00")  # nobody on call yet
    await stack.escalation_client.CreatePolicy(
        escalation_pb2.CreatePolicyRequest(
            policy=escalation_pb2.EscalationPolicy(
                id="payments",
                name="Payments",
                levels=[
                    escalation_pb2.EscalationLevel(
                        targets=[user("alice"), schedule("later"), user("bob")],
                        delay=Duration(seconds=30 * MINUTE),
                        strategy=escalation_pb2.LEVEL_STRATEGY_ROUND_ROBIN,
                    )
                ],
            )
        )
    )
    await trigger(stack, "first")
    await stack.pager.expect_sms("alice", "first")
    await trigger(stack, "second")  # the schedule's turn: nobody there, so bob
    await stack.pager.expect_sms("bob", "second")
    await trigger(stack, "third")  # bob's own turn
    await stack.pager.expect_sms("bob", "third")
    await stack.pager.expect_no_more_pages()
