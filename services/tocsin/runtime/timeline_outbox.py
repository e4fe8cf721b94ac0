"""The timeline outbox: other services' timeline entries, carried to incidents by a stream.

Escalation writes a note for every level it fires ("Escalation level 1 paged alice") and
notification one for every page it sends ("SMS to alice queued"). Each used to be an
AppendTimeline call: a gRPC round trip per note, two per new incident, on the page path's
processes while the page was going out (a bare gRPC hop costs about 0.7 ms of CPU on the
reference machine, client and server together). Now the writer XADDs the
`AppendTimelineRequest` to one stream, `tocsin:{timeline-outbox}:stream` (one Redis round
trip, the notes of a hop in one pipeline), and the incidents service applies them, many a
read, off the page path, with the same validation and the same idempotency key as the RPC
(which stays, for callers outside the stack).

It is an outbox (runtime/outbox.py, which has the mechanics and the guarantees). The
contract is the stream and its fields: `r`, the `AppendTimelineRequest` protobuf; `tp`,
the writer's W3C traceparent ('' = none), which the ESCALATED event an entry may publish
carries, as the RPC's call context did. Writing it needs the stack's Redis credentials,
which only the services hold.

Guarantees. An entry is appended at most once (its idempotency key, as with the RPC) and
at least once if its write returned: the consumer group keeps an entry pending until the
incidents process that read it has applied it (XACK after, pipelined with its next read),
and a process that died holding entries has them taken over (XAUTOCLAIM) after
`claim_idle_ms`. An entry that can never be applied (its incident expired, an invalid
entry) is logged and acknowledged; one that keeps failing for another reason is given up
after `max_deliveries` tries, logged. A write that fails is the writer's to log, as a
failed AppendTimeline was: a note is best effort and never holds a page back. Entries of
one incident are applied in the order they were written when one incidents process reads
them (the usual case); with several replicas two of them may apply one incident's notes
out of order. Every note carries its own time (`entry.at`), which the timeline shows.

The stream is capped at `MAXLEN` entries (approximately): a consumer down for longer than
the cap's worth of notes loses the oldest, as the RPC's callers lost notes while incidents
was down.
"""

from __future__ import annotations

import logging

from tocsin.runtime.outbox import (
    REQUEST_FIELD,
    TRACE_FIELD,
    Outbox,
    OutboxConsumer,
    OutboxStream,
)
from tocsin.v1 import incidents_pb2

__all__ = [
    "GROUP",
    "MAXLEN",
    "REQUEST_FIELD",
    "STREAM_KEY",
    "TRACE_FIELD",
    "TimelineOutbox",
    "TimelineOutboxConsumer",
]

log = logging.getLogger(__name__)

STREAM_KEY = "tocsin:{timeline-outbox}:stream"
GROUP = "incidents"
MAXLEN = 100_000
"""About this many entries are kept (XADD MAXLEN ~): minutes of notes at any rate the
page path reaches, for a consumer that was away."""
STREAM: OutboxStream[incidents_pb2.AppendTimelineRequest] = OutboxStream(
    STREAM_KEY,
    GROUP,
    incidents_pb2.AppendTimelineRequest.FromString,
    name="timeline outbox",
    worker="incidents timeline outbox",
    logger=log,
    maxlen=MAXLEN,
)


class TimelineOutbox(Outbox[incidents_pb2.AppendTimelineRequest]):
    """The writers' side: queue timeline entries for incidents to append."""

    stream = STREAM


class TimelineOutboxConsumer(OutboxConsumer[incidents_pb2.AppendTimelineRequest]):
    """The incidents side: read the outbox in a consumer group and append its entries.

    It does not linger: at 80 new incidents/s a 20 ms linger delayed level 0 (created ->
    fired p50 19 ms against 3-4) and the first SMS (p50 41-51 ms against 13-26), measured
    in interleaved runs (BENCHMARKS.md), while under load the reads fill up by
    themselves."""

    stream = STREAM
