"""Incidents in Redis: ingest with dedup, checked transitions, timeline and retention.

Every write is one Lua script in the incident's shard slot that also appends the timeline
entry and XADDs the IncidentEvent to the shard's stream (the transactional outbox), so a
change and its event are never half-written. There are two kinds of write:

- `trigger` (lua/trigger.lua) looks up the dedup entry and either joins the open incident
  or opens a new one, in one step, so two triggers with one key open one incident. A
  repeat alert only moves counters the script owns (lua/incident_lib.lua), so it needs no
  read, cannot conflict, and costs one round trip (lua/join.lua, when the key was seen
  open here before: it takes only the alert's own arguments).
- Every other change is decided in Python by a pure transition (domain.py) from the state
  read at version `sv`, and lua/apply.lua writes it only if `sv` is still the same; on a
  conflict the store reads and decides again. No concurrent update is lost, and of fifty
  concurrent acknowledgements exactly one changes anything.

Resolved incidents expire `retention` after resolution (EXPIRE on their keys, in the
resolving script); `trim_indexes` drops their index entries once they are older than
that. Nothing here scans the keyspace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tocsin.incidents import keys
from tocsin.incidents.batching import BatchedScript
from tocsin.incidents.domain import (
    RESOLVED,
    TRIGGERED,
    Change,
    SnoozeTimer,
    dedup_field,
    dedup_shard,
    entry,
    event_prefix,
    joined_entry,
    new_incident,
    opened_entry,
    received_alert,
    to_ms,
    unsnooze,
)
from tocsin.incidents.snooze import encode_payload, snooze_tag, snooze_timer_keys
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import Conflict, NotFound
from tocsin.runtime.events import (
    EVENT_FIELD,
    INCIDENT_SHARDS,
    STREAM_MAXLEN,
    incident_shard,
    lane_of,
)
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import PROTO_LUA, LuaScript
from tocsin.runtime.timers import TIMER_LUA, shard_tag
from tocsin.v1 import common_pb2, incidents_pb2

ALERTS_KEPT = 100
"""Alerts (and their timeline entries) kept per incident; alert_count counts them all."""
IDEMPOTENCY_TTL_S = 2 * 86400
"""How long an AppendTimeline idempotency key is remembered (retries come within minutes)."""
OPEN_IDS_KEPT = 10_000
"""Dedup keys remembered for the repeat fast path (forgotten all at once when full)."""
_RETRIES = 50
_NO_TIMER: dict[str, Any] = {
    "timer_action": "",
    "timer_tag": "",
    "timer_due_ms": 0,
    "timer_payload": "",
}

Decide = Callable[[incidents_pb2.Incident, int], Change | None]
"""A transition given the current incident and now (ms); None = nothing to change."""


def _lua(name: str) -> str:
    return read_lua("tocsin.incidents", f"lua/{name}")


@dataclass(frozen=True)
class TriggerResult:
    incident: incidents_pb2.Incident
    created: bool
    alert: incidents_pb2.Alert


class IncidentStore:
    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        retention: timedelta,
        *,
        alerts_kept: int = ALERTS_KEPT,
        stream_maxlen: int = STREAM_MAXLEN,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.retention = retention
        self.alerts_kept = alerts_kept
        self.stream_maxlen = stream_maxlen
        library = (PROTO_LUA, _lua("incident_lib.lua"))
        self._trigger_lua = LuaScript(redis, "trigger.lua", *library, body=_lua("trigger.lua"))
        self._join_lua = LuaScript(redis, "join.lua", *library, body=_lua("join.lua"))
        self._trigger = BatchedScript(redis, self._trigger_lua.script)
        self._join = BatchedScript(redis, self._join_lua.script)
        self._open_ids: dict[str, str] = {}
        """Dedup field -> the incident last seen open under it: a hint for the fast
        path, checked by the script, so a stale one only costs a second round trip."""
        self._apply = LuaScript(redis, "apply.lua", TIMER_LUA, *library, body=_lua("apply.lua"))
        self._append = LuaScript(redis, "append_timeline.lua", body=_lua("append_timeline.lua"))

    async def trigger(
        self,
        service: incidents_pb2.Service,
        dedup_key: str,
        alert: incidents_pb2.Alert,
        actor: common_pb2.Actor,
        traceparent: str,
    ) -> TriggerResult:
        """Join the open incident of (service, dedup_key) or open one; `alert` is validated.

        A key seen open here before goes through lua/join.lua first, which needs only the
        alert's own arguments; if that incident is no longer open under the key, the
        full lua/trigger.lua decides."""
        now = self.clock.now_ms()
        received_alert(alert, actor, now)
        shard = dedup_shard(service.id, dedup_key)
        field = dedup_field(service.id, dedup_key)
        alert_pb = alert.SerializeToString()
        joined = joined_entry(alert, actor, now).SerializeToString()
        added = event_prefix(incidents_pb2.INCIDENT_EVENT_KIND_ALERT_ADDED, now, actor, traceparent)
        open_id = self._open_ids.get(field)
        if open_id is not None:
            reply = await self._join(
                keys=[keys.dedup_key(shard), keys.events_key(shard)],
                args=self._join_lua.args(
                    tag=shard_tag(shard),
                    field=field,
                    id=open_id,
                    now_ms=now,
                    severity=alert.severity,
                    alert=alert_pb,
                    alert_entry=joined,
                    added_prefix=added,
                    kept=self.alerts_kept,
                    maxlen=self.stream_maxlen,
                    event_field=EVENT_FIELD,
                ),
            )
            if reply is not None:
                return self._trigger_result(alert, *reply)
            self._open_ids.pop(field, None)
        reply = await self._trigger(
            keys=[
                keys.dedup_key(shard),
                keys.sequence_key(shard),
                keys.events_key(shard),
                keys.status_index_key(shard, TRIGGERED),
            ],
            args=self._trigger_lua.args(
                tag=shard_tag(shard),
                shard=shard,
                shards=INCIDENT_SHARDS,
                field=field,
                now_ms=now,
                now13=keys.time_bound(now),
                severity=alert.severity,
                incident=new_incident(service, dedup_key, alert, now).SerializeToString(),
                alert=alert_pb,
                triggered_entry=opened_entry(alert, actor, now).SerializeToString(),
                alert_entry=joined,
                triggered_prefix=event_prefix(
                    incidents_pb2.INCIDENT_EVENT_KIND_TRIGGERED, now, actor, traceparent
                ),
                added_prefix=added,
                kept=self.alerts_kept,
                maxlen=self.stream_maxlen,
                event_field=EVENT_FIELD,
                lane=lane_of(service.id),
            ),
        )
        result = self._trigger_result(alert, *reply)
        if len(self._open_ids) >= OPEN_IDS_KEPT:
            self._open_ids.clear()
        self._open_ids[field] = result.incident.id
        return result

    @staticmethod
    def _trigger_result(
        alert: incidents_pb2.Alert, created: int, _id: bytes, raw: bytes, alert_id: bytes
    ) -> TriggerResult:
        alert.id = alert_id.decode()
        return TriggerResult(incidents_pb2.Incident.FromString(raw), bool(created), alert)

    async def get(
        self, incident_id: str, *, alerts: bool = False, timeline: bool = False
    ) -> incidents_pb2.Incident:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.incident_key(incident_id), "p", "o")
        if alerts:
            pipe.lrange(keys.alerts_key(incident_id), 0, -1)
        if timeline:
            pipe.lrange(keys.timeline_key(incident_id), 0, -1)
        replies = await pipe.execute()
        (p, o), *lists = replies
        if p is None:
            raise NotFound(f"incident {incident_id} does not exist")
        incident = incidents_pb2.Incident.FromString(p + o)
        if alerts:
            incident.alerts.extend(incidents_pb2.Alert.FromString(a) for a in lists.pop(0))
        if timeline:
            incident.timeline.extend(incidents_pb2.TimelineEntry.FromString(e) for e in lists[0])
        return incident

    async def get_many(self, incident_ids: Iterable[str]) -> dict[str, incidents_pb2.Incident]:
        """The incidents of `incident_ids` that exist (expired ones are left out)."""
        ids = list(incident_ids)
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for incident_id in ids:
            pipe.hmget(keys.incident_key(incident_id), "p", "o")
        replies = await pipe.execute()
        return {
            incident_id: incidents_pb2.Incident.FromString(p + o)
            for incident_id, (p, o) in zip(ids, replies, strict=True)
            if p is not None
        }

    async def find_open(self, service_id: str, dedup_key: str) -> str | None:
        """The id of the open incident of (service, dedup_key), if there is one."""
        shard = dedup_shard(service_id, dedup_key)
        found = await self.redis.hget(keys.dedup_key(shard), dedup_field(service_id, dedup_key))
        return keys.as_bytes(found).decode() if found is not None else None

    async def change(
        self, incident_id: str, decide: Decide, traceparent: str
    ) -> tuple[incidents_pb2.Incident, bool]:
        """Apply the transition `decide` (re-decided after a conflict); returns the incident
        after the call and whether anything changed."""
        for _ in range(_RETRIES):
            current, sv = await self._read(incident_id)
            now = self.clock.now_ms()
            change = decide(current, now)
            if change is None:
                return current, False
            written = await self._write(current, sv, change, now, traceparent)
            if written is not None:
                return written, True
        raise Conflict(f"incident {incident_id} kept changing; try again")

    async def unsnooze(self, incident_id: str, due_ms: int, traceparent: str) -> bool:
        """Trigger again if the snooze due at `due_ms` is still current (a snooze timer fired)."""
        try:
            _, changed = await self.change(
                incident_id, lambda current, now: unsnooze(current, due_ms, now), traceparent
            )
        except NotFound:
            return False
        return changed

    async def add_note(
        self, incident_id: str, text: str, actor: common_pb2.Actor, traceparent: str
    ) -> incidents_pb2.TimelineEntry:
        """A note changes no state, so it needs no version check (and cannot conflict)."""
        now = self.clock.now_ms()
        note = entry(incidents_pb2.TIMELINE_KIND_NOTE, now, actor, text)
        prefix = event_prefix(
            incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED, now, actor, traceparent, note=text
        )
        index = keys.status_index_key(incident_shard(incident_id), TRIGGERED)
        result = await self._run_apply(
            incident_id, index, index, now=now, timeline_entry=note, prefix=prefix
        )
        if result[0] == -1:
            raise NotFound(f"incident {incident_id} does not exist")
        return note

    async def append_timeline(
        self, incident_id: str, timeline_entry: incidents_pb2.TimelineEntry, idempotency_key: str
    ) -> bool:
        """Append unless `idempotency_key` was used for this incident before."""
        script_keys = [keys.incident_key(incident_id), keys.timeline_key(incident_id)]
        if idempotency_key:
            script_keys.append(keys.idempotency_key(incident_id, idempotency_key))
        result = await self._append(
            script_keys, entry=timeline_entry.SerializeToString(), ttl_s=IDEMPOTENCY_TTL_S
        )
        if result == -1:
            raise NotFound(f"incident {incident_id} does not exist")
        return bool(result)

    async def trim_indexes(self) -> int:
        """Drop index entries of resolved incidents created longer than `retention` ago."""
        cutoff = self.clock.now_ms() - int(self.retention.total_seconds() * 1000)
        removed = 0
        for shard in range(INCIDENT_SHARDS):
            removed += await self.redis.zremrangebylex(
                keys.status_index_key(shard, RESOLVED), "-", "(" + keys.time_bound(cutoff)
            )
        return removed

    async def _read(self, incident_id: str) -> tuple[incidents_pb2.Incident, bytes]:
        p, o, sv = await self.redis.hmget(keys.incident_key(incident_id), "p", "o", "sv")
        if p is None:
            raise NotFound(f"incident {incident_id} does not exist")
        incident = incidents_pb2.Incident.FromString(keys.as_bytes(p) + keys.as_bytes(o))
        return incident, keys.as_bytes(sv)

    async def _write(
        self,
        current: incidents_pb2.Incident,
        sv: bytes,
        change: Change,
        now: int,
        traceparent: str,
    ) -> incidents_pb2.Incident | None:
        """Compare-and-set `change`; the incident written, or None after a conflict."""
        incident_id = current.id
        shard = incident_shard(incident_id)
        new = change.incident
        release = dedup_field(new.service_id, new.dedup_key) if change.release_dedup else ""
        expire = int(self.retention.total_seconds()) if new.status == RESOLVED else 0
        timer_args = _NO_TIMER
        if change.snooze_timer is SnoozeTimer.ARM:
            due = change.snooze_due_ms
            timer_args = {
                "timer_action": "arm",
                "timer_tag": snooze_tag(shard),
                "timer_due_ms": due,
                "timer_payload": encode_payload(due, traceparent),
            }
        elif change.snooze_timer is SnoozeTimer.CANCEL:
            timer_args = {**_NO_TIMER, "timer_action": "cancel", "timer_tag": snooze_tag(shard)}
        actor = change.entry.actor
        result = await self._run_apply(
            incident_id,
            keys.status_index_key(shard, current.status),
            keys.status_index_key(shard, new.status),
            sv=sv,
            state=new.SerializeToString(),
            now=now,
            member=keys.index_member(to_ms(current.created_at), incident_id),
            timeline_entry=change.entry,
            prefix=event_prefix(change.event_kind, now, actor, traceparent),
            release=release,
            expire=expire,
            timer_args=timer_args,
        )
        if result[0] == -1:
            raise NotFound(f"incident {incident_id} does not exist")
        return incidents_pb2.Incident.FromString(result[1]) if result[0] == 1 else None

    async def _run_apply(
        self,
        incident_id: str,
        old_index: str,
        new_index: str,
        *,
        now: int,
        timeline_entry: incidents_pb2.TimelineEntry,
        prefix: bytes,
        sv: bytes = b"",
        state: bytes = b"",
        member: str = "",
        release: str = "",
        expire: int = 0,
        timer_args: dict[str, Any] = _NO_TIMER,
    ) -> list[Any]:
        """Run lua/apply.lua (see its header for the arguments); an empty `sv` writes no
        state and skips the version check."""
        shard = incident_shard(incident_id)
        return await self._apply(
            keys=[
                keys.incident_key(incident_id),
                keys.timeline_key(incident_id),
                keys.alerts_key(incident_id),
                keys.events_key(shard),
                old_index,
                new_index,
                keys.dedup_key(shard),
                *snooze_timer_keys(shard),
            ],
            id=incident_id,
            expected_sv=sv,
            state=state,
            now_ms=now,
            member=member,
            timeline_entry=timeline_entry.SerializeToString(),
            prefix=prefix,
            release=release,
            expire_s=expire,
            maxlen=self.stream_maxlen,
            event_field=EVENT_FIELD,
            **timer_args,
        )
