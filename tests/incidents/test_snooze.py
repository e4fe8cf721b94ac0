"""Snooze: a durable timer in the incident's slot triggers the incident again when the snooze
ends, unless a later action made that snooze stale. The clock is manual; tests fire the
timer worker themselves."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.incidents.harness import Served, cli_actor, event_kinds, events_of, trigger_request
from tocsin.incidents.domain import timestamp
from tocsin.runtime.events import incident_shard
from tocsin.v1 import incidents_pb2

TRIGGERED = incidents_pb2.INCIDENT_STATUS_TRIGGERED
ACKNOWLEDGED = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED


async def _snooze(served: Served, incident_id: str, minutes: int) -> incidents_pb2.Incident:
    reply = await served.stub.Snooze(
        incidents_pb2.SnoozeRequest(
            incident_id=incident_id, duration=Duration(seconds=minutes * 60), actor=cli_actor()
        )
    )
    return reply.incident


async def _status(served: Served, incident_id: str) -> incidents_pb2.Incident:
    reply = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_timeline=True)
    )
    return reply.incident


async def test_snooze_ends_with_the_incident_triggered_again(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    snoozed = await _snooze(served, incident.id, 30)
    assert snoozed.status == ACKNOWLEDGED
    assert snoozed.snoozed_until == timestamp(served.clock.now_ms() + 30 * 60_000)
    worker = served.running.snooze_worker
    timers = worker.store
    assert await timers.pending_count(incident_shard(incident.id)) == 1

    served.clock.advance(minutes=29)
    assert await worker.run_once() == 0
    assert (await _status(served, incident.id)).status == ACKNOWLEDGED

    served.clock.advance(minutes=2)
    assert await worker.run_once() == 1
    after = await _status(served, incident.id)
    assert after.status == TRIGGERED
    assert not after.HasField("snoozed_until")
    assert after.timeline[-1].kind == incidents_pb2.TIMELINE_KIND_UNSNOOZED
    events = await events_of(served.redis, incident.id)
    assert event_kinds(events) == ["TRIGGERED", "SNOOZED", "UNSNOOZED"]
    assert events[-1].incident.status == TRIGGERED
    assert await timers.pending_count(incident_shard(incident.id)) == 0
    assert await worker.run_once() == 0


@pytest.mark.parametrize("action", ["acknowledge", "resolve", "reassign"])
async def test_a_later_action_cancels_the_snooze(served_with_peers: Served, action: str) -> None:
    served = served_with_peers
    incident = (await served.stub.Trigger(trigger_request())).incident
    await _snooze(served, incident.id, 30)
    served.clock.advance(minutes=10)
    if action == "acknowledge":
        reply = await served.stub.Acknowledge(
            incidents_pb2.AcknowledgeRequest(incident_id=incident.id, actor=cli_actor("bob"))
        )
        assert reply.changed  # acknowledging a snoozed incident ends the snooze
        expected = ACKNOWLEDGED
    elif action == "resolve":
        await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=incident.id))
        expected = incidents_pb2.INCIDENT_STATUS_RESOLVED
    else:
        await served.stub.Reassign(
            incidents_pb2.ReassignRequest(
                incident_id=incident.id, assignment=incidents_pb2.Assignment(user_id="carol")
            )
        )
        expected = TRIGGERED
    timers = served.running.snooze_worker.store
    assert await timers.pending_count(incident_shard(incident.id)) == 0
    served.clock.advance(minutes=30)
    assert await served.running.snooze_worker.run_once() == 0
    after = await _status(served, incident.id)
    assert after.status == expected
    assert not after.HasField("snoozed_until")
    assert "UNSNOOZED" not in event_kinds(await events_of(served.redis, incident.id))


async def test_a_new_snooze_replaces_the_old_one(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    await _snooze(served, incident.id, 30)
    await _snooze(served, incident.id, 60)
    served.clock.advance(minutes=31)
    assert await served.running.snooze_worker.run_once() == 0
    assert (await _status(served, incident.id)).status == ACKNOWLEDGED
    served.clock.advance(minutes=30)
    assert await served.running.snooze_worker.run_once() == 1
    assert (await _status(served, incident.id)).status == TRIGGERED


async def test_a_stale_or_repeated_firing_changes_nothing(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    first = await _snooze(served, incident.id, 30)
    first_due = first.snoozed_until.ToMilliseconds()
    await _snooze(served, incident.id, 60)
    store = served.running.store
    assert not await store.unsnooze(incident.id, first_due, "")  # the replaced snooze
    served.clock.advance(minutes=61)
    assert await served.running.snooze_worker.run_once() == 1
    due = served.clock.now_ms()
    assert not await store.unsnooze(incident.id, due, "")  # already triggered again
    assert not await store.unsnooze("999", due, "")  # expired incident
    kinds = event_kinds(await events_of(served.redis, incident.id))
    assert kinds == ["TRIGGERED", "SNOOZED", "SNOOZED", "UNSNOOZED"]


async def test_snooze_duration_must_be_between_a_minute_and_a_week(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    for seconds in (59, 7 * 86400 + 1, 0):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _snooze_seconds(served, incident.id, seconds)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert event_kinds(await events_of(served.redis, incident.id)) == ["TRIGGERED"]


async def _snooze_seconds(served: Served, incident_id: str, seconds: int) -> None:
    await served.stub.Snooze(
        incidents_pb2.SnoozeRequest(incident_id=incident_id, duration=Duration(seconds=seconds))
    )
