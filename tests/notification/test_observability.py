"""What operators see: one trace per page joined to the alert's, and the console provider."""

from __future__ import annotations

import io

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.notification.stack import ALICE, SMS, VOICE, PagingStack, paging_stack
from tocsin.notification.providers import ConsoleProvider
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import notification_pb2

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


async def test_each_send_is_a_span_in_the_alerts_trace_with_the_twilio_request_below(
    stack: PagingStack,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stack.parts.sender.tracer = provider.get_tracer("test")
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()

    await stack.client.notification.Notify(
        notification_pb2.NotifyRequest(
            incident_id=incident_id,
            user_id="alice",
            idempotency_key="k",
            traceparent=f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01",
        )
    )
    await stack.pager.expect_sms("alice")

    spans = {span.name: span for span in exporter.get_finished_spans()}
    send, request = spans["notification.send"], spans["twilio.messages.create"]
    assert send.context is not None and request.context is not None
    assert format(send.context.trace_id, "032x") == TRACE_ID
    assert send.parent is not None and format(send.parent.span_id, "016x") == PARENT_SPAN_ID
    assert request.parent is not None and request.parent.span_id == send.context.span_id
    assert request.context.trace_id == send.context.trace_id
    attributes = dict(send.attributes or {})
    assert {k: attributes[k] for k in ("incident.id", "user.id", "notification.channel")} == {
        "incident.id": incident_id,
        "user.id": "alice",
        "notification.channel": "sms",
    }
    assert attributes["notification.rule_index"] == 0
    every_value = [str(v) for s in spans.values() for v in (s.attributes or {}).values()]
    assert not any("5550010" in value for value in every_value)  # no phone number


async def test_without_twilio_each_page_is_one_readable_console_line(redis: RedisClient) -> None:
    printed = io.StringIO()
    async with paging_stack(redis, provider=lambda _: ConsoleProvider(printed)) as stack:
        await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
        incident_id = await stack.trigger("disk full on db1")
        await stack.notify(incident_id, "alice")
        await stack.settle()
        await stack.tick(minutes=1)

        lines = printed.getvalue().splitlines()
        assert len(lines) == 2
        assert lines[0].startswith("tocsin page: SMS to +1******0010: tocsin #1: [Payments API]")
        assert "disk full on db1" in lines[0]
        assert lines[1].startswith("tocsin page: voice call to +1******0010:")
        assert "disk full on db1" in lines[1] and ALICE not in printed.getvalue()
        attempts = await stack.attempts(incident_id)
        assert [a.status for a in attempts] == [notification_pb2.ATTEMPT_STATUS_SENT] * 2
        assert not stack.fake.requests
