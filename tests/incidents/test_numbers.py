"""Incident numbers: one sequence per stack, in the order incidents open, on a standalone
Redis and on a 3-master Cluster (the counter is in a slot of its own there)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest

from tests.incidents.harness import (
    Served,
    events_of,
    gateway_for,
    serve_incidents,
    trigger_request,
)
from tocsin.client.links import incident_link, valid_signature
from tocsin.incidents import keys
from tocsin.incidents.domain import dedup_shard
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.events import INCIDENT_SHARDS, incident_shard
from tocsin.v1 import incidents_pb2


async def _open(served: Served, key: str) -> incidents_pb2.TriggerResponse:
    served.clock.advance(seconds=1)
    return await served.stub.Trigger(trigger_request(f"alert {key}", key))


async def test_numbers_follow_the_order_incidents_open_while_ids_jump(served: Served) -> None:
    opened = [await _open(served, f"k{n}") for n in range(20)]
    assert all(reply.created for reply in opened)
    assert [reply.incident.number for reply in opened] == list(range(1, 21))
    ids = [int(reply.incident.id) for reply in opened]
    assert ids != sorted(ids)  # what numbers are for: ids go by shard
    assert len({incident_shard(str(i)) for i in ids}) > 1

    # Repeats join and take no number, so the next incident is #21, not a gap.
    again = await served.stub.Trigger(trigger_request("alert k3", "k3"))
    assert not again.created and again.incident.number == 4
    assert (await _open(served, "new")).incident.number == 21

    # The number travels in the TRIGGERED event (the pages and the console read it).
    events = await events_of(served.redis, opened[6].incident.id)
    assert events[0].incident.number == 7


async def test_a_number_names_the_incident_in_every_request(served: Served) -> None:
    for n in range(3):
        await _open(served, f"k{n}")
    second = (await _open(served, "second")).incident
    got = await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id="#4"))
    assert got.incident.id == second.id
    acked = await served.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id="#4"))
    assert acked.changed and acked.incident.id == second.id and acked.incident.number == 4
    # An id still names the incident, as before numbers.
    resolved = await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id=second.id))
    assert resolved.incident.number == 4 and resolved.changed

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id="#99"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "incident #99 does not exist" in (missing.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id="#x1"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_first_alerts_of_one_key_take_one_number(served: Served) -> None:
    replies = await asyncio.gather(
        *(served.stub.Trigger(trigger_request("storm", "same")) for _ in range(20))
    )
    assert sum(reply.created for reply in replies) == 1
    assert {reply.incident.number for reply in replies} == {1}
    assert (await _open(served, "next")).incident.number == 2


def _key_in_shard(shard: int, prefix: str) -> str:
    return next(
        f"{prefix}{n}"
        for n in range(10_000)
        if dedup_shard("payments-api", f"{prefix}{n}") == shard
    )


async def test_a_counter_that_went_back_heals_and_duplicates_are_not_guessed(
    served: Served,
) -> None:
    first = (await _open(served, "first")).incident
    for n in range(4):
        await _open(served, f"k{n}")
    # A failover lost the counter's increments. The number reserved before it (#6,
    # taken ahead for the next incident) is still unique and opens the next incident.
    await served.redis.set(keys.NUMBER_SEQUENCE, 0)
    assert (await _open(served, "reserved")).incident.number == 6
    # In another shard #1 is free: a duplicate, which a lookup refuses to guess between.
    other_shard = (incident_shard(first.id) + 1) % INCIDENT_SHARDS
    duplicate = (await _open(served, _key_in_shard(other_shard, "dup"))).incident
    assert duplicate.number == 1
    with pytest.raises(grpc.aio.AioRpcError) as ambiguous:
        await served.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id="#1"))
    assert ambiguous.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert first.id in (ambiguous.value.details() or "")
    # #2 is taken in its shard: refused there (the reserved #2 and a fresh #2), the
    # counter is raised past all.
    await served.redis.set(keys.NUMBER_SEQUENCE, 1)
    second_shard = incident_shard(
        (
            await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id="#2"))
        ).incident.id
    )
    healed = (await _open(served, _key_in_shard(second_shard, "heal"))).incident
    assert healed.number == 7
    assert (await _open(served, "after")).incident.number == 8


async def test_incidents_opened_before_numbers_are_numbered_once_in_opening_order(
    served: Served,
) -> None:
    opened = [(await _open(served, f"k{n}")).incident for n in range(6)]
    # As the store held them before numbers: no number anywhere, no counter.
    for incident in opened:
        ik = keys.incident_key(incident.id)
        p = incidents_pb2.Incident.FromString(keys.as_bytes(await served.redis.hget(ik, "p")))
        p.ClearField("number")
        await served.redis.hset(ik, "p", p.SerializeToString())
        await served.redis.hdel(ik, "nr")
    for shard in range(INCIDENT_SHARDS):
        await served.redis.delete(keys.number_index_key(shard))
    await served.redis.delete(keys.NUMBER_SEQUENCE, keys.NUMBERED)
    before = await served.stub.GetIncident(
        incidents_pb2.GetIncidentRequest(incident_id=opened[0].id)
    )
    assert before.incident.number == 0

    # A restart numbers them (create_server runs it), in the order they opened.
    async with serve_incidents(served.redis, served.clock) as restarted:
        for expected, incident in enumerate(opened, start=1):
            got = await restarted.stub.GetIncident(
                incidents_pb2.GetIncidentRequest(incident_id=f"#{expected}")
            )
            assert got.incident.id == incident.id
        # A writer that read before the numbering cannot write the number away.
        acked = await restarted.stub.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id="#3"))
        assert acked.incident.number == 3
        assert (await _open(restarted, "new")).incident.number == 7
    assert await served.running.store.number_existing() == 0  # once


async def test_trimming_a_resolved_incident_forgets_its_number(served: Served) -> None:
    incident = (await _open(served, "old")).incident
    await served.stub.Resolve(incidents_pb2.ResolveRequest(incident_id="#1"))
    store = served.running.store
    assert await store.find_number(1) == [incident.id]
    served.clock.advance(seconds=(store.retention + timedelta(days=1)).total_seconds())
    await store.trim_indexes()
    shard = incident_shard(incident.id)
    assert await served.redis.zcard(keys.number_index_key(shard)) == 0


async def test_a_page_link_leads_to_the_incident_page_and_a_made_up_one_nowhere(
    served: Served,
) -> None:
    for n in range(2):
        await _open(served, f"k{n}")
    second = await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id="#2"))
    link = incident_link("http://gateway", process_service_token(), 2)
    path = link.removeprefix("http://gateway")
    assert path.startswith("/i/2?s=") and len(path) == len("/i/2?s=") + 11
    async with gateway_for(served) as (http, _):
        reply = await http.get(path)
        assert reply.status_code == 303
        assert reply.headers["location"] == f"/incidents/{second.incident.id}"
        # The signature of #2 does not open #1, and a guessed one opens nothing.
        assert (await http.get(path.replace("/i/2", "/i/1"))).status_code == 404
        assert (await http.get("/i/2?s=AAAAAAAAAAA")).status_code == 404
        assert (await http.get("/i/2")).status_code == 404
        gone = incident_link("http://gateway", process_service_token(), 99)
        assert (await http.get(gone.removeprefix("http://gateway"))).status_code == 404
    # Made with another stack's credential: refused.
    assert not valid_signature("another-stack", 2, path.rpartition("=")[2])


async def test_a_new_incident_opens_in_one_round_trip_with_a_number_reserved_ahead(
    served: Served,
) -> None:
    """After the first incident, the next number is taken off the page path, so an alert
    that opens an incident runs trigger.lua once with it (no refusal, no second run);
    a repeat gives it back (no gap), and a number lost with its reply is never reused."""
    store = served.running.store
    await _open(served, "first")
    calls: list[Any] = []
    trigger = store._trigger

    async def counting(*, keys: list[str], args: list[Any]) -> Any:
        calls.append(args[-1])
        return await trigger(keys=keys, args=args)

    store._trigger = counting  # type: ignore[assignment]
    assert (await _open(served, "second")).incident.number == 2
    assert calls == [2]  # one run, carrying the number reserved ahead
    calls.clear()
    store._open_ids.clear()  # so the repeat runs trigger.lua, not the join fast path
    assert not (await _open(served, "second")).created
    assert calls == [3]
    assert (await _open(served, "third")).incident.number == 3  # given back: no gap

    async def lost(*, keys: list[str], args: list[Any]) -> Any:
        await trigger(keys=keys, args=args)
        raise ConnectionError("reply lost")

    store._trigger = lost  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError):
        await _open(served, "fourth")
    store._trigger = trigger
    fourth = await served.stub.Trigger(trigger_request("alert fourth", "fourth"))
    assert not fourth.created and fourth.incident.number == 4  # it did open, with #4
    assert (await _open(served, "fifth")).incident.number == 5  # #4 not handed out again
