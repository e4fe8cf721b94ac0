"""Noise control in the incidents service over real gRPC, on a standalone Redis and a
3-master Cluster: event rules (suppress, severity, dedup key, route, a rule that fails),
alert grouping by time and by content, merging, heartbeat monitors."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.incidents.harness import (
    Served,
    cli_actor,
    event_kinds,
    events_of,
    trigger_request,
    violated_fields,
)
from tocsin.incidents import heartbeat
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2

EQUALS = routing_pb2.MATCH_OPERATOR_EQUALS
CONTAINS = routing_pb2.MATCH_OPERATOR_CONTAINS
REGEX = routing_pb2.MATCH_OPERATOR_REGEX
EXISTS = routing_pb2.MATCH_OPERATOR_EXISTS


def rule(
    rule_id: str, *conditions: routing_pb2.EventCondition, **actions: Any
) -> routing_pb2.EventRule:
    return routing_pb2.EventRule(
        id=rule_id, conditions=conditions, actions=routing_pb2.EventRuleActions(**actions)
    )


def cond(field: str, operator: int, value: str = "") -> routing_pb2.EventCondition:
    return routing_pb2.EventCondition(field=field, operator=operator, value=value)  # type: ignore[arg-type]


async def set_rules(served: Served, service_id: str, *rules: routing_pb2.EventRule) -> None:
    await served.stub.SetEventRules(
        routing_pb2.SetEventRulesRequest(
            rule_set=routing_pb2.EventRuleSet(service_id=service_id, rules=rules)
        )
    )


async def timeline(served: Served, incident_id: str) -> list[incidents_pb2.TimelineEntry]:
    reply = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_timeline=True)
    )
    return list(reply.incident.timeline)


async def test_a_suppressing_rule_records_the_alert_and_opens_nothing(served: Served) -> None:
    await set_rules(
        served,
        "payments-api",
        rule("tls-expiry", cond("summary", CONTAINS, "certificate expires"), suppress=True),
    )
    reply = await served.stub.Trigger(trigger_request("TLS certificate expires in 30 days"))
    assert reply.suppressed_by == "payments-api/tls-expiry"
    assert not reply.incident.id and not reply.created
    listed = await served.stub.ListIncidents(incidents_pb2.ListIncidentsRequest())
    assert list(listed.incidents) == []
    suppressed = await served.stub.ListSuppressedAlerts(
        routing_pb2.ListSuppressedAlertsRequest(service_id="payments-api")
    )
    assert suppressed.total == 1
    assert [(a.summary, a.rule) for a in suppressed.alerts] == [
        ("TLS certificate expires in 30 days", "payments-api/tls-expiry")
    ]
    # another alert is not suppressed and opens an incident
    other = await served.stub.Trigger(trigger_request("disk full", dedup_key="disk"))
    assert other.created and not other.suppressed_by


async def test_rules_set_severity_and_dedup_key_and_the_timeline_names_them(
    served: Served,
) -> None:
    await set_rules(
        served,
        "",
        rule(
            "lower-info",
            cond("details.env", EQUALS, "staging"),
            severity=common_pb2.SEVERITY_INFO,
            dedup_key_template="{source}/{details.check}",
        ),
    )
    request = trigger_request(source="db-1", dedup_key="ignored-1")
    request.details.update({"env": "staging", "check": "cpu"})
    first = await served.stub.Trigger(request)
    assert first.dedup_key == "db-1/cpu"
    assert first.incident.severity == common_pb2.SEVERITY_INFO
    request.dedup_key = "ignored-2"
    second = await served.stub.Trigger(request)
    assert second.incident.id == first.incident.id and not second.created
    entries = await timeline(served, first.incident.id)
    assert entries[0].attributes["event_rules"] == (
        "global/lower-info: severity critical -> info; global/lower-info: dedup key 'db-1/cpu'"
    )
    assert "global/lower-info" in entries[0].message


async def test_a_global_rule_routes_to_another_service_whose_rules_then_apply(
    served: Served,
) -> None:
    await served.stub.CreateService(
        incidents_pb2.CreateServiceRequest(service=incidents_pb2.Service(id="db-team"))
    )
    await set_rules(
        served, "", rule("db", cond("component", EQUALS, "postgres"), route_to_service_id="db-team")
    )
    await set_rules(
        served,
        "db-team",
        rule("warn", cond("source", EXISTS), severity=common_pb2.SEVERITY_WARNING),
    )
    reply = await served.stub.Trigger(trigger_request(component="postgres", source="db-1"))
    assert reply.incident.service_id == "db-team"
    assert reply.incident.severity == common_pb2.SEVERITY_WARNING
    attributes = (await timeline(served, reply.incident.id))[0].attributes
    assert "global/db: routed to service db-team" in attributes["event_rules"]
    assert "db-team/warn: severity critical -> warning" in attributes["event_rules"]


async def test_a_rule_that_runs_out_of_time_never_drops_the_alert(served: Served) -> None:
    # (a|aa)+$ backtracks exponentially on "aaaa...b": the search hits its time limit
    await set_rules(
        served,
        "payments-api",
        rule("evil", cond("summary", REGEX, "(a|aa)+$"), suppress=True),
        rule("next", cond("summary", CONTAINS, "aaa"), severity=common_pb2.SEVERITY_ERROR),
    )
    reply = await served.stub.Trigger(trigger_request("a" * 60 + "b"))
    assert reply.created and not reply.suppressed_by  # it pages as if the rule did not match
    assert reply.incident.severity == common_pb2.SEVERITY_ERROR  # the next rule still ran
    attributes = (await timeline(served, reply.incident.id))[0].attributes
    assert (
        "payments-api/evil: the regular expression on summary ran out of time"
        in (attributes["event_rule_failures"])
    )
    assert await events_of(served.redis, reply.incident.id)  # the outbox has its TRIGGERED


async def test_bad_rules_are_refused_naming_the_field_and_nothing_is_written(
    served: Served,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await set_rules(
            served,
            "payments-api",
            rule("a", cond("summary", REGEX, "(unclosed"), suppress=True),
            rule("b", cond("colour", EQUALS, "red")),
            rule("c", cond("source", EXISTS), route_to_service_id="nope"),
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(raised.value) == [
        "rule_set.rules[0].conditions[0].value",
        "rule_set.rules[1].conditions[0].field",
        "rule_set.rules[1].actions",
    ]
    got = await served.stub.GetEventRules(
        routing_pb2.GetEventRulesRequest(service_id="payments-api")
    )
    assert list(got.rule_set.rules) == []


async def _group_by(served: Served, grouping: routing_pb2.AlertGrouping) -> None:
    service = (
        await served.stub.GetService(incidents_pb2.GetServiceRequest(id="payments-api"))
    ).service
    service.grouping.CopyFrom(grouping)
    await served.stub.UpdateService(incidents_pb2.UpdateServiceRequest(service=service))


async def test_grouping_by_time_joins_alerts_within_the_window(served: Served) -> None:
    await _group_by(served, routing_pb2.AlertGrouping(window=Duration(seconds=300)))
    first = await served.stub.Trigger(trigger_request("disk full on db-1", dedup_key="disk-db-1"))
    served.clock.advance(minutes=4)
    second = await served.stub.Trigger(trigger_request("cpu high on db-2", dedup_key="cpu-db-2"))
    assert first.created and not second.created
    assert second.incident.id == first.incident.id
    assert second.incident.alert_count == 2
    served.clock.advance(minutes=6)  # past the window since the last alert: a new incident
    third = await served.stub.Trigger(trigger_request("memory on db-3", dedup_key="mem-db-3"))
    assert third.created and third.incident.id != first.incident.id
    assert event_kinds(await events_of(served.redis, first.incident.id)) == [
        "TRIGGERED",
        "ALERT_ADDED",
    ]


async def test_grouping_by_content_joins_alerts_with_the_same_values(served: Served) -> None:
    await _group_by(served, routing_pb2.AlertGrouping(fields=["component", "details.region"]))

    def alert(key: str, component: str, region: str) -> incidents_pb2.TriggerRequest:
        request = trigger_request(f"{component} down", dedup_key=key, component=component)
        request.details.update({"region": region})
        return request

    a = await served.stub.Trigger(alert("k1", "postgres", "eu"))
    b = await served.stub.Trigger(alert("k2", "postgres", "eu"))
    c = await served.stub.Trigger(alert("k3", "postgres", "us"))
    assert a.created and not b.created and c.created
    assert b.incident.id == a.incident.id != c.incident.id


async def test_bad_grouping_is_refused_naming_the_field(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _group_by(
            served,
            routing_pb2.AlertGrouping(window=Duration(seconds=60), fields=["colour"]),
        )
    assert violated_fields(raised.value) == [
        "service.grouping.fields[0]",
        "service.grouping",
    ]


async def test_merging_moves_the_alerts_and_resolves_the_merged_incident(served: Served) -> None:
    a = (await served.stub.Trigger(trigger_request("db down", dedup_key="a"))).incident
    b = (await served.stub.Trigger(trigger_request("api errors", dedup_key="b"))).incident
    await served.stub.Trigger(trigger_request("api errors again", dedup_key="b"))
    request = incidents_pb2.MergeIncidentsRequest(
        incident_id=a.id, merged_incident_id=b.id, actor=cli_actor()
    )
    merged = await served.stub.MergeIncidents(request)
    assert merged.alerts_moved == 2
    assert merged.incident.alert_count == 3
    again = await served.stub.MergeIncidents(request)  # a retry moves nothing twice
    assert again.alerts_moved == 0 and again.incident.alert_count == 3
    got_b = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=b.id, include_timeline=True)
    )
    assert got_b.incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
    assert got_b.incident.timeline[-1].message.startswith(f"Resolved: merged into incident #{a.id}")
    assert (await timeline(served, a.id))[-1].message.startswith(f"Merged incident #{b.id}")


async def test_after_a_merge_the_merged_key_routes_to_the_open_incident_until_it_resolves(
    served: Served,
) -> None:
    """B's dedup key joins A after B was merged into A (also through A merged on into C,
    and by the fast path of a process that saw B open); once C resolves, B's key, like
    C's own, opens a new incident. Acknowledging by B's key acknowledges where it routes."""
    stub = served.stub

    async def trigger(key: str) -> incidents_pb2.TriggerResponse:
        return await stub.Trigger(trigger_request(f"alert on {key}", dedup_key=key))

    a = (await trigger("merge-a")).incident
    b = (await trigger("merge-b")).incident
    c = (await trigger("merge-c")).incident
    await trigger("merge-b")  # this process now remembers B as open under its key
    await stub.MergeIncidents(
        incidents_pb2.MergeIncidentsRequest(
            incident_id=a.id, merged_incident_id=b.id, actor=cli_actor()
        )
    )
    joined = await trigger("merge-b")
    assert (joined.incident.id, joined.created) == (a.id, False)
    assert joined.incident.alert_count == 4  # A's one, B's two, this one
    await stub.MergeIncidents(
        incidents_pb2.MergeIncidentsRequest(
            incident_id=c.id, merged_incident_id=a.id, actor=cli_actor()
        )
    )
    for key in ("merge-b", "merge-a", "merge-c"):
        routed = await trigger(key)
        assert (routed.incident.id, routed.created) == (c.id, False), key
    acked = await stub.Acknowledge(
        incidents_pb2.AcknowledgeRequest(
            service_id="payments-api", dedup_key="merge-b", actor=cli_actor()
        )
    )
    assert acked.incident.id == c.id
    await stub.Resolve(incidents_pb2.ResolveRequest(incident_id=c.id, actor=cli_actor()))
    fresh = await trigger("merge-b")
    assert fresh.created and fresh.incident.id not in (a.id, b.id, c.id)
    again = await trigger("merge-b")
    assert (again.incident.id, again.created) == (fresh.incident.id, False)
    fresh_a = await trigger("merge-a")
    assert fresh_a.created and fresh_a.incident.id not in (a.id, b.id, c.id, fresh.incident.id)


async def test_a_missed_heartbeat_opens_one_incident_and_a_ping_resolves_it(
    served: Served,
) -> None:
    created = await served.stub.CreateHeartbeatMonitor(
        routing_pb2.CreateHeartbeatMonitorRequest(
            monitor=routing_pb2.HeartbeatMonitor(
                id="nightly-backup",
                service_id="payments-api",
                interval=Duration(seconds=600),
                grace=Duration(seconds=60),
            )
        )
    )
    token = created.monitor.token
    assert len(token) >= 16 and not created.monitor.missed
    worker = served.running.heartbeat_worker
    served.clock.advance(minutes=10)
    await served.stub.PingHeartbeat(routing_pb2.PingHeartbeatRequest(token=token))
    served.clock.advance(minutes=10)
    assert await worker.run_once() == 0  # the ping re-armed it: not due yet
    served.clock.advance(minutes=2)
    assert await worker.run_once() == 1
    listed = await served.stub.ListIncidents(incidents_pb2.ListIncidentsRequest())
    assert [i.dedup_key for i in listed.incidents] == ["heartbeat:nightly-backup"]
    incident = listed.incidents[0]
    assert incident.summary.startswith("Heartbeat missed: nightly-backup")
    served.clock.advance(hours=5)
    assert await worker.run_once() == 0  # one timer, fired once: no second incident
    monitor = (
        await served.stub.GetHeartbeatMonitor(
            routing_pb2.GetHeartbeatMonitorRequest(id="nightly-backup")
        )
    ).monitor
    assert monitor.missed
    ping = await served.stub.PingHeartbeat(routing_pb2.PingHeartbeatRequest(token=token))
    assert ping.recovered and ping.monitor_id == "nightly-backup"
    got = await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id=incident.id))
    assert got.incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.PingHeartbeat(routing_pb2.PingHeartbeatRequest(token="x" * 32))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_heartbeat_timer_fired_twice_opens_one_incident(served: Served) -> None:
    """A replica that died after opening the incident but before completing its timer:
    the timer fires again after its lease and opens nothing more."""
    await served.stub.CreateHeartbeatMonitor(
        routing_pb2.CreateHeartbeatMonitorRequest(
            monitor=routing_pb2.HeartbeatMonitor(
                id="cron", service_id="payments-api", interval=Duration(seconds=60)
            )
        )
    )
    served.clock.advance(minutes=2)
    store = served.running.servicer.heartbeats
    claimed = await store.timers.claim_due(0, 10, lease_ms=30_000)
    assert [t.timer_id for t in claimed] == ["cron"]
    monitor = await store.expire("cron", claimed[0].payload)
    assert monitor is not None
    await served.running.servicer.open_heartbeat_incident(monitor)
    # ... the replica dies here; the lease ends and another replica fires the timer
    served.clock.advance(minutes=1)
    assert await served.running.heartbeat_worker.run_once() == 1
    listed = await served.stub.ListIncidents(incidents_pb2.ListIncidentsRequest())
    assert len(listed.incidents) == 1
    assert listed.incidents[0].alert_count == 1
    events = await events_of(served.redis, listed.incidents[0].id)
    assert event_kinds(events) == ["TRIGGERED"]


async def test_a_rule_sets_the_urgency_of_the_incident_it_opens(served: Served) -> None:
    await set_rules(
        served,
        "payments-api",
        rule("quiet", cond("severity", EQUALS, "warning"), urgency=common_pb2.URGENCY_LOW),
    )
    low = await served.stub.Trigger(trigger_request(severity=common_pb2.SEVERITY_WARNING))
    assert low.incident.urgency == common_pb2.URGENCY_LOW
    assert low.incident.urgency_reason == "event rule payments-api/quiet"
    attributes = (await timeline(served, low.incident.id))[0].attributes
    assert attributes["event_rules"] == "payments-api/quiet: urgency low"
    high = await served.stub.Trigger(trigger_request("other", dedup_key="other"))
    assert high.incident.urgency != common_pb2.URGENCY_LOW  # no rule: the service decides


async def test_a_ping_between_the_miss_and_the_incident_resolves_it(served: Served) -> None:
    created = await served.stub.CreateHeartbeatMonitor(
        routing_pb2.CreateHeartbeatMonitorRequest(
            monitor=routing_pb2.HeartbeatMonitor(
                id="late", service_id="payments-api", interval=Duration(seconds=60)
            )
        )
    )
    served.clock.advance(minutes=2)
    store = served.running.servicer.heartbeats
    claimed = await store.timers.claim_due(0, 10, lease_ms=30_000)
    monitor = await store.expire("late", claimed[0].payload)
    assert monitor is not None
    ping = await served.stub.PingHeartbeat(
        routing_pb2.PingHeartbeatRequest(token=created.monitor.token)
    )
    assert not ping.recovered  # no incident yet
    await served.running.servicer.open_heartbeat_incident(monitor)
    listed = await served.stub.ListIncidents(incidents_pb2.ListIncidentsRequest())
    assert [i.status for i in listed.incidents] == [incidents_pb2.INCIDENT_STATUS_RESOLVED]


async def test_a_new_heartbeat_token_never_starts_with_a_dash(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token starting with '-' is taken for an option by `tocsin heartbeat ping`: such a
    draw is drawn again."""
    draws = iter(["-" + "a" * 31, "b" * 32])
    monkeypatch.setattr(heartbeat.secrets, "token_urlsafe", lambda n: next(draws))
    created = await served.stub.CreateHeartbeatMonitor(
        routing_pb2.CreateHeartbeatMonitorRequest(
            monitor=routing_pb2.HeartbeatMonitor(
                id="etl", service_id="payments-api", interval=Duration(seconds=3600)
            )
        )
    )
    assert created.monitor.token == "b" * 32
