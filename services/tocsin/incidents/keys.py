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
    tocsin:T:inc:<id>:subscriptions  hash  its stakeholder subscriptions, kept by the
                                          webhooks service (tocsin.webhooks.store), in
                                          the incident's slot and expiring with it
    tocsin:T:dedup                hash    "<service_id>:<dedup_key>" -> id, open incidents only;
                                          or, for an incident merged into another, its
                                          merge redirect "m:<id>:<field>" (see below)
    tocsin:T:incident-seq         string  counter k; a new id is k * 16 + shard
    tocsin:T:incident-numbers     zset    id scored by its number (1 hash field `nr` too)
    tocsin:T:incidents:status:<n> zset    (score 0) "<created_ms:013>-<id:016>" per status,
                                          so a lexicographic range is a time range
    tocsin:T:snooze:timers ...    the timer library's keys, namespaced (see snooze.py)
    tocsin:T:incident-events      stream  the outbox, lane 0 (tocsin.runtime.events)
    tocsin:T:incident-events:lane:<n>  stream  lanes 1..7; an incident's lane is `ln`
                                          in its hash (absent: 0), from its service

Numbers. The number people say ("#18") is not the id: ids are allocated per shard (the
trigger script must stay in its shard's slot), so in the order incidents open they jump
around (#31, #17, #20). Numbers come from one counter for the whole stack,
`tocsin:{incident-numbers}:seq` (NUMBER_SEQUENCE), in a slot of its own. On a Cluster a
script cannot touch a key of another slot, so the counter cannot be increased inside
trigger.lua; instead trigger.lua, when it would open an incident and was given no number,
writes nothing and says so; the store then takes a number (lua/number.lua) and runs
trigger.lua again with it. Usually, though, the first run already carries a number: each
process takes the next one ahead, off the page path (store.py `_reserve`), so a new
incident costs one run; a join gives it back, a reply lost with it drops it. An alert
that joins an open incident (every repeat, and every retry of a Trigger whose reply was
lost, since retries carry the dedup key) never uses a number, so numbers have no gaps
except where two replicas raced to open the same incident (the loser's number is
skipped), a process stopped holding its reserved number, or a reply was lost. Each shard
indexes its incidents by number (`incident-numbers`), so "#18" is found with one
ZRANGEBYSCORE per shard. If the counter ever goes back (a Cluster failover that lost its
last increments), the first shard that already has a number it is given refuses it and
the counter is raised past the highest number of every shard; a duplicate made before
that, in another shard, is reported as ambiguous ("#18 names 2 incidents"), never
guessed. Concurrent first alerts of one key in one process wait for the first to open the
incident, so they take no numbers.

Merges. Merging B into A resolves B and, in the same script (lua/apply.lua, B's slot),
turns B's dedup entry into the redirect "m:<A's id>:<A's dedup field>", so B's key keeps
routing to A. A lives in another slot, so the redirect is followed, not joined in one
script: trigger.lua answers {-3, redirect}, and lua/join.lua in A's slot joins A if A's
own entry still names it (A open, and still the incident of its key), or answers A's own
redirect when A was merged on (followed up to MERGE_HOPS times). When A is no longer
open, the redirect leads nowhere: trigger.lua then drops it (if B's field still holds it)
and opens a new incident as for a free key, so B's key is released when A resolves, as
A's own is. A redirect whose key never comes back stays until it does (one hash field
per merge).

Services are few and not sharded: `tocsin:{services}:by-id` (id -> Service protobuf) and
`tocsin:{services}:by-key` (integration key -> id).
"""

from __future__ import annotations

from tocsin.runtime.events import incident_shard, stream_key
from tocsin.runtime.timers import shard_tag

SERVICES_BY_ID = "tocsin:{services}:by-id"
SERVICES_BY_KEY = "tocsin:{services}:by-key"

NUMBER_SEQUENCE = "tocsin:{incident-numbers}:seq"
NUMBERED = "tocsin:{incident-numbers}:numbered"
"""Set once every incident opened before numbers has one (store.number_existing)."""

MERGE_HOPS = 8
"""How many merge redirects one alert follows (B into A into C ...) before giving up."""

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


def redirect(incident_id: str, field: str) -> str:
    """The dedup entry of an incident merged into `incident_id` (whose dedup field is
    `field`); ids are digits, so an entry starting with "m:" is never an id."""
    return f"m:{incident_id}:{field}"


def parse_redirect(value: bytes | str) -> tuple[str, str] | None:
    """(incident id, dedup field) of a merge redirect; None for a plain incident id."""
    text = value.decode() if isinstance(value, bytes) else value
    if not text.startswith("m:"):
        return None
    incident_id, _, field = text[2:].partition(":")
    return incident_id, field


def sequence_key(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:incident-seq"


def number_index_key(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:incident-numbers"


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
