"""Reassign hands an incident only to a user or policy that exists: an unknown one is
NOT_FOUND naming it, a peer that cannot answer is UNAVAILABLE, and either way nothing is
written (no event, no timeline entry, the incident as it was)."""

from __future__ import annotations

import grpc
import pytest

from tests.incidents.harness import (
    Served,
    cli_actor,
    create_payments,
    event_kinds,
    events_of,
    serve_incidents,
    trigger_request,
)
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2

TRIGGERED = incidents_pb2.INCIDENT_STATUS_TRIGGERED
ACKNOWLEDGED = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED


async def _acknowledged(served: Served) -> incidents_pb2.Incident:
    incident = (await served.stub.Trigger(trigger_request())).incident
    reply = await served.stub.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident.id, actor=cli_actor())
    )
    return reply.incident


async def _full(served: Served, incident_id: str) -> incidents_pb2.Incident:
    reply = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=incident_id, include_timeline=True)
    )
    return reply.incident


async def test_reassign_triggers_again_for_the_new_assignee(served_with_peers: Served) -> None:
    served = served_with_peers
    incident = await _acknowledged(served)
    reply = await served.stub.Reassign(
        incidents_pb2.ReassignRequest(
            incident_id=incident.id,
            assignment=incidents_pb2.Assignment(user_id="bob"),
            actor=cli_actor(),
        )
    )
    assert reply.incident.status == TRIGGERED
    assert reply.incident.assignment.user_id == "bob"
    events = await events_of(served.redis, incident.id)
    assert event_kinds(events) == ["TRIGGERED", "ACKNOWLEDGED", "REASSIGNED"]
    assert events[-1].incident.assignment.user_id == "bob"
    policy = await served.stub.Reassign(
        incidents_pb2.ReassignRequest(
            incident_id=incident.id,
            assignment=incidents_pb2.Assignment(escalation_policy_id="other"),
        )
    )
    assert policy.incident.assignment.escalation_policy_id == "other"


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        (incidents_pb2.Assignment(user_id="zed"), "user 'zed'"),
        (incidents_pb2.Assignment(escalation_policy_id="nopolicy"), "escalation policy 'nopolicy'"),
    ],
)
async def test_reassign_to_nobody_is_not_found_and_writes_nothing(
    served_with_peers: Served, assignment: incidents_pb2.Assignment, named: str
) -> None:
    served = served_with_peers
    incident = await _acknowledged(served)
    before = await _full(served, incident.id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.Reassign(
            incidents_pb2.ReassignRequest(
                incident_id=incident.id, assignment=assignment, actor=cli_actor()
            )
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert named in (refused.value.details() or "")
    assert await _full(served, incident.id) == before
    assert event_kinds(await events_of(served.redis, incident.id)) == [
        "TRIGGERED",
        "ACKNOWLEDGED",
    ]


async def test_reassign_when_scheduling_cannot_answer_writes_nothing(
    redis: RedisClient, clock: ManualClock
) -> None:
    nowhere = {"TOCSIN_SCHEDULING_ADDR": "127.0.0.1:9", "TOCSIN_ESCALATION_ADDR": "127.0.0.1:9"}
    async with serve_incidents(redis, clock, nowhere) as served:
        await create_payments(served.stub)
        incident = await _acknowledged(served)
        before = await _full(served, incident.id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.Reassign(
                incidents_pb2.ReassignRequest(
                    incident_id=incident.id, assignment=incidents_pb2.Assignment(user_id="bob")
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "user 'bob'" in (refused.value.details() or "")
        assert await _full(served, incident.id) == before


async def test_reassign_of_an_unknown_incident_asks_nobody(
    redis: RedisClient, clock: ManualClock
) -> None:
    nowhere = {"TOCSIN_SCHEDULING_ADDR": "127.0.0.1:9"}
    async with serve_incidents(redis, clock, nowhere) as served:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await served.stub.Reassign(
                incidents_pb2.ReassignRequest(
                    incident_id="999999", assignment=incidents_pb2.Assignment(user_id="bob")
                )
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert "incident 999999" in (refused.value.details() or "")
