"""Every refused request names the field (google.rpc.BadRequest) and writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis

from tests.incidents.harness import (
    PAYMENTS_KEY,
    Served,
    cli_actor,
    create_payments,
    events_of,
    nested,
    serve_incidents,
    snapshot,
    trigger_request,
    violated_fields,
)
from tocsin.runtime.clock import ManualClock
from tocsin.v1 import common_pb2, incidents_pb2

I = incidents_pb2  # noqa: E741


@pytest.fixture
async def served(redis: Redis, clock: ManualClock) -> AsyncIterator[Served]:
    async with serve_incidents(redis, clock) as served:
        await create_payments(served.stub)
        yield served


def _big_details() -> Struct:
    details = Struct()
    details.update({"blob": "x" * (64 * 1024)})
    return details


def _deep_details(levels: int) -> Struct:
    details = Struct()
    details.update(nested(levels))
    return details


# What cannot be processed at all; everything else is normalised (test_normalised below).
TRIGGERS: list[tuple[I.TriggerRequest, str]] = [
    (trigger_request(summary=""), "summary"),
    (trigger_request(summary="   "), "summary"),
    (trigger_request(summary="\n\t\r "), "summary"),
    (trigger_request(details=_big_details()), "details"),
    (trigger_request(details=_deep_details(21)), "details"),
    (trigger_request(service_id=""), "service_id"),
    (trigger_request(service_id="Payments API"), "service_id"),
    (trigger_request(service_id="", integration_key="short"), "integration_key"),
    (trigger_request(integration_key="f" * 32), "integration_key"),  # not payments' key
    (trigger_request(actor=common_pb2.Actor(user_id="a\nb")), "actor.user_id"),
]


@pytest.mark.parametrize(("request_", "field"), TRIGGERS)
async def test_bad_triggers_name_the_field_and_write_nothing(
    served: Served, request_: I.TriggerRequest, field: str
) -> None:
    await _refused(served, lambda: served.stub.Trigger(request_), field)


async def test_details_at_the_depth_limit_are_taken(served: Served) -> None:
    reply = await served.stub.Trigger(trigger_request(details=_deep_details(20)))
    assert reply.created


async def test_details_too_deep_to_decode_are_refused_by_name(served: Served) -> None:
    """Past protobuf's own depth limit (~33 objects), the request cannot even be decoded:
    still INVALID_ARGUMENT naming details, not an internal error."""
    request = trigger_request()
    request.details.update(nested(40))
    await _refused(served, lambda: served.stub.Trigger(request), "details")


async def _alert(served: Served, reply: I.TriggerResponse) -> I.Alert:
    got = await served.stub.GetIncident(
        I.GetIncidentRequest(incident_id=reply.incident.id, include_alerts=True)
    )
    return got.incident.alerts[0]


async def test_formatting_is_normalised_not_refused(served: Served) -> None:
    """Each of these was refused with INVALID_ARGUMENT before; an alert that can be
    understood pages."""
    summary = "Disk full on db-1\n" + "details " * 300
    component = "c" * 1100
    request = trigger_request(
        summary=summary,
        dedup_key="tab\tkey",
        source="host\x1b[31m\tred",
        component=component,
        group="line\u2028separated",
        severity=9,
        occurred_at=Timestamp(seconds=-62135596800),  # year 1: Alertmanager's zero time
        links=[
            common_pb2.Link(href="javascript:alert(1)"),
            common_pb2.Link(href=""),
            common_pb2.Link(href="http://[::1"),
            common_pb2.Link(href="grafana.example/d/abc?x=1", text="two\nlines"),
            common_pb2.Link(href=" https://x.example/a b "),
            *[common_pb2.Link(href=f"https://x.example/{n}") for n in range(60)],
        ],
        actor=common_pb2.Actor(display="bell\x07", channel=99),  # type: ignore[arg-type]
    )
    setattr(request, "class", "k" * 2000)
    reply = await served.stub.Trigger(request)
    assert reply.created and reply.dedup_key == "tab key"
    assert reply.incident.severity == common_pb2.SEVERITY_CRITICAL
    alert = await _alert(served, reply)
    folded = " ".join(summary.split())
    assert alert.summary == folded[:1023] + "…" and len(alert.summary) == 1024
    assert alert.source == "host [31m red"
    assert alert.component == component[:1023] + "…"
    assert alert.group == "line separated"
    assert getattr(alert, "class") == "k" * 1023 + "…"
    assert not alert.HasField("occurred_at")
    assert alert.channel == common_pb2.CHANNEL_API
    details = MessageToDict(alert.details)
    assert details["summary_full"] == summary
    assert details["component_full"] == component
    assert details["class_full"] == "k" * 2000
    assert details["severity_original"] == 9
    assert details["occurred_at_original"] == -62135596800
    assert details["links_dropped"][:3] == ["javascript:alert(1)", "", "http://[::1"]
    hrefs = [(link.href, link.text) for link in alert.links]
    assert hrefs[:2] == [
        ("https://grafana.example/d/abc?x=1", "two lines"),
        ("https://x.example/a%20b", ""),
    ]
    assert len(hrefs) == 50
    [event] = await events_of(served.redis, reply.incident.id)
    assert event.actor.display == "bell"


async def test_a_long_dedup_key_is_filed_shortened_and_found_again(served: Served) -> None:
    key = "k" * 300
    first = await served.stub.Trigger(trigger_request(dedup_key=key))
    again = await served.stub.Trigger(trigger_request(dedup_key=key))
    other = await served.stub.Trigger(trigger_request(dedup_key="k" * 299 + "j"))
    assert first.created and not again.created and other.created
    assert len(first.dedup_key) == 255 and first.dedup_key == again.dedup_key
    assert first.dedup_key != other.dedup_key
    assert MessageToDict((await _alert(served, first)).details)["dedup_key_full"] == key
    resolved = await served.stub.Resolve(
        I.ResolveRequest(service_id="payments-api", dedup_key=key, actor=cli_actor())
    )
    assert resolved.incident.id == first.incident.id and resolved.changed


async def _incident(served: Served) -> str:
    return (await served.stub.Trigger(trigger_request())).incident.id


ACTIONS: list[tuple[Callable[[Served, str], Awaitable[Any]], str]] = [
    (lambda s, i: s.stub.Acknowledge(I.AcknowledgeRequest(incident_id="12abc")), "incident_id"),
    (lambda s, i: s.stub.Acknowledge(I.AcknowledgeRequest(incident_id="0")), "incident_id"),
    (lambda s, i: s.stub.Acknowledge(I.AcknowledgeRequest()), "incident_id"),
    (
        lambda s, i: s.stub.Resolve(
            I.ResolveRequest(incident_id=i, actor=common_pb2.Actor(user_id="a\nb"))
        ),
        "actor.user_id",
    ),
    (lambda s, i: s.stub.Reassign(I.ReassignRequest(incident_id=i)), "assignment"),
    (
        lambda s, i: s.stub.Reassign(
            I.ReassignRequest(incident_id=i, assignment=I.Assignment(user_id=""))
        ),
        "assignment.user_id",
    ),
    (
        lambda s, i: s.stub.Reassign(
            I.ReassignRequest(incident_id=i, assignment=I.Assignment(escalation_policy_id="A B"))
        ),
        "assignment.escalation_policy_id",
    ),
    (lambda s, i: s.stub.AddNote(I.AddNoteRequest(incident_id=i, text="")), "text"),
    (lambda s, i: s.stub.AddNote(I.AddNoteRequest(incident_id=i, text="n" * 4097)), "text"),
    (lambda s, i: s.stub.AddNote(I.AddNoteRequest(incident_id=i, text="esc\x1b")), "text"),
    (
        lambda s, i: s.stub.AppendTimeline(
            I.AppendTimelineRequest(incident_id=i, entry=I.TimelineEntry(message="x"))
        ),
        "entry.kind",
    ),
    (
        lambda s, i: s.stub.AppendTimeline(
            I.AppendTimelineRequest(
                incident_id=i,
                entry=I.TimelineEntry(kind=I.TIMELINE_KIND_WARNING),
                idempotency_key="k" * 256,
            )
        ),
        "idempotency_key",
    ),
    (
        lambda s, i: s.stub.AppendTimeline(
            I.AppendTimelineRequest(
                incident_id=i,
                entry=I.TimelineEntry(
                    kind=I.TIMELINE_KIND_WARNING, attributes={str(n): "v" for n in range(51)}
                ),
            )
        ),
        "entry.attributes",
    ),
    (
        lambda s, i: s.stub.Snooze(I.SnoozeRequest(incident_id=i, duration=Duration(seconds=30))),
        "duration",
    ),
    (lambda s, i: s.stub.GetIncident(I.GetIncidentRequest(incident_id="-3")), "incident_id"),
]


@pytest.mark.parametrize(("call", "field"), ACTIONS)
async def test_bad_actions_name_the_field_and_write_nothing(
    served: Served, call: Callable[[Served, str], Awaitable[Any]], field: str
) -> None:
    incident_id = await _incident(served)
    await _refused(served, lambda: call(served, incident_id), field)


SERVICES: list[tuple[I.Service, str]] = [
    (I.Service(id=""), "service.id"),
    (I.Service(id="Has Space"), "service.id"),
    (I.Service(id="ok", integration_key="xyz"), "service.integration_key"),
    (I.Service(id="ok", integration_key="g" * 31 + "!"), "service.integration_key"),
    (I.Service(id="ok", name="line\nbreak"), "service.name"),
    (I.Service(id="ok", escalation_policy_id="Bad Policy"), "service.escalation_policy_id"),
]


@pytest.mark.parametrize(("service", "field"), SERVICES)
async def test_bad_services_name_the_field_and_write_nothing(
    served: Served, service: I.Service, field: str
) -> None:
    await _refused(
        served, lambda: served.stub.CreateService(I.CreateServiceRequest(service=service)), field
    )
    service.id = "payments-api" if field != "service.id" else service.id
    await _refused(
        served, lambda: served.stub.UpdateService(I.UpdateServiceRequest(service=service)), field
    )


async def test_taken_ids_and_keys_already_exist(served: Served) -> None:
    before = await snapshot(served.redis)
    for service in (
        I.Service(id="payments-api"),
        I.Service(id="other", integration_key=PAYMENTS_KEY),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await served.stub.CreateService(I.CreateServiceRequest(service=service))
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await snapshot(served.redis) == before


async def test_invalid_utf8_on_the_wire_is_refused_and_writes_nothing(served: Served) -> None:
    raw = trigger_request(summary="SUMMARY").SerializeToString().replace(b"SUMMARY", b"SUM\xffARY")
    before = await snapshot(served.redis)
    channel = grpc.aio.insecure_channel(served.target)
    try:
        call = channel.unary_unary(
            "/tocsin.v1.IncidentService/Trigger",
            request_serializer=lambda body: body,
            response_deserializer=I.TriggerResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(raw)
    finally:
        await channel.close()
    assert refused.value.code() != grpc.StatusCode.OK
    assert await snapshot(served.redis) == before


async def _refused(served: Served, call: Callable[[], Awaitable[Any]], field: str) -> None:
    before = await snapshot(served.redis)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert violated_fields(refused.value) == [field]
    assert await snapshot(served.redis) == before
