"""NotifyBatch and AppendTimelineBatch, and the client that sends concurrent Notify and
AppendTimeline calls together (tocsin.client.batcher): each item is answered or refused
as its own call would be, a lone call goes at once, and a server that has no batch method
(an older version during a rolling upgrade) gets unary calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.incidents.harness import violations
from tests.notification.stack import ALICE, BOB, SMS, PagingStack
from tests.services import client_for
from tocsin.client.client import TocsinClient
from tocsin.v1 import incidents_pb2, notification_pb2

BATCH = "/tocsin.v1.NotificationService/NotifyBatch"
UNARY = "/tocsin.v1.NotificationService/Notify"


def notify(incident_id: str, user_id: str, **fields: Any) -> notification_pb2.NotifyRequest:
    return notification_pb2.NotifyRequest(
        incident_id=incident_id,
        user_id=user_id,
        idempotency_key=f"{incident_id}/0/0/0/{user_id}",
        **fields,
    )


def server_calls(spans: InMemorySpanExporter, method: str) -> int:
    return sum(
        1 for s in spans.get_finished_spans() if s.name == method and s.kind.name == "SERVER"
    )


async def test_each_item_of_a_batch_is_answered_or_refused_as_its_notify_would_be(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    await stack.add_user("bob", BOB, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    second = await stack.trigger("disk full on db2")
    bad = notify(first, "bob", urgency=99)

    reply = await stack.client.notification.NotifyBatch(
        notification_pb2.NotifyBatchRequest(
            items=[notify(first, "alice"), bad, notify(second, "bob"), notify(first, "alice")]
        )
    )

    paged, refused, other, repeated = reply.results
    assert other.response.started and other.response.rules_scheduled == 1
    # the same key twice, handled concurrently: one starts the cycle, the other is a repeat
    assert [paged.response.started, repeated.response.started].count(True) == 1
    with pytest.raises(grpc.aio.AioRpcError) as lone:
        await stack.client.notification.Notify(bad)
    assert refused.error.code == lone.value.code().value[0]
    assert refused.error.message == lone.value.details()
    await stack.pager.expect_sms("alice", "disk full on db1")
    await stack.pager.expect_sms("bob", "disk full on db2")
    await stack.settle()
    assert [a.user_id for a in await stack.attempts(first)] == ["alice"]  # nothing for bob


async def test_an_empty_or_oversized_batch_is_refused_naming_items(stack: PagingStack) -> None:
    for items in ([], [notify("20", "alice")] * 513):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.client.notification.NotifyBatch(
                notification_pb2.NotifyBatchRequest(items=items)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [field for field, _ in violations(refused.value)] == ["items"]
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stack.client.incidents.AppendTimelineBatch(incidents_pb2.AppendTimelineBatchRequest())
    assert [field for field, _ in violations(empty.value)] == ["items"]


async def test_timeline_entries_of_a_batch_are_appended_or_refused_on_their_own(
    stack: PagingStack,
) -> None:
    incident_id = await stack.trigger("disk full on db1")

    def entry(message: str, key: str) -> incidents_pb2.AppendTimelineRequest:
        return incidents_pb2.AppendTimelineRequest(
            incident_id=incident_id,
            entry=incidents_pb2.TimelineEntry(
                kind=incidents_pb2.TIMELINE_KIND_NOTIFICATION, message=message
            ),
            idempotency_key=key,
        )

    reply = await stack.client.incidents.AppendTimelineBatch(
        incidents_pb2.AppendTimelineBatchRequest(
            items=[entry("first", "k1"), entry("too long a key", "k" * 300), entry("again", "k1")]
        )
    )

    taken, refused, repeated = reply.results
    assert taken.response.appended and not repeated.response.appended
    assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "idempotency_key" in refused.error.message
    timeline = [e.message for e in (await stack.incident(incident_id)).timeline]
    assert "first" in timeline and "again" not in timeline and "too long a key" not in timeline


async def test_concurrent_notify_calls_share_batches_and_a_lone_one_goes_at_once(
    stack: PagingStack, spans: InMemorySpanExporter
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incidents = [await stack.trigger(f"disk full on node{n:02d}") for n in range(40)]
    client = stack.client
    spans.clear()

    lone = await client.notify(notify(incidents[0], "alice"), timeout=5)
    assert lone.started and server_calls(spans, BATCH) == 1

    replies = await asyncio.gather(
        *(client.notify(notify(i, "alice"), timeout=5) for i in incidents[1:])
    )
    assert all(r.started for r in replies)
    batches = server_calls(spans, BATCH) - 1
    assert 1 <= batches < 39  # shared: fewer calls than items
    texts = {(await stack.pager.expect_sms("alice")).body or "" for _ in range(40)}
    for n in range(40):
        assert any(f"disk full on node{n:02d} " in text for text in texts)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.notify(notify(incidents[0], "alice", urgency=99), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(refused.value)] == ["urgency"]


class OlderNotification:
    """A notification service of the version before NotifyBatch: unary Notify only."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Notify(
        self, request: notification_pb2.NotifyRequest, context: Any
    ) -> notification_pb2.NotifyResponse:
        self.calls.append(request.incident_id)
        return notification_pb2.NotifyResponse(started=True, rules_scheduled=1)


@asynccontextmanager
async def older_server(servicer: OlderNotification) -> AsyncIterator[TocsinClient]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.Notify,
        request_deserializer=notification_pb2.NotifyRequest.FromString,
        response_serializer=notification_pb2.NotifyResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tocsin.v1.NotificationService", {"Notify": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with client_for(notification=f"127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop(0)


async def test_a_server_without_notify_batch_gets_each_call_on_its_own() -> None:
    servicer = OlderNotification()
    async with older_server(servicer) as client:
        replies = await asyncio.gather(
            *(client.notify(notify(str(16 * n + 4), "alice"), timeout=5) for n in range(12))
        )
        assert all(r.started for r in replies)
        assert sorted(servicer.calls) == sorted(str(16 * n + 4) for n in range(12))
        later = await client.notify(notify("500", "alice"), timeout=5)
    assert later.started and servicer.calls[-1] == "500"


async def test_status_callbacks_of_a_batch_are_recorded_or_refused_on_their_own(
    stack: PagingStack, spans: InMemorySpanExporter
) -> None:
    """Twilio sends three or more status callbacks per SMS; the gateway's client sends the
    ones waiting together (HandleDeliveryStatusBatch). Each is handled as its own call."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")
    await stack.settle()
    [attempt] = await stack.attempts(incident_id)
    statuses = notification_pb2.HandleDeliveryStatusRequest

    reply = await stack.client.notification.HandleDeliveryStatusBatch(
        notification_pb2.HandleDeliveryStatusBatchRequest(
            items=[
                statuses(attempt_id=attempt.id, status="undelivered", error_code=30003),
                statuses(status="delivered"),  # names no attempt at all
                statuses(attempt_id=f"{incident_id}-99-0", status="delivered"),
            ]
        )
    )

    recorded, refused, unknown = reply.results
    assert recorded.response.known and not unknown.response.known
    assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "provider_id" in refused.error.message
    [failed] = await stack.attempts(incident_id)
    assert (failed.status, failed.error_code) == (notification_pb2.ATTEMPT_STATUS_FAILED, 30003)
    # The client's way: concurrent callbacks share calls and each gets its own answer.
    spans.clear()
    answers = await asyncio.gather(
        *(
            stack.client.delivery_status(
                statuses(attempt_id=attempt.id, status=f"status-{n}"), timeout=5
            )
            for n in range(20)
        )
    )
    assert all(a.known for a in answers)
    assert 1 <= server_calls(spans, "/tocsin.v1.NotificationService/HandleDeliveryStatusBatch") < 20
