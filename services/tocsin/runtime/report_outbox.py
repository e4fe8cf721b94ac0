"""The page-out reports: notification tells escalation that a user's first page went out,
through a stream.

A level of an escalation policy counts the delay to the next level from the moment its
users' first pages went out (escalation/domain.py), so notification reports each one.
That was a ReportPageOut call: a gRPC round trip per new incident, after its SMS, on the
two busiest processes of the page path (taking it away entirely, as an upper bound, cut
escalation's CPU by 0.3 ms per incident at 200 new incidents/s; BENCHMARKS.md). Now
notification XADDs the `ReportPageOutRequest` to `tocsin:{page-out-reports}:stream` and
escalation applies it (`EscalationEngine.report_page_out`, as the RPC does), many a read.
It is an outbox (runtime/outbox.py: the mechanics and the guarantees); the RPC stays, for
callers outside the stack.

The contract is the stream and its fields: `r`, the `ReportPageOutRequest` protobuf (its
`out_at` set: the report may be read later than it was written); `tp`, the writer's W3C
traceparent ('' = none), under which escalation applies it, so the report is a span of
the page's trace as the RPC was.

What it changes for the guarantee: a report the RPC lost (escalation overloaded or
restarting; it was tried three times) held the next level until its bound
(LEVEL_HOLD_MAX_MS). A queued report stays pending until an escalation process has
applied it, and a dead one's are taken over, so it is applied once it is queued; a
report is idempotent (the first one for a user and level counts). A report that could not
be queued (Redis down) is logged, and the bound applies, as before.
"""

from __future__ import annotations

import logging

from tocsin.runtime.outbox import Outbox, OutboxConsumer, OutboxStream
from tocsin.v1 import escalation_pb2

log = logging.getLogger(__name__)

STREAM_KEY = "tocsin:{page-out-reports}:stream"
GROUP = "escalation"
LINGER_MS = 100
"""After a read that did not fill a batch, escalation's reader waits this long (real time)
before reading again, so that under load one read carries the reports of many incidents
(at 200 new incidents/s it read 0.7-1 time per report without it). It delays no level: a
report names when the page went out, a level's delay is at least a minute
(escalation/domain.py MIN_DELAY_MS), and the next level counts from that time."""
STREAM: OutboxStream[escalation_pb2.ReportPageOutRequest] = OutboxStream(
    STREAM_KEY,
    GROUP,
    escalation_pb2.ReportPageOutRequest.FromString,
    name="page-out report",
    worker="escalation page-out reports",
    logger=log,
    linger_ms=LINGER_MS,
)


class ReportOutbox(Outbox[escalation_pb2.ReportPageOutRequest]):
    """Notification's side: queue page-out reports for escalation."""

    stream = STREAM


class ReportOutboxConsumer(OutboxConsumer[escalation_pb2.ReportPageOutRequest]):
    """Escalation's side: read the reports in a consumer group and apply them."""

    stream = STREAM
