"""Where the incidents service keeps things in Redis.

Everything about an incident lives under its shard's hash tag T = `shard_tag(id % 16)`,
so one script can change it atomically (lua/incident_lib.lua builds the same names):

    tocsin:T:inc:<id>             hash    p (Incident protobuf without the counters),
                                          o (protobuf of the counters, appended to p),
                                          sv (state version, for compare-and-set),
                                          v, n, sev, u, la (version, alert_count,
                                          severity, updated_at ms, last_alert_at ms),
                                          ln (its event lane)
    tocsin:T:inc:<id>:alerts      list    the last ALERTS_KEPT Alert protobufs
    tocsin:T:inc:<id>:timeline    list    TimelineEntry protobufs, oldest first
    tocsin:T:inc:<id>:idem:<key>  string  an AppendTimeline idempotency key, with a TTL
    tocsin:T:dedup                hash    "<service_id>:<dedup_key>" -> id, open incidents only
    tocsin:T:incident-seq         string  counter k; a new id is k * 16 + shard
    tocsin:T:incidents:status:<n> zset    (score 0) "<created_ms:013>-<id:016>" per status,
                                          so a lexicographic range is a time range
    tocsin:T:snooze:timers ...    the timer library's keys, namespaced (see snooze.py)
    tocsin:T:incident-events      stream  the outbox, lane 0 (tocsin.runtime.events)
    tocsin:T:incident-events:lane:<n>  stream  lanes 1..7; an incident's lane is `ln`
                                          in its hash (absent: 0), from its service

Services are few and not sharded: `tocsin:{services}:by-id` (id -> Service protobuf) and
`tocsin:{services}:by-key` (integration key -> id).
"""

from __future__ import annotations

from tocsin.runtime.events import incident_shard, stream_key
from tocsin.runtime.timers import shard_tag

SERVICES_BY_ID = "tocsin:{services}:by-id"
SERVICES_BY_KEY = "tocsin:{services}:by-key"

ID_WIDTH = 16
CREATED_WIDTH = 13


def tag_of(incident_id: str) -> str:
    return shard_tag(incident_shard(incident_id))


def incident_key(incident_id: str) -> str:
    return f"tocsin:{tag_of(incident_id)}:inc:{incident_id}"


def alerts_key(incident_id: str) -> str:
    return incident_key(incident_id) + ":alerts"


def timeline_key(incident_id: str) -> str:
    return incident_key(incident_id) + ":timeline"


def idempotency_key(incident_id: str, key: str) -> str:
    return incident_key(incident_id) + ":idem:" + key


def dedup_key(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:dedup"


def sequence_key(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:incident-seq"


def status_index_key(shard: int, status: int) -> str:
    return f"tocsin:{shard_tag(shard)}:incidents:status:{status}"


def events_key(shard: int) -> str:
    """The shard's lane-0 stream, which the scripts take; they pick the incident's lane."""
    return stream_key(shard)


def index_member(created_ms: int, incident_id: str) -> str:
    """Sorts by creation time, then id, as plain bytes (lua/incident_lib.lua agrees)."""
    return f"{created_ms:0{CREATED_WIDTH}d}-{int(incident_id):0{ID_WIDTH}d}"


def member_id(member: bytes | str) -> str:
    text = member.decode() if isinstance(member, bytes) else member
    return str(int(text.rpartition("-")[2]))


def time_bound(ms: int) -> str:
    """The member prefix of a moment, for lexicographic range bounds."""
    return f"{max(ms, 0):0{CREATED_WIDTH}d}"


def as_bytes(value: object) -> bytes:
    """A Redis reply as bytes (clients never decode, see tocsin.runtime.redis)."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes from Redis, got {type(value).__name__}")
    return value
