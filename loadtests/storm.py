"""`python -m loadtests.storm`: an alert storm on one service, canaries on another.

A storm of new incidents (30,000 offered in 10 s by default) goes to `lt-single` through
the Events API (`POST /v2/enqueue`, one dedup key each), open loop, from its own process
(a lean HTTP/1.1 generator: keep-alive connections, a prebuilt request per alert). Meanwhile
canaries (2/s for 60 s) go to `lt-quiet`, a service whose events take another lane, from a
second process. Every request is due at `start + i / rate`; its reply (202, or 429/503 with
`Retry-After`, counted apart) and due time are kept. Refused alerts are not retried (an
Alertmanager or PagerDuty client would send them again after `Retry-After`).

Then the fake Twilio's SMS are read back: each accepted alert must have exactly one SMS
(to lt-primary for the storm, lt-canary for canaries; the body names the alert), a refused
one none. Latency runs from an alert's due time to its SMS's arrival at the fake (both
CLOCK_MONOTONIC). A third process acknowledges storm incidents during the storm (`--acks`,
100 by default, from 1 s after its start to its end, through the same endpoint and the
storm's own routing key): each must be answered 202 at once (acknowledgements are never
throttled) and its incident, if it was open, be acknowledged. Redis memory is read
before the storm, when its last alert was answered, and after the last page (`INFO
memory`), with `MEMORY USAGE` of a sample of incidents' own keys and of the event
streams (bytes per stream entry). Everything goes to
`<out>/result.json`; the summary is printed. BENCHMARKS.md has the figures.

    .venv/bin/python -m loadtests.storm --out loadtests/results/storm            # defaults
    .venv/bin/python -m loadtests.storm --rate-limit 0 --out loadtests/results/storm-nolimit
    .venv/bin/python -m loadtests.storm --storm 0 --out loadtests/results/storm-control  # no storm

`--rate-limit` sets TOCSIN_EVENTS_API_RATE (events per minute per routing key; the
product's default, 600, unless given; 0 = off, the issue's storm).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import secrets
import shlex
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools
import redis.asyncio as aioredis
import uvloop

from loadtests.collect import fake_get
from loadtests.scenario import PRIMARY_NUMBER, apply_config
from loadtests.stack import LocalStack, Target, embedded_redis_url
from loadtests.stats import machine
from tocsin.client.client import TocsinClient
from tocsin.runtime.events import INCIDENT_SHARDS, lane_of, shard_streams
from tocsin.v1 import escalation_pb2, incidents_pb2

STORM_SERVICE = "lt-single"
STORM_KEY = "10ad7e5710ad7e5710ad7e5710ad0001"
QUIET_SERVICE = "lt-quiet"
QUIET_KEY = "10ad7e5710ad7e5710ad7e5710ad0002"
CANARY_NUMBER = "+12025550103"
CONNECTIONS = 256
SIDE_CONNECTIONS = 16
"""Connections of the canaries' and the acknowledgements' senders: enough that a slow
answer does not hold the next one back in the sender (a queue of the generator's own)."""


def storm_summary(run_id: str, n: int) -> str:
    return f"st {run_id} {n} disk full on db{n % 100}"


def canary_summary(run_id: str, n: int) -> str:
    return f"ca {run_id} {n} canary on the quiet service"


def _ack(key: str, dedup_key: str) -> bytes:
    return json.dumps(
        {"routing_key": key, "event_action": "acknowledge", "dedup_key": dedup_key}
    ).encode()


def acked_storm_alerts(acks: int, storm: int) -> list[int]:
    """The storm alerts the acknowledgements name: among the first 600 (due in the first
    fifth of a second at the default rate, so open by the time their acknowledgement is
    due, and within the per-key burst when the rate limit is on)."""
    first = min(storm, 600)
    return [i * first // acks for i in range(acks)] if acks and storm else []


def _event(key: str, dedup_key: str, summary: str) -> bytes:
    return json.dumps(
        {
            "routing_key": key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {"summary": summary, "source": "loadtest", "severity": "critical"},
        }
    ).encode()


# -- the generator (one process per kind) --------------------------------------------------


@dataclass
class Offered:
    """What happened to each alert: its due time (CLOCK_MONOTONIC ns) and reply status
    (0: no reply), and whether a refusal carried Retry-After."""

    due_ns: list[int] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    retry_after: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    replied_ns: list[int] = field(default_factory=list)


class _Conn(asyncio.Protocol):
    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.index = -1
        self.retry_after = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.decode()

    def on_message_complete(self) -> None:
        if self.index < 0:
            # An answer to no request of ours (a server's 408 before closing an idle
            # connection): counting it would end the run one reply early and give the
            # last request this status.
            return
        self.load.replied(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)

    def send(self, index: int) -> None:
        assert self.transport is not None
        self.index, self.retry_after = index, ""
        self.transport.write(self.load.requests[index])


class _Load:
    def __init__(self, host: str, port: int, bodies: list[bytes]) -> None:
        self.requests = [
            (
                f"POST /v2/enqueue HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for body in bodies
        ]
        self.host, self.port = host, port
        n = len(bodies)
        self.offered = Offered([0] * n, [0] * n, [""] * n, 0.0, [0] * n)
        self._idle: list[_Conn] = []
        self._all: list[_Conn] = []
        self._waiting: deque[int] = deque()
        self._left = len(bodies)
        self._connections = 0
        self._done: asyncio.Future[None] | None = None

    async def run(self, rate: float, start_ns: int, connections: int) -> Offered:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._connections = connections
        for _ in range(connections):
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            self._all.append(conn)
        self._idle = list(self._all)
        sent, count = 0, len(self.requests)
        while sent < count:
            now = time.monotonic_ns()
            due = start_ns + round(sent * 1e9 / rate)
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                continue
            while sent < count and start_ns + round(sent * 1e9 / rate) <= now:
                self.offered.due_ns[sent] = start_ns + round(sent * 1e9 / rate)
                self._dispatch(sent)
                sent += 1
            await asyncio.sleep(0)
        if self._left:
            await self._done
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        return self.offered

    def _dispatch(self, index: int) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.send(index)
                return
            self._forget(conn)  # closed while idle (the gateway's keep-alive timeout)
        if len(self._all) < self._connections:
            asyncio.get_running_loop().create_task(self._connect_and_send(index))
        else:
            self._waiting.append(index)

    async def _connect_and_send(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        conn = _Conn(self)
        self._all.append(conn)
        try:
            await loop.create_connection(lambda: conn, self.host, self.port)
        except OSError:
            self._forget(conn)
            self._finish()
            return
        conn.send(index)

    def replied(self, conn: _Conn, status: int) -> None:
        self.offered.status[conn.index] = status
        self.offered.replied_ns[conn.index] = time.monotonic_ns()
        self.offered.retry_after[conn.index] = conn.retry_after
        conn.index = -1
        self._finish()
        if self._waiting:
            conn.send(self._waiting.popleft())
        else:
            self._idle.append(conn)

    def _forget(self, conn: _Conn) -> None:
        if conn in self._all:
            self._all.remove(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def lost(self, conn: _Conn) -> None:
        self._forget(conn)
        if conn.index >= 0:  # its request got no reply (status 0)
            conn.index = -1
            self._finish()
        if self._waiting and len(self._all) < self._connections:
            asyncio.get_running_loop().create_task(self._connect_and_send(self._waiting.popleft()))

    def _finish(self) -> None:
        self._left -= 1
        if self._left == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)


def _generator(
    http: str,
    bodies: list[bytes],
    rate: float,
    connections: int,
    conn: multiprocessing.connection.Connection,
) -> None:
    host, port = http.rsplit(":", 1)
    conn.send("ready")
    start_ns: int = conn.recv()
    before = time.process_time()
    offered = uvloop.run(_Load(host, int(port), bodies).run(rate, start_ns, connections))
    offered.cpu_s = time.process_time() - before
    conn.send(offered)
    conn.close()


@dataclass
class _Sender:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection


def _spawn(http: str, bodies: list[bytes], rate: float, connections: int) -> _Sender:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(
        target=_generator, args=(http, bodies, rate, connections, theirs), daemon=True
    )
    process.start()
    theirs.close()
    if not (ours.poll(60) and ours.recv() == "ready"):
        raise RuntimeError("a generator did not start")
    return _Sender(process, ours)


# -- reading back ------------------------------------------------------------------------


def _percentiles(values_ms: list[float]) -> dict[str, float | int | None]:
    if not values_ms:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"count": len(ordered), "p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 1)}


async def _sms_arrivals(fake: str, run_id: str) -> tuple[dict[tuple[str, int], list[int]], int]:
    """(kind, n) -> arrival times of this run's SMS, to the number each kind must go to;
    also how many of this run's SMS went elsewhere or were refused (a bug either way)."""
    arrivals: dict[tuple[str, int], list[int]] = {}
    wrong = 0
    for record in await fake_get(fake, "/_fake/requests?kind=sms"):
        parts = (record.get("body") or "").split("] ", 1)[-1].split(" ")
        if len(parts) < 3 or parts[1] != run_id or parts[0] not in ("st", "ca"):
            continue
        expected = PRIMARY_NUMBER if parts[0] == "st" else CANARY_NUMBER
        if record["http_status"] != 201 or record["to"] != expected:
            wrong += 1
            continue
        key = (parts[0], int(parts[2]))
        arrivals.setdefault(key, []).append(int(record["received_monotonic_ns"]))
    return arrivals, wrong


async def _memory(redis: aioredis.Redis) -> dict[str, int]:
    info = await redis.info("memory")
    return {"used_memory": int(info["used_memory"]), "dataset": int(info["used_memory_dataset"])}


async def _stream_bytes(redis: aioredis.Redis) -> tuple[int, int]:
    """(bytes, entries) of every lane's stream of every shard."""
    total = entries = 0
    for shard in range(INCIDENT_SHARDS):
        for key in shard_streams(shard):
            total += int(await redis.memory_usage(key, samples=0) or 0)
            entries += int(await redis.xlen(key))
    return total, entries


async def _incident_bytes(redis: aioredis.Redis, client: TocsinClient, run_id: str) -> float:
    """Mean MEMORY USAGE of a sample of this run's storm incidents' own keys (hash,
    alerts, timeline): the incident as incidents stores it."""
    request = incidents_pb2.ListIncidentsRequest(
        service_ids=[STORM_SERVICE], summary_contains=f"st {run_id} ", page_size=200
    )
    reply = await client.incidents.ListIncidents(request, timeout=60)
    sizes = []
    for incident in reply.incidents:
        base = f"tocsin:{{t{int(incident.id) % INCIDENT_SHARDS}}}:inc:{incident.id}"
        size = 0
        for key in (base, base + ":alerts", base + ":timeline"):
            size += int(await redis.memory_usage(key, samples=0) or 0)
        sizes.append(size)
    return sum(sizes) / len(sizes) if sizes else 0.0


async def _canary_path(
    client: TocsinClient, run_id: str, arrivals: dict[tuple[str, int], list[int]], offered: Offered
) -> dict[str, Any]:
    """Where a canary's time went: due -> incident created (ingest), created -> level 0
    fired (the escalation consumer and fast path), fired -> SMS at the fake (Notify, the
    sender, Twilio's request). Stack times are wall-clock ms, placed on the monotonic
    axis of due and arrival times."""
    request = incidents_pb2.ListIncidentsRequest(
        service_ids=[QUIET_SERVICE], summary_contains=f"ca {run_id} ", page_size=500
    )
    reply = await client.incidents.ListIncidents(request, timeout=60)
    offset_ms = (time.time_ns() - time.monotonic_ns()) / 1e6
    ingest, consume, send = [], [], []
    for incident in reply.incidents:
        n = int(incident.summary.split(" ")[2])
        if ("ca", n) not in arrivals:
            continue
        got = await client.escalation.GetEscalation(
            escalation_pb2.GetEscalationRequest(incident_id=incident.id), timeout=60
        )
        fired = [p.at.ToMilliseconds() for p in got.escalation.pages if p.level == 0]
        if not fired:
            continue
        due = offered.due_ns[n] / 1e6 + offset_ms
        created = incident.created_at.ToMilliseconds()
        sms = min(arrivals[("ca", n)]) / 1e6 + offset_ms
        ingest.append(created - due)
        consume.append(min(fired) - created)
        send.append(sms - min(fired))
    return {
        "due_to_created": _percentiles(ingest),
        "created_to_level_0_fired": _percentiles(consume),
        "fired_to_sms": _percentiles(send),
    }


async def _acknowledged(
    client: TocsinClient, run_id: str, storm: Offered, acked: list[int]
) -> set[int]:
    """The accepted storm alerts named by an acknowledgement whose incident is acknowledged
    (an incident acknowledged before its page is sent must not page: not lost)."""
    found: set[int] = set()
    for n in sorted(set(acked)):
        if storm.status[n] != 202:
            continue
        request = incidents_pb2.ListIncidentsRequest(
            service_ids=[STORM_SERVICE], summary_contains=f"st {run_id} {n} disk", page_size=5
        )
        incidents = (await client.incidents.ListIncidents(request, timeout=60)).incidents
        if incidents and incidents[0].HasField("acknowledged_at"):
            found.add(n)
    return found


def _acks(
    acked: list[int], offered: Offered, storm: Offered, acknowledged: set[int]
) -> dict[str, Any]:
    """The acknowledgements sent during the storm: their replies (due -> answer), and of
    those whose storm alert was accepted and answered before the acknowledgement was sent,
    how many found their incident (acknowledged) and how many did not."""
    statuses = Counter(offered.status)
    replies = [
        (offered.replied_ns[i] - offered.due_ns[i]) / 1e6
        for i, status in enumerate(offered.status)
        if status
    ]
    taken, missed = 0, []
    for i, n in enumerate(acked):
        if offered.status[i] != 202 or storm.status[n] != 202:
            continue
        if not 0 < storm.replied_ns[n] < offered.due_ns[i]:
            continue  # the trigger was not answered yet when the acknowledgement went
        if n in acknowledged:
            taken += 1
        else:
            missed.append(n)
    return {
        "offered": len(offered.status),
        "statuses": {str(s): c for s, c in statuses.items()},
        "reply_ms": _percentiles(replies),
        "acknowledged_open_incident": taken,
        "not_acknowledged": len(missed),
        "not_acknowledged_alerts": missed[:20],
    }


# -- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    out: Path
    storm: int = 30_000
    storm_seconds: float = 10.0
    canaries: int = 120
    canary_seconds: float = 60.0
    rate_limit: int = 600
    """TOCSIN_EVENTS_API_RATE (the product's default; the other load tests turn it off)."""
    backlog_max_age: str | None = None
    acks: int = 100
    """Acknowledgements of storm incidents sent during the storm."""
    drain_timeout: float = 30.0
    log_level: str = "WARNING"


async def run(options: Options) -> dict[str, Any]:
    run_id = secrets.token_hex(4)
    data_dir = Path(tempfile.mkdtemp(prefix="tocsin-storm-"))
    extra = {"TOCSIN_EVENTS_API_RATE": str(options.rate_limit)}
    if options.backlog_max_age is not None:
        extra["TOCSIN_BACKLOG_MAX_AGE"] = options.backlog_max_age
    stack = LocalStack(data_dir, options.out / "logs", log_level=options.log_level, env=extra)
    target: Target = stack.start()
    try:
        return await _measure(options, run_id, target, data_dir)
    finally:
        stack.stop()


async def _measure(options: Options, run_id: str, target: Target, data_dir: Path) -> dict[str, Any]:
    assert lane_of(STORM_SERVICE) != lane_of(QUIET_SERVICE)
    client = TocsinClient(target.endpoints)
    redis = aioredis.Redis.from_url(
        embedded_redis_url(options.out / "logs" / "stack.log", data_dir)
    )
    try:
        await apply_config(client)
        storm_bodies = [
            _event(STORM_KEY, f"st-{run_id}-{n}", storm_summary(run_id, n))
            for n in range(options.storm)
        ]
        canary_bodies = [
            _event(QUIET_KEY, f"ca-{run_id}-{n}", canary_summary(run_id, n))
            for n in range(options.canaries)
        ]
        before = await _memory(redis)
        streams_before = await _stream_bytes(redis)
        http = target.endpoints.http
        storm_rate = max(options.storm / options.storm_seconds, 1.0)
        storm = _spawn(http, storm_bodies, storm_rate, CONNECTIONS if options.storm else 1)
        canaries = _spawn(
            http, canary_bodies, options.canaries / options.canary_seconds, SIDE_CONNECTIONS
        )
        acked = acked_storm_alerts(options.acks, options.storm)
        ack_bodies = [_ack(STORM_KEY, f"st-{run_id}-{n}") for n in acked]
        ack_seconds = max(0.1, options.storm_seconds - 1)
        ackers = (
            _spawn(http, ack_bodies, len(ack_bodies) / ack_seconds, SIDE_CONNECTIONS)
            if acked
            else None
        )
        start_ns = time.monotonic_ns() + 300_000_000
        storm.conn.send(start_ns)
        canaries.conn.send(start_ns)
        if ackers is not None:
            ackers.conn.send(start_ns + 1_000_000_000)
        storm_offered: Offered = await asyncio.to_thread(storm.conn.recv)
        ack_offered: Offered | None = None
        if ackers is not None:
            ack_offered = await asyncio.to_thread(ackers.conn.recv)
        answered_ns = time.monotonic_ns()
        at_peak = await _memory(redis)
        streams_at_peak = await _stream_bytes(redis)
        canary_offered: Offered = await asyncio.to_thread(canaries.conn.recv)
        accepted = {("st", n) for n, status in enumerate(storm_offered.status) if status == 202} | {
            ("ca", n) for n, status in enumerate(canary_offered.status) if status == 202
        }
        acknowledged = await _acknowledged(client, run_id, storm_offered, acked)
        accepted -= {("st", n) for n in acknowledged}  # may have been silenced before paging
        # wait for every accepted alert's SMS (or none new for drain_timeout)
        seen, quiet_since = -1, time.monotonic()
        while True:
            arrivals, wrong = await _sms_arrivals(target.fake_twilio, run_id)
            paged = sum(1 for key in accepted if key in arrivals)
            if paged == len(accepted):
                break
            if paged != seen:
                seen, quiet_since = paged, time.monotonic()
                print(f"paged {paged} of {len(accepted)}", file=sys.stderr, flush=True)
            elif time.monotonic() - quiet_since > options.drain_timeout:
                break
            await asyncio.sleep(2)
        await asyncio.sleep(3)  # anything sent twice arrives too
        arrivals, wrong = await _sms_arrivals(target.fake_twilio, run_id)
        drained_ns = time.monotonic_ns()
        after = await _memory(redis)
        streams_after = await _stream_bytes(redis)
        incident_bytes = await _incident_bytes(redis, client, run_id)
        canary_path = await _canary_path(client, run_id, arrivals, canary_offered)
        ack_side = (
            _acks(acked, ack_offered, storm_offered, acknowledged)
            if ack_offered is not None
            else None
        )
    finally:
        await redis.aclose()
        await client.close()

    def side(kind: str, offered: Offered) -> dict[str, Any]:
        statuses = Counter(offered.status)
        refused = [i for i, s in enumerate(offered.status) if s in (429, 503)]
        ok = [i for i, s in enumerate(offered.status) if s == 202]
        latencies = [
            (min(arrivals[(kind, i)]) - offered.due_ns[i]) / 1e6
            for i in ok
            if (kind, i) in arrivals
        ]
        return {
            "offered": len(offered.status),
            "accepted": len(ok),
            "refused_429": statuses.get(429, 0),
            "refused_503": statuses.get(503, 0),
            "refused_with_retry_after": sum(1 for i in refused if offered.retry_after[i]),
            "other_statuses": {str(s): c for s, c in statuses.items() if s not in (202, 429, 503)},
            "lost": sum(
                1
                for i in ok
                if (kind, i) not in arrivals and not (kind == "st" and i in acknowledged)
            ),
            "acknowledged_before_paged": sum(
                1 for i in ok if (kind, i) not in arrivals and kind == "st" and i in acknowledged
            ),
            "duplicates": sum(
                len(arrivals.get((kind, i), [])) - 1 for i in ok if (kind, i) in arrivals
            ),
            "paged_though_refused": sum(1 for i in refused if (kind, i) in arrivals),
            "first_sms_ms": _percentiles(latencies),
            "generator_cpu_s": round(offered.cpu_s, 2),
        }

    storm_side = side("st", storm_offered)
    first_due = min(storm_offered.due_ns or canary_offered.due_ns)  # --storm 0: a control
    accepted_incidents = storm_side["accepted"] + side("ca", canary_offered)["accepted"]
    stream_entries_added = streams_at_peak[1] - streams_before[1]
    result = {
        "run_id": run_id,
        "options": {k: str(v) for k, v in asdict(options).items()},
        "machine": machine(),
        "storm": storm_side,
        "canaries": side("ca", canary_offered),
        "canary_path_ms": canary_path,
        "acks": ack_side,
        "wrong_or_refused_sms": wrong,
        "storm_answered_after_s": round((answered_ns - first_due) / 1e9, 1),
        "last_page_after_s": round((drained_ns - first_due) / 1e9, 1),
        "redis": {
            "before": before,
            "storm_answered": at_peak,
            "drained": after,
            "streams_before": {"bytes": streams_before[0], "entries": streams_before[1]},
            "streams_storm_answered": {"bytes": streams_at_peak[0], "entries": streams_at_peak[1]},
            "streams_drained": {"bytes": streams_after[0], "entries": streams_after[1]},
            "bytes_per_stream_entry": round(
                (streams_at_peak[0] - streams_before[0]) / stream_entries_added, 1
            )
            if stream_entries_added > 0
            else None,
            "incident_keys_bytes_mean": round(incident_bytes, 1),
            "used_memory_per_accepted_incident_drained": round(
                (after["used_memory"] - before["used_memory"]) / accepted_incidents, 1
            )
            if accepted_incidents
            else None,
        },
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.storm", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/storm"))
    parser.add_argument("--storm", type=int, default=30_000, help="new incidents (30000)")
    parser.add_argument("--storm-seconds", type=float, default=10.0)
    parser.add_argument("--canaries", type=int, default=120)
    parser.add_argument("--canary-seconds", type=float, default=60.0)
    parser.add_argument(
        "--rate-limit", type=int, default=600, help="TOCSIN_EVENTS_API_RATE (600, the default)"
    )
    parser.add_argument("--backlog-max-age", default=None, help="TOCSIN_BACKLOG_MAX_AGE")
    parser.add_argument("--acks", type=int, default=100, help="acknowledgements (100)")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    options = Options(
        out=args.out,
        storm=args.storm,
        storm_seconds=args.storm_seconds,
        canaries=args.canaries,
        canary_seconds=args.canary_seconds,
        rate_limit=args.rate_limit,
        backlog_max_age=args.backlog_max_age,
        acks=args.acks,
        drain_timeout=args.drain_timeout,
    )
    options.out.mkdir(parents=True, exist_ok=True)
    result = uvloop.run(run(options))
    result["command"] = shlex.join(
        [sys.executable, "-m", "loadtests.storm", *(argv or sys.argv[1:])]
    )
    (options.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    shown = ("storm", "canaries", "canary_path_ms", "acks", "redis")
    print(json.dumps({k: result[k] for k in shown}, indent=2))


if __name__ == "__main__":
    main()
