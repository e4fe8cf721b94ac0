"""Reports to escalation: an unreachable user is reported by RPC, tried again when
escalation did not answer in time; a page that went out is queued on the report outbox
(runtime/report_outbox.py), with its time and the writer's trace, or logged when Redis
cannot take it."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from tocsin.notification.peers import REPORT_ATTEMPTS, EscalationPeer
from tocsin.runtime.outbox import REQUEST_FIELD, TRACE_FIELD
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.report_outbox import STREAM_KEY, ReportOutbox
from tocsin.v1 import escalation_pb2


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")


class _Escalation:
    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = failures
        self.calls: list[escalation_pb2.ReportUnreachableRequest] = []

    async def ReportUnreachable(
        self, request: escalation_pb2.ReportUnreachableRequest, **kwargs: Any
    ) -> escalation_pb2.ReportUnreachableResponse:
        self.calls.append(request)
        if self.failures:
            raise _error(self.failures.pop(0))
        return escalation_pb2.ReportUnreachableResponse(advanced=True)


class _Client:
    """TocsinClient's part the peer uses: the escalation stub."""

    def __init__(self, escalation: _Escalation) -> None:
        self.escalation = escalation


def _peer(escalation: _Escalation, reports: ReportOutbox) -> EscalationPeer:
    client: Any = _Client(escalation)
    return EscalationPeer(lambda: client, reports)


async def test_an_unreachable_report_that_timed_out_is_sent_again(
    any_redis: RedisClient,
) -> None:
    escalation = _Escalation([grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
    peer = _peer(escalation, ReportOutbox(any_redis))
    assert await peer.report_unreachable("17", "alice", "17/0/0/0/alice", "no contact method")
    assert len(escalation.calls) == 3
    assert {c.idempotency_key for c in escalation.calls} == {"17/0/0/0/alice"}


async def test_retries_stop_after_the_last_attempt_and_on_a_refusal(
    any_redis: RedisClient,
) -> None:
    timing_out = _Escalation([grpc.StatusCode.DEADLINE_EXCEEDED] * REPORT_ATTEMPTS)
    reports = ReportOutbox(any_redis)
    assert not await _peer(timing_out, reports).report_unreachable("17", "alice", "k", "none")
    assert len(timing_out.calls) == REPORT_ATTEMPTS
    refused = _Escalation([grpc.StatusCode.INVALID_ARGUMENT])
    assert not await _peer(refused, reports).report_unreachable("17", "alice", "k", "none")
    assert len(refused.calls) == 1  # not a matter of time: not sent again


async def test_a_page_out_report_is_queued_with_its_time_and_trace(
    any_redis: RedisClient,
) -> None:
    escalation = _Escalation([])
    peer = _peer(escalation, ReportOutbox(any_redis))
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("notification.page_out") as span:
        assert await peer.report_page_out("17", "alice", "17/0/0/0/alice", 1_000)
    assert escalation.calls == []  # no RPC
    entries: Any = await any_redis.xrange(STREAM_KEY)
    assert len(entries) == 1
    fields = entries[0][1]
    request = escalation_pb2.ReportPageOutRequest.FromString(fields[REQUEST_FIELD])
    assert (request.incident_id, request.user_id, request.idempotency_key) == (
        "17",
        "alice",
        "17/0/0/0/alice",
    )
    assert request.out_at.ToMilliseconds() == 1_000
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert trace_id in fields[TRACE_FIELD].decode()


async def test_a_report_redis_cannot_take_is_logged_not_raised(
    redis: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    await redis.set(STREAM_KEY, "not a stream")  # every XADD to it fails
    peer = _peer(_Escalation([]), ReportOutbox(redis))
    with caplog.at_level(logging.WARNING, logger="tocsin.notification.peers"):
        assert not await peer.report_page_out("17", "alice", "17/0/0/0/alice", 1_000)
    assert "could not queue alice's page-out report" in caplog.text
    assert "+1" not in caplog.text  # names the user, never a number
