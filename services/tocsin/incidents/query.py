"""ListIncidents: a newest-first merge of the per-shard status indexes, then filters.

Each shard keeps one sorted set per status whose members sort by creation time, then id
(keys.index_member), so a time range is a lexicographic range. A query reads, from each
wanted (shard, status) index, a batch of members below its cursor (ZREVRANGEBYLEX),
merges them newest first, loads the candidates with one pipeline and keeps those that
pass the filters. Nothing scans the keyspace, and one call examines at most
`MAX_SCANNED` candidates: a very selective filter may return a short page with a token
to continue from.

The page token is the last member examined, and the next page starts strictly below it,
so concurrent inserts (which sort above) and status changes (the member stays the same)
neither repeat nor skip an incident.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from tocsin.incidents import keys
from tocsin.incidents.domain import STATUSES
from tocsin.incidents.store import IncidentStore
from tocsin.runtime.errors import InvalidArgument
from tocsin.runtime.events import INCIDENT_SHARDS
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_SCANNED = 5000
_MEMBER = re.compile(r"\d{13}-\d{16}")
_DESCENDING = str.maketrans("0123456789", "9876543210")


@dataclass(frozen=True)
class IncidentQuery:
    """Filters combine with AND; empty collections mean any."""

    service_ids: frozenset[str] = frozenset()
    statuses: tuple[int, ...] = STATUSES
    severities: frozenset[int] = frozenset()
    created_after_ms: int | None = None
    created_before_ms: int | None = None
    summary_contains: str = ""
    acknowledged_by: str = ""
    page_size: int = DEFAULT_PAGE_SIZE
    below: str = field(default="")
    """Only members sorting below this one (from a page token)."""

    def loads_only_matches(self) -> bool:
        """True when every candidate from the indexes matches (no filter needs the data)."""
        return not (
            self.service_ids or self.severities or self.summary_contains or self.acknowledged_by
        )

    def matches(self, incident: incidents_pb2.Incident) -> bool:
        if self.service_ids and incident.service_id not in self.service_ids:
            return False
        if self.severities and incident.severity not in self.severities:
            return False
        if self.summary_contains and (
            self.summary_contains.casefold() not in incident.summary.casefold()
        ):
            return False
        if self.acknowledged_by:  # the user id, or the display name of an actor without one
            by = incident.acknowledged_by
            if (by.user_id or by.display) != self.acknowledged_by:
                return False
        return True


def encode_page_token(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode()


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        member = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        member = ""
    if not _MEMBER.fullmatch(member):
        raise InvalidArgument.one("page_token", "is not a token from a previous page")
    return member


class _IndexReader:
    """Reads one index newest first, a batch at a time."""

    def __init__(self, redis: RedisClient, key: str, upper: str, lower: str, batch: int) -> None:
        self.redis = redis
        self.key = key
        self.upper = upper
        self.lower = lower
        self.batch = batch
        self.buffer: deque[str] = deque()
        self.exhausted = False

    async def fill(self) -> None:
        if self.buffer or self.exhausted:
            return
        members = await self.redis.zrevrangebylex(self.key, self.upper, self.lower, 0, self.batch)
        self.buffer.extend(m.decode() if isinstance(m, bytes) else m for m in members)
        if len(members) < self.batch:
            self.exhausted = True
        if self.buffer:
            self.upper = "(" + self.buffer[-1]


class _Merge:
    """The members of several readers, newest first (a k-way merge on a heap)."""

    def __init__(self, readers: list[_IndexReader]) -> None:
        self.readers = readers
        self.heap: list[tuple[str, int]] = []

    async def start(self) -> None:
        await asyncio.gather(*(reader.fill() for reader in self.readers))
        for i, reader in enumerate(self.readers):
            self._push(i, reader)

    def __bool__(self) -> bool:
        return bool(self.heap)

    async def take(self, count: int) -> list[str]:
        taken: list[str] = []
        while self.heap and len(taken) < count:
            _, i = heapq.heappop(self.heap)
            reader = self.readers[i]
            taken.append(reader.buffer.popleft())
            await reader.fill()
            self._push(i, reader)
        return taken

    def _push(self, i: int, reader: _IndexReader) -> None:
        if reader.buffer:
            heapq.heappush(self.heap, (reader.buffer[0].translate(_DESCENDING), i))


async def list_incidents(
    store: IncidentStore, query: IncidentQuery
) -> tuple[list[incidents_pb2.Incident], str]:
    """A page of incidents matching `query`, newest first, and the next page token."""
    upper = "+"
    if query.below:
        upper = "(" + query.below
    elif query.created_before_ms is not None:
        upper = "(" + keys.time_bound(query.created_before_ms)
    lower = "-" if query.created_after_ms is None else "[" + keys.time_bound(query.created_after_ms)
    index_keys = _index_keys(query.statuses)
    batch = max(8, 2 * query.page_size // len(index_keys) + 1)
    merge = _Merge([_IndexReader(store.redis, key, upper, lower, batch) for key in index_keys])
    await merge.start()
    results: list[incidents_pb2.Incident] = []
    scanned = 0
    last = ""
    cut_short = False
    while merge and len(results) < query.page_size and scanned < MAX_SCANNED:
        wanted = query.page_size - len(results)
        chunk = await merge.take(wanted if query.loads_only_matches() else max(wanted, 100))
        loaded = await store.get_many(keys.member_id(m) for m in chunk)
        for position, member in enumerate(chunk):
            scanned += 1
            last = member
            incident = loaded.get(keys.member_id(member))
            if incident is not None and query.matches(incident):
                results.append(incident)
                if len(results) == query.page_size:
                    cut_short = position < len(chunk) - 1
                    break
    more = bool(merge) or cut_short
    return results, encode_page_token(last) if more and last else ""


def _index_keys(statuses: Iterable[int]) -> list[str]:
    return [
        keys.status_index_key(shard, status)
        for shard in range(INCIDENT_SHARDS)
        for status in sorted(set(statuses))
    ]
