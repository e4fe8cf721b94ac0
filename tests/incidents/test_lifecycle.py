"""Incident lifecycle over real gRPC: dedup, checked transitions, and an outbox event in the
shard stream exactly when the state changed. Standalone Redis and Cluster."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from opentelemetry import trace

from tests.incidents.harness import (
    PAYMENTS_KEY,
    Served,
    cli_actor,
    event_kinds,
    events_of,
    trigger_request,
)
from tocsin.client.channel import create_channel
from tocsin.incidents import keys
from tocsin.incidents.domain import dedup_shard
from tocsin.v1 import common_pb2, incidents_pb2, incidents_pb2_grpc

TRIGGERED = incidents_pb2.INCIDENT_STATUS_TRIGGERED
ACKNOWLEDGED = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
RESOLVED = incidents_pb2.INCIDENT_STATUS_RESOLVED


async def test_trigger_repeat_ack_resolve_with_one_event_per_change(served: Served) -> None:
    stub = served.stub
    first = await stub.Trigger(trigger_request(severity=common_pb2.SEVERITY_WARNING, source="db-1"))
    assert first.created
    incident = first.incident
    assert incident.status == TRIGGERED
    assert incident.service_id == "payments-api"
    assert incident.assignment.escalation_policy_id == "payments"
    assert (incident.alert_count, incident.version) == (1, 1)
    assert int(incident.id) % 16 == dedup_shard("payments-api", "cpu-db-1")

    served.clock.advance(minutes=1)
    repeat = await stub.Trigger(
        trigger_request("CPU still high", severity=common_pb2.SEVERITY_CRITICAL)
    )
    assert not repeat.created
    assert repeat.incident.id == incident.id
    assert repeat.incident.alert_count == 2
    assert repeat.incident.severity == common_pb2.SEVERITY_CRITICAL
    assert repeat.incident.summary == "CPU high on db-1"  # the first alert's
    assert repeat.incident.last_alert_at.ToMilliseconds() == served.clock.now_ms()

    ack = await stub.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident.id, actor=cli_actor())
    )
    assert ack.changed and ack.incident.status == ACKNOWLEDGED
    assert ack.incident.acknowledged_by.display == "alice"
    again = await stub.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident.id, actor=cli_actor("bob"))
    )
    assert not again.changed
    assert again.incident.acknowledged_by.display == "alice"
    assert again.incident.version == ack.incident.version

    resolved = await stub.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
    assert resolved.changed and resolved.incident.status == RESOLVED
    assert resolved.incident.alert_count == 2  # counters survive the state write
    repeat_resolve = await stub.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
    assert not repeat_resolve.changed

    events = await events_of(served.redis, incident.id)
    assert event_kinds(events) == ["TRIGGERED", "ALERT_ADDED", "ACKNOWLEDGED", "RESOLVED"]
    assert events[1].alert.summary == "CPU still high" and events[1].alert.id == "2"
    assert [e.incident.version for e in events] == [1, 2, 3, 4]
    assert events[2].actor.channel == common_pb2.CHANNEL_CLI
    assert events[3].incident.status == RESOLVED

    full = await stub.GetIncident(
        incidents_pb2.GetIncidentRequest(
            incident_id=incident.id, include_alerts=True, include_timeline=True
        )
    )
    assert [a.id for a in full.incident.alerts] == ["1", "2"]
    assert [e.kind for e in full.incident.timeline] == [
        incidents_pb2.TIMELINE_KIND_TRIGGERED,
        incidents_pb2.TIMELINE_KIND_ALERT,
        incidents_pb2.TIMELINE_KIND_ACKNOWLEDGED,
        incidents_pb2.TIMELINE_KIND_RESOLVED,
    ]


async def test_a_resolved_key_opens_a_new_incident(served: Served) -> None:
    first = await served.stub.Trigger(trigger_request())
    await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=first.incident.id))
    second = await served.stub.Trigger(trigger_request())
    assert second.created and second.incident.id != first.incident.id
    assert second.incident.alert_count == 1


async def test_acting_on_a_resolved_incident_is_a_failed_precondition(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
    before = len(await events_of(served.redis, incident.id))
    calls = [
        served.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident.id)),
        served.stub.Snooze(
            incidents_pb2.SnoozeRequest(incident_id=incident.id, duration=Duration(seconds=600))
        ),
        served.stub.Reassign(
            incidents_pb2.ReassignRequest(
                incident_id=incident.id, assignment=incidents_pb2.Assignment(user_id="bob")
            )
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(await events_of(served.redis, incident.id)) == before


async def test_ack_and_resolve_by_dedup_key_and_integration_key(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request(dedup_key="disk"))).incident
    ack = await served.stub.Acknowledge(
        incidents_pb2.AcknowledgeRequest(service_id="payments-api", dedup_key="disk")
    )
    assert ack.changed and ack.incident.id == incident.id
    resolved = await served.stub.Resolve(
        incidents_pb2.ResolveRequest(integration_key=PAYMENTS_KEY, dedup_key="disk")
    )
    assert resolved.changed and resolved.incident.id == incident.id
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await served.stub.Resolve(
            incidents_pb2.ResolveRequest(integration_key=PAYMENTS_KEY, dedup_key="disk")
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_trigger_by_integration_key_and_generated_dedup_keys(served: Served) -> None:
    one = await served.stub.Trigger(
        incidents_pb2.TriggerRequest(integration_key=PAYMENTS_KEY, summary="a")
    )
    two = await served.stub.Trigger(
        incidents_pb2.TriggerRequest(integration_key=PAYMENTS_KEY, summary="a")
    )
    assert one.created and two.created
    assert len(one.dedup_key) == 32 and one.dedup_key != two.dedup_key
    assert one.incident.dedup_key == one.dedup_key
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await served.stub.Trigger(
            incidents_pb2.TriggerRequest(integration_key="f" * 32, summary="a")
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_fifty_concurrent_acks_change_it_once(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    channels = [create_channel(served.target) for _ in range(10)]
    try:
        stubs = [incidents_pb2_grpc.IncidentServiceStub(channel) for channel in channels]
        replies = await asyncio.gather(
            *(
                stubs[i % 10].Acknowledge(
                    incidents_pb2.AcknowledgeRequest(
                        incident_id=incident.id, actor=cli_actor(f"user{i}")
                    )
                )
                for i in range(50)
            )
        )
    finally:
        for channel in channels:
            await channel.close()
    assert sum(reply.changed for reply in replies) == 1
    winner = next(reply for reply in replies if reply.changed)
    assert all(r.incident.acknowledged_by == winner.incident.acknowledged_by for r in replies)
    assert event_kinds(await events_of(served.redis, incident.id)) == [
        "TRIGGERED",
        "ACKNOWLEDGED",
    ]


async def test_concurrent_triggers_with_one_key_open_one_incident(served: Served) -> None:
    replies = await asyncio.gather(
        *(served.stub.Trigger(trigger_request(f"alert {i}", "storm")) for i in range(50))
    )
    assert sum(reply.created for reply in replies) == 1
    assert len({reply.incident.id for reply in replies}) == 1
    assert sorted(reply.incident.alert_count for reply in replies) == list(range(1, 51))
    incident_id = replies[0].incident.id
    kinds = event_kinds(await events_of(served.redis, incident_id))
    assert kinds == ["TRIGGERED"] + ["ALERT_ADDED"] * 49


async def test_repeats_during_acknowledgement_lose_no_update(served: Served) -> None:
    """Repeat alerts and a CAS write interleave: neither the count nor the ack is lost."""
    incident = (await served.stub.Trigger(trigger_request())).incident
    ack = served.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident.id))
    repeats = [served.stub.Trigger(trigger_request()) for _ in range(30)]
    await asyncio.gather(ack, *repeats)
    final = await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id=incident.id))
    assert final.incident.status == ACKNOWLEDGED
    assert final.incident.alert_count == 31
    assert final.incident.version == 32


async def test_stored_alerts_are_capped_but_counted(served: Served) -> None:
    served.running.store.alerts_kept = 5
    for i in range(8):
        reply = await served.stub.Trigger(trigger_request(f"alert {i}"))
    assert reply.incident.alert_count == 8
    full = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(
            incident_id=reply.incident.id, include_alerts=True, include_timeline=True
        )
    )
    assert [a.id for a in full.incident.alerts] == ["4", "5", "6", "7", "8"]
    assert full.incident.alerts[-1].summary == "alert 7"
    assert len(full.incident.timeline) == 5  # TRIGGERED + 4 alerts, then only counted


async def test_notes_and_idempotent_timeline_appends(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    note = await served.stub.AddNote(
        incidents_pb2.AddNoteRequest(
            incident_id=incident.id, text="rolled back\nv2.3", actor=cli_actor()
        )
    )
    assert note.entry.kind == incidents_pb2.TIMELINE_KIND_NOTE
    page = incidents_pb2.TimelineEntry(
        kind=incidents_pb2.TIMELINE_KIND_ESCALATED,
        message="Paged alice (level 1)",
        attributes={"level": "1", "user_id": "alice"},
    )
    request = incidents_pb2.AppendTimelineRequest(
        incident_id=incident.id, entry=page, idempotency_key=f"{incident.id}/0/0/alice"
    )
    assert (await served.stub.AppendTimeline(request)).appended
    assert not (await served.stub.AppendTimeline(request)).appended
    full = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident.id, include_timeline=True)
    )
    kinds = [e.kind for e in full.incident.timeline]
    assert kinds == [
        incidents_pb2.TIMELINE_KIND_TRIGGERED,
        incidents_pb2.TIMELINE_KIND_NOTE,
        incidents_pb2.TIMELINE_KIND_ESCALATED,
    ]
    escalated = full.incident.timeline[2]
    assert escalated.at.ToMilliseconds() == served.clock.now_ms()  # defaulted
    assert escalated.actor.channel == common_pb2.CHANNEL_API
    warning = incidents_pb2.TimelineEntry(kind=incidents_pb2.TIMELINE_KIND_WARNING, message="w")
    await served.stub.AppendTimeline(
        incidents_pb2.AppendTimelineRequest(incident_id=incident.id, entry=warning)
    )
    events = await events_of(served.redis, incident.id)
    # An escalation hop is an event too (once, however often it is appended: webhooks
    # send it); other appends publish nothing.
    assert event_kinds(events) == ["TRIGGERED", "NOTE_ADDED", "ESCALATED"]
    assert events[1].note == "rolled back\nv2.3"
    assert events[2].note == "Paged alice (level 1)"
    assert events[2].incident.id == incident.id


async def test_unknown_incidents_are_not_found(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id="999"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as missing_note:
        await served.stub.AddNote(incidents_pb2.AddNoteRequest(incident_id="999", text="x"))
    assert missing_note.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as missing_append:
        await served.stub.AppendTimeline(
            incidents_pb2.AppendTimelineRequest(
                incident_id="999",
                entry=incidents_pb2.TimelineEntry(kind=incidents_pb2.TIMELINE_KIND_WARNING),
            )
        )
    assert missing_append.value.code() == grpc.StatusCode.NOT_FOUND


async def test_counters_encode_exactly_past_one_byte_varints(served: Served) -> None:
    """The scripts write alert_count, version and times as protobuf themselves."""
    incident = (await served.stub.Trigger(trigger_request())).incident
    big = 2**40
    await served.redis.hset(keys.incident_key(incident.id), mapping={"n": big, "v": 300})
    served.clock.advance(seconds=1.5)
    repeat = (await served.stub.Trigger(trigger_request())).incident
    assert repeat.alert_count == big + 1
    assert repeat.version == 301
    assert repeat.last_alert_at.ToMilliseconds() == served.clock.now_ms()
    served.clock.advance(seconds=0.5)  # a whole second: nanos 0 must replace 500 ms
    acked = (
        await served.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident.id))
    ).incident
    assert acked.updated_at.ToMilliseconds() == served.clock.now_ms()
    assert acked.updated_at.nanos == 0
    assert (acked.alert_count, acked.version) == (big + 1, 302)


async def test_events_carry_the_callers_trace(served: Served) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = trace.NonRecordingSpan(
        trace.SpanContext(
            int(trace_id, 16),
            0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    )
    # The caller's span is current: the client interceptor propagates its trace (whether
    # or not a tracer provider is installed in this test process).
    with trace.use_span(caller):
        incident = (await served.stub.Trigger(trigger_request())).incident
        await served.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident.id))
    events = await events_of(served.redis, incident.id)
    assert len(events) == 2
    for event in events:
        version, event_trace, _span, _flags = event.traceparent.split("-")
        assert (version, event_trace) == ("00", trace_id)


async def test_ingest_survives_redis_losing_its_scripts(served: Served) -> None:
    """Concurrent triggers share pipelines of EVALSHA; after a restart (SCRIPT FLUSH here)
    each one is retried with the script loaded."""
    await served.stub.Trigger(trigger_request())
    await served.redis.script_flush()
    replies = await asyncio.gather(*(served.stub.Trigger(trigger_request()) for _ in range(5)))
    assert sorted(reply.incident.alert_count for reply in replies) == [2, 3, 4, 5, 6]


async def test_repeats_take_the_fast_path_only_while_the_incident_is_open(served: Served) -> None:
    """A repeat of a key seen open goes through join.lua with the remembered incident id;
    when that incident is resolved, or its keys are gone while the dedup entry stays, the
    next alert opens a new incident all the same."""
    first = (await served.stub.Trigger(trigger_request())).incident
    repeat = (await served.stub.Trigger(trigger_request())).incident
    assert (repeat.id, repeat.alert_count) == (first.id, 2)

    await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=first.id))
    second = await served.stub.Trigger(trigger_request())
    assert second.created and second.incident.id != first.id

    # Its keys vanish (as if expired) while the dedup entry still names it.
    shard = dedup_shard("payments-api", "cpu-db-1")
    assert await served.redis.hget(keys.dedup_key(shard), "payments-api:cpu-db-1") == (
        second.incident.id.encode()
    )
    await served.redis.delete(keys.incident_key(second.incident.id))
    third = await served.stub.Trigger(trigger_request())
    assert third.created and third.incident.id not in (first.id, second.incident.id)
    again = (await served.stub.Trigger(trigger_request())).incident
    assert (again.id, again.alert_count) == (third.incident.id, 2)
    kinds = event_kinds(await events_of(served.redis, third.incident.id))
    assert kinds == ["TRIGGERED", "ALERT_ADDED"]
