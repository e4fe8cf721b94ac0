"""Reports to escalation are tried again when escalation did not answer in time."""

from __future__ import annotations

from typing import Any

import grpc

from tocsin.notification.peers import REPORT_ATTEMPTS, EscalationPeer
from tocsin.v1 import escalation_pb2


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")


class _Escalation:
    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = failures
        self.calls: list[escalation_pb2.ReportPageOutRequest] = []

    async def ReportPageOut(
        self, request: escalation_pb2.ReportPageOutRequest, **kwargs: Any
    ) -> escalation_pb2.ReportPageOutResponse:
        self.calls.append(request)
        if self.failures:
            raise _error(self.failures.pop(0))
        return escalation_pb2.ReportPageOutResponse(released=True)


class _Client:
    """TocsinClient's part the peer uses: the stubs, and the batching report call."""

    def __init__(self, escalation: _Escalation) -> None:
        self.escalation = escalation

    async def report_page_out(
        self, request: escalation_pb2.ReportPageOutRequest, **kwargs: Any
    ) -> escalation_pb2.ReportPageOutResponse:
        return await self.escalation.ReportPageOut(request, **kwargs)


async def test_a_page_out_report_that_timed_out_is_sent_again() -> None:
    escalation = _Escalation([grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE])
    client: Any = _Client(escalation)
    peer = EscalationPeer(lambda: client)
    assert await peer.report_page_out("17", "alice", "17/0/0/0/alice", 1_000)
    assert len(escalation.calls) == 3
    assert {c.idempotency_key for c in escalation.calls} == {"17/0/0/0/alice"}


async def test_retries_stop_after_the_last_attempt_and_on_a_refusal() -> None:
    timing_out = _Escalation([grpc.StatusCode.DEADLINE_EXCEEDED] * REPORT_ATTEMPTS)
    client: Any = _Client(timing_out)
    assert not await EscalationPeer(lambda: client).report_page_out("17", "alice", "k", 1_000)
    assert len(timing_out.calls) == REPORT_ATTEMPTS
    refused = _Escalation([grpc.StatusCode.INVALID_ARGUMENT])
    client = _Client(refused)
    assert not await EscalationPeer(lambda: client).report_page_out("17", "alice", "k", 1_000)
    assert len(refused.calls) == 1  # not a matter of time: not sent again
