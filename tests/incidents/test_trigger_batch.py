"""TriggerBatch over real gRPC, and TocsinClient.trigger, which sends concurrent triggers
through it: each alert is taken exactly as a lone Trigger would take it, and each caller
gets its own response or the error Trigger would have raised."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.incidents.harness import (
    PAYMENTS_KEY,
    Served,
    all_events,
    event_kinds,
    events_of,
    nested,
    snapshot,
    trigger_request,
    violations,
)
from tocsin.client.batcher import MAX_BATCH_ITEMS
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import DEFAULTS, Endpoints
from tocsin.runtime.errors import NotFound, rpc_status
from tocsin.v1 import common_pb2, incidents_pb2

BATCH_METHOD = "/tocsin.v1.IncidentService/TriggerBatch"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def batch(*requests: incidents_pb2.TriggerRequest) -> incidents_pb2.TriggerBatchRequest:
    return incidents_pb2.TriggerBatchRequest(
        items=[incidents_pb2.TriggerBatchItem(request=r) for r in requests]
    )


@asynccontextmanager
async def client_for(target: str) -> AsyncIterator[TocsinClient]:
    async with TocsinClient(Endpoints(**(DEFAULTS | {"incidents": target})), token="") as client:
        yield client


def caller_span(trace_id: str = CALLER_TRACE) -> trace.Span:
    return trace.NonRecordingSpan(
        trace.SpanContext(
            int(trace_id, 16),
            0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
    )


# The RPC


async def test_each_item_is_taken_as_a_lone_trigger_would_take_it(served: Served) -> None:
    reply = await served.stub.TriggerBatch(
        batch(
            trigger_request(dedup_key="disk"),
            trigger_request(summary="", dedup_key="bad"),
            trigger_request(dedup_key="disk", severity=common_pb2.SEVERITY_WARNING),
            trigger_request(service_id="", integration_key="ab" * 16, dedup_key="x"),
            trigger_request(service_id="", integration_key=PAYMENTS_KEY, dedup_key=""),
        )
    )
    first, invalid, repeat, unknown, generated = reply.results
    # Items are taken concurrently, like concurrent Trigger calls: one of the two with the
    # same key opens the incident, the other joins it.
    assert {first.response.created, repeat.response.created} == {True, False}
    assert first.response.dedup_key == repeat.response.dedup_key == "disk"
    assert repeat.response.incident.id == first.response.incident.id
    counts = {first.response.incident.alert_count, repeat.response.incident.alert_count}
    assert counts == {1, 2}
    assert invalid.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "summary" in invalid.error.message
    assert unknown.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert generated.response.created and len(generated.response.dedup_key) == 32

    events = await events_of(served.redis, first.response.incident.id)
    assert sorted(event_kinds(events)) == ["ALERT_ADDED", "TRIGGERED"]
    assert await all_events(served.redis) == 3  # nothing for the refused items


async def test_one_key_many_times_in_one_batch_opens_one_incident(served: Served) -> None:
    reply = await served.stub.TriggerBatch(batch(*[trigger_request() for _ in range(50)]))
    assert [r.response.created for r in reply.results].count(True) == 1
    assert {r.response.incident.id for r in reply.results} == {
        reply.results[0].response.incident.id
    }
    counts = sorted(r.response.incident.alert_count for r in reply.results)
    assert counts == list(range(1, 51))


@pytest.mark.parametrize(("items", "message"), [(0, "must not be empty"), (513, "at most 512")])
async def test_an_empty_or_oversized_batch_is_refused_whole(
    served: Served, items: int, message: str
) -> None:
    before = await snapshot(served.redis)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.TriggerBatch(batch(*[trigger_request() for _ in range(items)]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = violations(refused.value)
    assert field == "items" and message in description
    assert await snapshot(served.redis) == before


async def test_each_items_event_carries_its_own_trace(served: Served) -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    reply = await served.stub.TriggerBatch(
        incidents_pb2.TriggerBatchRequest(
            items=[
                incidents_pb2.TriggerBatchItem(
                    request=trigger_request(dedup_key="a"),
                    traceparent=f"00-{CALLER_TRACE}-00f067aa0ba902b7-01",
                ),
                incidents_pb2.TriggerBatchItem(
                    request=trigger_request(dedup_key="b"),
                    traceparent=f"00-{other}-00f067aa0ba902b7-01",
                ),
                incidents_pb2.TriggerBatchItem(
                    request=trigger_request(dedup_key="c"), traceparent="not a traceparent"
                ),
            ]
        )
    )
    traces = []
    for result in reply.results:
        [event] = await events_of(served.redis, result.response.incident.id)
        traces.append(event.traceparent.split("-")[1] if event.traceparent else "")
    assert traces[:2] == [CALLER_TRACE, other]
    # An invalid traceparent falls back to the call's own trace (or none, untraced).
    assert traces[2] not in (CALLER_TRACE, other)


def deep_request(levels: int, dedup_key: str) -> incidents_pb2.TriggerRequest:
    """A trigger whose details nest `levels` objects (past ~32, protobuf cannot decode a
    TriggerBatchRequest carrying it; past ~33, not even a TriggerRequest)."""
    request = trigger_request(dedup_key=dedup_key)
    request.details.update(nested(levels))
    return request


def framed_batch(*requests: incidents_pb2.TriggerRequest) -> bytes:
    """A TriggerBatchRequest on the wire, framed by hand (protobuf refuses to build one
    holding an item nested too deeply, as a sender in another language would not)."""
    wire = b""
    for request in requests:
        item = incidents_pb2.TriggerBatchItem()
        item.request.CopyFrom(request)
        raw = item.SerializeToString()
        size = len(raw)
        length = b""
        while True:
            low, size = size & 0x7F, size >> 7
            length += bytes([low | (0x80 if size else 0)])
            if not size:
                break
        wire += b"\x0a" + length + raw
    return wire


@pytest.mark.parametrize("levels", [21, 33, 40])
async def test_an_item_nested_too_deeply_fails_alone(served: Served, levels: int) -> None:
    """Before, a batch holding details 33 objects deep could not be decoded and every
    alert in it failed; 21 deep was taken, past the limit the README states."""
    channel = grpc.aio.insecure_channel(served.target)
    try:
        call = channel.unary_unary(
            BATCH_METHOD,
            request_serializer=lambda body: body,
            response_deserializer=incidents_pb2.TriggerBatchResponse.FromString,
        )
        reply = await call(
            framed_batch(
                trigger_request(dedup_key="before"),
                deep_request(levels, "deep"),
                trigger_request(dedup_key="after"),
            )
        )
    finally:
        await channel.close()
    before, deep, after = reply.results
    assert before.response.created and after.response.created
    assert deep.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert deep.error.message.startswith("details: must not nest objects or lists more than 20")
    assert await served.running.store.find_open("payments-api", "deep") is None
    assert await all_events(served.redis) == 2


# The client


async def test_concurrent_triggers_share_calls_and_each_gets_its_reply(
    served: Served, spans: InMemorySpanExporter
) -> None:
    async with client_for(served.target) as client:
        replies = await asyncio.gather(*(client.trigger(trigger_request()) for _ in range(300)))
    assert [r.created for r in replies].count(True) == 1
    assert sorted(r.incident.alert_count for r in replies) == list(range(1, 301))
    calls = [
        s for s in spans.get_finished_spans() if s.name == BATCH_METHOD and s.kind.name == "SERVER"
    ]
    assert 1 <= len(calls) < 30


async def test_a_lone_trigger_goes_at_once_in_its_callers_trace(
    served: Served, spans: InMemorySpanExporter
) -> None:
    async with client_for(served.target) as client:
        with trace.use_span(caller_span()):
            reply = await client.trigger(trigger_request())
    [event] = await events_of(served.redis, reply.incident.id)
    assert event.traceparent.split("-")[1] == CALLER_TRACE
    [call] = [
        s for s in spans.get_finished_spans() if s.name == BATCH_METHOD and s.kind.name == "SERVER"
    ]
    assert call.context is not None and f"{call.context.trace_id:032x}" == CALLER_TRACE


async def test_refused_triggers_raise_what_trigger_raises(served: Served) -> None:
    async with client_for(served.target) as client:
        good, bad, unknown = await asyncio.gather(
            client.trigger(trigger_request(dedup_key="ok")),
            client.trigger(trigger_request(summary=" \n ", dedup_key="blank")),
            client.trigger(trigger_request(service_id="nope")),
            return_exceptions=True,
        )
    assert isinstance(good, incidents_pb2.TriggerResponse) and good.created
    with pytest.raises(grpc.aio.AioRpcError) as lone:
        await served.stub.Trigger(trigger_request(summary=" \n ", dedup_key="blank"))
    assert isinstance(bad, grpc.aio.AioRpcError)
    assert bad.code() == lone.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details() == lone.value.details()
    assert violations(bad) == violations(lone.value)
    assert isinstance(unknown, grpc.aio.AioRpcError)
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


async def test_a_trigger_nested_too_deeply_fails_alone_in_the_client(served: Served) -> None:
    """Its neighbours in the shared batch are taken; it gets what Trigger would raise."""
    async with client_for(served.target) as client:
        outcomes = await asyncio.gather(
            *(client.trigger(trigger_request(dedup_key=f"k{n}")) for n in range(10)),
            client.trigger(deep_request(33, "deep33")),
            client.trigger(deep_request(40, "deep40")),
            *(client.trigger(trigger_request(dedup_key=f"m{n}")) for n in range(10)),
            return_exceptions=True,
        )
    good = outcomes[:10] + outcomes[12:]
    assert all(isinstance(o, incidents_pb2.TriggerResponse) and o.created for o in good)
    for deep in outcomes[10:12]:
        assert isinstance(deep, grpc.aio.AioRpcError)
        assert deep.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in violations(deep)] == ["details"]
    assert await all_events(served.redis) == 20


# The client against a scripted server, for what the real one never does


class ScriptedIncidents:
    """Answers TriggerBatch through `answer`, recording each call's item count."""

    def __init__(self, answer: Callable[[incidents_pb2.TriggerBatchRequest, Any], Any]) -> None:
        self.answer = answer
        self.sizes: list[int] = []

    async def TriggerBatch(
        self, request: incidents_pb2.TriggerBatchRequest, context: Any
    ) -> incidents_pb2.TriggerBatchResponse:
        self.sizes.append(len(request.items))
        return await self.answer(request, context)


@asynccontextmanager
async def scripted(servicer: ScriptedIncidents) -> AsyncIterator[TocsinClient]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.TriggerBatch,
        request_deserializer=incidents_pb2.TriggerBatchRequest.FromString,
        response_serializer=incidents_pb2.TriggerBatchResponse.SerializeToString,
    )
    service = grpc.method_handlers_generic_handler(
        "tocsin.v1.IncidentService", {"TriggerBatch": handler}
    )
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with client_for(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop(0)


async def echo(request: incidents_pb2.TriggerBatchRequest, context: Any) -> Any:
    return incidents_pb2.TriggerBatchResponse(
        results=[
            incidents_pb2.TriggerBatchResult(
                response=incidents_pb2.TriggerResponse(dedup_key=item.request.dedup_key)
            )
            for item in request.items
        ]
    )


async def test_batches_stay_within_the_item_limit_and_answers_keep_their_order() -> None:
    servicer = ScriptedIncidents(echo)
    async with scripted(servicer) as client:
        replies = await asyncio.gather(
            *(client.trigger(trigger_request(dedup_key=f"k{n}")) for n in range(1500))
        )
    assert [r.dedup_key for r in replies] == [f"k{n}" for n in range(1500)]
    assert sum(servicer.sizes) == 1500
    assert max(servicer.sizes) <= MAX_BATCH_ITEMS
    assert len(servicer.sizes) >= 3


async def test_a_failed_call_fails_each_of_its_triggers_with_its_error() -> None:
    async def refuse(request: incidents_pb2.TriggerBatchRequest, context: Any) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no token")

    async with scripted(ScriptedIncidents(refuse)) as client:
        outcomes = await asyncio.gather(
            *(client.trigger(trigger_request()) for _ in range(5)), return_exceptions=True
        )
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError)
        assert outcome.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_item_error_keeps_its_status_details() -> None:
    async def not_found(request: incidents_pb2.TriggerBatchRequest, context: Any) -> Any:
        status = rpc_status(NotFound("no service has this integration key"))
        return incidents_pb2.TriggerBatchResponse(
            results=[incidents_pb2.TriggerBatchResult(error=status) for _ in request.items]
        )

    async with scripted(ScriptedIncidents(not_found)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.trigger(trigger_request())
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == "no service has this integration key"


async def test_a_caller_gets_deadline_exceeded_at_its_own_timeout() -> None:
    release = asyncio.Event()

    async def stall(request: incidents_pb2.TriggerBatchRequest, context: Any) -> Any:
        await release.wait()
        return await echo(request, context)

    async with scripted(ScriptedIncidents(stall)) as client:
        patient = asyncio.create_task(client.trigger(trigger_request(dedup_key="p")))
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await client.trigger(trigger_request(dedup_key="q"), timeout=0.05)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        assert (await patient).dedup_key == "p"


async def test_beside_a_batch_on_the_wire_small_ones_wait_for_company() -> None:
    release = asyncio.Event()
    arrivals: asyncio.Queue[int] = asyncio.Queue()

    async def stall_first(request: incidents_pb2.TriggerBatchRequest, context: Any) -> Any:
        arrivals.put_nowait(len(request.items))
        if arrivals.qsize() == 1 and not release.is_set():
            await release.wait()
        return await echo(request, context)

    def send(key: str) -> asyncio.Task[incidents_pb2.TriggerResponse]:
        return asyncio.create_task(client.trigger(trigger_request(dedup_key=key)))

    async with scripted(ScriptedIncidents(stall_first)) as client:
        first = send("first")
        assert await asyncio.wait_for(arrivals.get(), 5) == 1
        # One batch is on the wire: three more triggers are too few to go beside it.
        few = [send(f"f{n}") for n in range(3)]
        await asyncio.sleep(0.05)  # time enough for a batch sent too early to arrive
        assert arrivals.empty()
        # Eight waiting are enough for a second batch beside the first.
        many = [send(f"m{n}") for n in range(5)]
        assert await asyncio.wait_for(arrivals.get(), 5) == 8
        release.set()
        replies = await asyncio.gather(first, *few, *many)
    expected = ["first", "f0", "f1", "f2", *(f"m{n}" for n in range(5))]
    assert [r.dedup_key for r in replies] == expected
