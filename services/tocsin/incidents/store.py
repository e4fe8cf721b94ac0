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

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from tocsin.incidents import keys
from tocsin.incidents.domain import (
    ACKNOWLEDGED,
    RESOLVED,
    TRIGGERED,
    Change,
    SnoozeTimer,
    actor_name,
    dedup_field,
    dedup_shard,
    entry,
    event_prefix,
    joined_entry,
    new_incident,
    opened_entry,
    received_alert,
    resolve,
    to_ms,
    unsnooze,
)
from tocsin.incidents.snooze import encode_payload, snooze_tag, snooze_timer_keys
from tocsin.runtime.batching import BatchedScript
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import Conflict, FailedPrecondition, NotFound
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
log = logging.getLogger(__name__)
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
        self._opening: dict[str, asyncio.Future[None]] = {}
        """Dedup field -> done when this process's trigger opening it has finished."""
        self._open_ids: dict[str, str] = {}
        """Dedup field -> the incident last seen open under it: a hint for the fast
        path, checked by the script, so a stale one only costs a second round trip."""
        self._number_lua = LuaScript(redis, "number.lua", body=_lua("number.lua"))
        self._number = BatchedScript(redis, self._number_lua.script)
        self._reserved: deque[int] = deque()
        """Numbers taken from the counter ahead of need (keys.py, "Numbers"): a new
        incident's first trigger.lua run carries one, so opening costs one round trip."""
        self._reserving: asyncio.Task[None] | None = None
        self._stamp = LuaScript(redis, "stamp_number.lua", *library, body=_lua("stamp_number.lua"))
        self._apply = LuaScript(redis, "apply.lua", TIMER_LUA, *library, body=_lua("apply.lua"))
        self._append_lua = LuaScript(
            redis, "append_timeline.lua", *library, body=_lua("append_timeline.lua")
        )
        # the timeline outbox applies a read's entries at once: they share round trips
        self._append = BatchedScript(redis, self._append_lua.script)
        self._absorb = LuaScript(redis, "absorb.lua", *library, body=_lua("absorb.lua"))

    async def trigger(
        self,
        service: incidents_pb2.Service,
        dedup_key: str,
        alert: incidents_pb2.Alert,
        actor: common_pb2.Actor,
        traceparent: str,
        *,
        notes: Mapping[str, str] | None = None,
        window_ms: int = 0,
        urgency_rule: tuple[common_pb2.Urgency.ValueType, str] | None = None,
    ) -> TriggerResult:
        """Join the open incident of (service, dedup_key) or open one; `alert` is validated.

        A key seen open here before goes through lua/join.lua first, which needs only the
        alert's own arguments; if that incident is no longer open under the key, the
        full lua/trigger.lua decides. `notes` (what event rules did: attribute -> text)
        go on the alert's timeline entry; `window_ms` > 0 joins the open incident only if
        its last alert came less than that long ago (time grouping); `urgency_rule`
        (urgency, event rule) sets the urgency of an incident it opens."""
        now = self.clock.now_ms()
        received_alert(alert, actor, now)
        shard = dedup_shard(service.id, dedup_key)
        field = dedup_field(service.id, dedup_key)
        alert_pb = alert.SerializeToString()
        joined = _noted(joined_entry(alert, actor, now), notes).SerializeToString()
        added = event_prefix(incidents_pb2.INCIDENT_EVENT_KIND_ALERT_ADDED, now, actor, traceparent)

        async def join(join_shard: int, join_field: str, incident_id: str) -> Any:
            return await self._join(
                keys=[keys.dedup_key(join_shard), keys.events_key(join_shard)],
                args=self._join_lua.args(
                    tag=shard_tag(join_shard),
                    field=join_field,
                    id=incident_id,
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

        async def follow(redirect: bytes) -> Any:
            """Join the open incident a merge redirect leads to; None if there is none."""
            for _ in range(keys.MERGE_HOPS):
                target = keys.parse_redirect(redirect)
                if target is None:
                    return None
                target_id, target_field = target
                reply = await join(incident_shard(target_id), target_field, target_id)
                if reply is None or reply[0] != -3:
                    return reply
                redirect = reply[1]
            return None

        open_id = self._open_ids.get(field) if window_ms <= 0 else None
        if open_id is not None:
            reply = await join(shard, field, open_id)
            if reply is not None and reply[0] == -3:
                reply = await follow(reply[1])
            if reply is not None:
                return self._remember(field, self._trigger_result(alert, *reply))
            self._open_ids.pop(field, None)
        incident = new_incident(service, dedup_key, alert, now, urgency_rule)
        script_keys = [
            keys.dedup_key(shard),
            keys.sequence_key(shard),
            keys.events_key(shard),
            keys.status_index_key(shard, TRIGGERED),
            keys.number_index_key(shard),
        ]
        args = self._trigger_lua.args(
            tag=shard_tag(shard),
            shard=shard,
            shards=INCIDENT_SHARDS,
            field=field,
            now_ms=now,
            now13=keys.time_bound(now),
            severity=alert.severity,
            incident=incident.SerializeToString(),
            alert=alert_pb,
            triggered_entry=_noted(
                opened_entry(alert, actor, now, incident), notes
            ).SerializeToString(),
            alert_entry=joined,
            triggered_prefix=event_prefix(
                incidents_pb2.INCIDENT_EVENT_KIND_TRIGGERED, now, actor, traceparent
            ),
            added_prefix=added,
            kept=self.alerts_kept,
            maxlen=self.stream_maxlen,
            event_field=EVENT_FIELD,
            lane=lane_of(service.id),
            window_ms=max(window_ms, 0),
            dead="",
            number=0,
        )
        number = await self._reserved_number()
        args[-1] = number
        # A number lost with the reply (an error) is dropped, never given back: the
        # script may have used it.
        reply = await self._trigger(keys=script_keys, args=args)
        for _ in range(keys.MERGE_HOPS):
            if reply[0] != -3:
                break
            # The key's incident was merged into another: join that one while it is open,
            # else drop the redirect (args[-2] is `dead`) and file the alert afresh.
            joined_merged = await follow(reply[1])
            if joined_merged is not None:
                self._give_back(number)
                return self._remember(field, self._trigger_result(alert, *joined_merged))
            args[-2] = reply[1]
            reply = await self._trigger(keys=script_keys, args=args)
        else:
            self._give_back(number)  # redirected every time: nothing opened with it
            raise Conflict("the alert's dedup key kept being merged; try again")
        if reply[0] == 0:
            self._give_back(number)  # joined: the next incident's
        elif number and reply[0] == -2:
            self._reserved.clear()  # the counter went back: the rest is suspect too
        if reply[0] < 0:
            reply = await self._open_numbered(field, script_keys, args)
        if reply[0] == 1:
            self._reserve()
        return self._remember(field, self._trigger_result(alert, *reply))

    def _give_back(self, number: int) -> None:
        """A reserved number the script did not use goes back, first in line."""
        if number:
            self._reserved.appendleft(number)

    def _remember(self, field: str, result: TriggerResult) -> TriggerResult:
        """Remember `result`'s incident as open under `field`, for the fast path."""
        if len(self._open_ids) >= OPEN_IDS_KEPT:
            self._open_ids.clear()
        self._open_ids[field] = result.incident.id
        return result

    async def _open_numbered(self, field: str, script_keys: list[str], args: list[Any]) -> Any:
        """Run trigger.lua again with a number, for an alert that opens an incident (keys.py,
        "Numbers"). Concurrent first alerts of one key in this process wait for the first
        to open it (or see that it opened meanwhile) and then join it, so they take no
        numbers of their own."""
        opening = self._opening.get(field)
        if opening is not None or field in self._open_ids:
            # Being opened here, or opened since this call's first run: join it.
            if opening is not None:
                await asyncio.shield(opening)
            args[-1] = 0
            reply = await self._trigger(keys=script_keys, args=args)
            if reply[0] >= 0:
                return reply
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening[field] = future
        try:
            floor = 0
            for _ in range(_RETRIES):
                args[-1] = await self._next_number(floor)
                reply = await self._trigger(keys=script_keys, args=args)
                if reply[0] >= 0:
                    return reply
                # The counter went back: raise it past every number handed out.
                floor = await self._highest_number()
            raise Conflict("no free incident number; try again")
        finally:
            del self._opening[field]
            future.set_result(None)

    async def _reserved_number(self) -> int:
        """A number reserved ahead for a new incident, 0 when none is: one being
        reserved is waited for, so numbers go out in the order they were taken."""
        if not self._reserved and self._reserving is not None:
            await asyncio.shield(self._reserving)
        return self._reserved.popleft() if self._reserved else 0

    def _reserve(self) -> None:
        """Take the next number off the page path (one at a time: at most one is lost,
        a gap, when the process stops)."""
        if self._reserved or self._reserving is not None:
            return
        self._reserving = asyncio.get_running_loop().create_task(self._take_reserve())

    async def _take_reserve(self) -> None:
        try:
            self._reserved.append(await self._next_number())
        except Exception:
            # Nothing is lost: the next new incident takes its number on the slow path.
            log.warning("reserving the next incident number failed", exc_info=True)
        finally:
            self._reserving = None

    async def _highest_number(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(INCIDENT_SHARDS):
            pipe.zrevrange(keys.number_index_key(shard), 0, 0, withscores=True)
        tops = [int(score) for top in await pipe.execute() for _, score in top]
        return max(tops, default=0)

    async def _next_number(self, floor: int = 0, count: int = 1) -> int:
        """The last of `count` new numbers, the counter first raised to `floor`."""
        return int(
            await self._number(
                keys=[keys.NUMBER_SEQUENCE], args=self._number_lua.args(floor=floor, count=count)
            )
        )

    async def find_number(self, number: int) -> list[str]:
        """The ids of the incidents numbered `number` (one, unless the counter went back
        and another shard has it too; none once it expired)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(INCIDENT_SHARDS):
            pipe.zrangebyscore(keys.number_index_key(shard), number, number)
        found = [keys.as_bytes(m).decode() for ids in await pipe.execute() for m in ids]
        alive = await self.get_many(found)
        return [incident_id for incident_id in found if incident_id in alive]

    async def number_existing(self, chunk: int = 1000) -> int:
        """Number the incidents opened before numbers, in the order they opened; once (a
        key records it is done; run again after a crash, it skips what has a number).
        Incidents opened meanwhile by another replica keep their own numbers. Returns how
        many were numbered."""
        if await self.redis.exists(keys.NUMBERED):
            return 0
        members: list[bytes] = []
        for shard in range(INCIDENT_SHARDS):
            for status in (TRIGGERED, ACKNOWLEDGED, RESOLVED):
                index = keys.status_index_key(shard, status)
                members.extend(keys.as_bytes(m) for m in await self.redis.zrange(index, 0, -1))
        ids = [keys.member_id(m) for m in sorted(members)]  # the order they opened
        todo: list[str] = []
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = self.redis.pipeline(transaction=False)
            for incident_id in part:
                pipe.hmget(keys.incident_key(incident_id), "sv", "nr")
            for incident_id, (sv, nr) in zip(part, await pipe.execute(), strict=True):
                if sv is not None and nr is None:
                    todo.append(incident_id)
        numbered = 0
        if todo:
            first = await self._next_number(count=len(todo)) - len(todo) + 1
            for number, incident_id in enumerate(todo, start=first):
                numbered += await self._stamp(
                    [
                        keys.incident_key(incident_id),
                        keys.number_index_key(incident_shard(incident_id)),
                    ],
                    id=incident_id,
                    number=number,
                )
        await self.redis.set(keys.NUMBERED, 1)
        return numbered

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
        """The id of the open incident of (service, dedup_key), if there is one: after a
        merge, the open incident the key's merged incident went into (keys.py, "Merges")."""
        shard = dedup_shard(service_id, dedup_key)
        found = await self.redis.hget(keys.dedup_key(shard), dedup_field(service_id, dedup_key))
        for _ in range(keys.MERGE_HOPS + 1):
            if found is None:
                return None
            target = keys.parse_redirect(keys.as_bytes(found))
            if target is None:
                return keys.as_bytes(found).decode()
            target_id, target_field = target
            found = await self.redis.hget(keys.dedup_key(incident_shard(target_id)), target_field)
            if found is not None and keys.parse_redirect(keys.as_bytes(found)) is None:
                return target_id if keys.as_bytes(found).decode() == target_id else None
        return None

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
        self,
        incident_id: str,
        text: str,
        actor: common_pb2.Actor,
        traceparent: str,
        *,
        status_update: bool = False,
    ) -> incidents_pb2.TimelineEntry:
        """A note (or, with `status_update`, a status update for stakeholders) changes no
        state, so it needs no version check (and cannot conflict)."""
        now = self.clock.now_ms()
        if status_update:
            timeline_kind = incidents_pb2.TIMELINE_KIND_STATUS_UPDATE
            event_kind = incidents_pb2.INCIDENT_EVENT_KIND_STATUS_UPDATE
        else:
            timeline_kind = incidents_pb2.TIMELINE_KIND_NOTE
            event_kind = incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED
        note = entry(timeline_kind, now, actor, text)
        prefix = event_prefix(event_kind, now, actor, traceparent, note=text)
        index = keys.status_index_key(incident_shard(incident_id), TRIGGERED)
        result = await self._run_apply(
            incident_id, index, index, now=now, timeline_entry=note, prefix=prefix
        )
        if result[0] == -1:
            raise NotFound(f"incident {incident_id} does not exist")
        return note

    async def append_timeline(
        self,
        incident_id: str,
        timeline_entry: incidents_pb2.TimelineEntry,
        idempotency_key: str,
        prefix: bytes = b"",
    ) -> bool:
        """Append unless `idempotency_key` was used for this incident before; with
        `prefix` (an event's, see domain.event_prefix), the outbox event (on the
        incident's lane) in the same script."""
        script_keys = [
            keys.incident_key(incident_id),
            keys.timeline_key(incident_id),
            keys.events_key(incident_shard(incident_id)),
        ]
        if idempotency_key:
            script_keys.append(keys.idempotency_key(incident_id, idempotency_key))
        result = await self._append(
            keys=script_keys,
            args=self._append_lua.args(
                entry=timeline_entry.SerializeToString(),
                ttl_s=IDEMPOTENCY_TTL_S,
                prefix=prefix,
                maxlen=self.stream_maxlen,
                event_field=EVENT_FIELD,
            ),
        )
        if result == -1:
            raise NotFound(f"incident {incident_id} does not exist")
        return bool(result)

    async def merge(
        self, target_id: str, merged_id: str, actor: common_pb2.Actor, traceparent: str
    ) -> tuple[incidents_pb2.Incident, int]:
        """Merge open incident `merged_id` (B) into open incident `target_id` (A): B's
        alerts join A (one script on A's slot, once per B: a retry adds nothing twice),
        then B is resolved as merged (compare-and-set on B) and, in that same script, B's
        dedup entry becomes a redirect to A, so B's key routes to A while A is open
        (keys.py, "Merges"). The two incidents live in different slots, so this is two
        steps: should the second fail, merging again finishes it. Returns A and how many
        alerts moved."""
        target = await self.get(target_id)
        merged = await self.get(merged_id, alerts=True)
        if target.status == RESOLVED:
            raise FailedPrecondition(f"incident {target_id} is resolved")
        merged_before = merged.status == RESOLVED and merged.resolved_by.display.startswith(
            f"merged into #{target_id}"
        )
        if merged.status == RESOLVED and not merged_before:
            raise FailedPrecondition(f"incident {merged_id} is resolved")
        now = self.clock.now_ms()
        alerts = list(merged.alerts)
        for alert in alerts:
            alert.ClearField("id")
        who = actor_name(actor)
        note = entry(
            incidents_pb2.TIMELINE_KIND_NOTE,
            now,
            actor,
            f"Merged incident #{merged_id} into this one ({len(alerts)} alerts) by {who}",
            merged_incident_id=merged_id,
        )
        shard = incident_shard(target_id)
        result = await self._absorb(
            [
                keys.incident_key(target_id),
                keys.alerts_key(target_id),
                keys.timeline_key(target_id),
                keys.idempotency_key(target_id, f"merge:{merged_id}"),
                keys.events_key(shard),
            ],
            now_ms=now,
            severity=max((a.severity for a in alerts), default=0),
            entry=note.SerializeToString(),
            prefix=event_prefix(
                incidents_pb2.INCIDENT_EVENT_KIND_NOTE_ADDED,
                now,
                actor,
                traceparent,
                note=note.message,
            ),
            kept=self.alerts_kept,
            maxlen=self.stream_maxlen,
            event_field=EVENT_FIELD,
            ttl_s=IDEMPOTENCY_TTL_S,
            alerts=[a.SerializeToString() for a in alerts],
        )
        if result == -1:
            raise NotFound(f"incident {target_id} does not exist")
        merger = common_pb2.Actor()
        merger.CopyFrom(actor)
        merger.display = f"merged into #{target_id} by {who}"

        def resolve_merged(current: incidents_pb2.Incident, now_ms: int) -> Change | None:
            change = resolve(current, merger, now_ms)
            if change is not None:
                change.entry.message = f"Resolved: merged into incident #{target_id} by {who}"
                change.entry.attributes["merged_into"] = target_id
                # B's key routes to A from now on (keys.py, "Merges").
                change = replace(
                    change,
                    redirect_dedup=keys.redirect(
                        target_id, dedup_field(target.service_id, target.dedup_key)
                    ),
                )
            return change

        await self.change(merged_id, resolve_merged, traceparent)
        return await self.get(target_id), len(alerts) if result != 0 else 0

    async def trim_indexes(self) -> int:
        """Drop index entries of resolved incidents created longer than `retention` ago."""
        cutoff = self.clock.now_ms() - int(self.retention.total_seconds() * 1000)
        removed = 0
        for shard in range(INCIDENT_SHARDS):
            index, bound = keys.status_index_key(shard, RESOLVED), "(" + keys.time_bound(cutoff)
            # Their numbers first: an index entry whose number outlives it is found again
            # by the next trim; a number left behind would not be.
            expired = await self.redis.zrangebylex(index, "-", bound)
            if expired:
                ids = [keys.member_id(m) for m in expired]
                await self.redis.zrem(keys.number_index_key(shard), *ids)
            removed += await self.redis.zremrangebylex(index, "-", bound)
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
            redirect=change.redirect_dedup if release else "",
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
        redirect: str = "",
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
            redirect=redirect,
            expire_s=expire,
            maxlen=self.stream_maxlen,
            event_field=EVENT_FIELD,
            **timer_args,
        )


def _noted(
    timeline_entry: incidents_pb2.TimelineEntry, notes: Mapping[str, str] | None
) -> incidents_pb2.TimelineEntry:
    """`timeline_entry` with what event rules did in its attributes and message."""
    if notes:
        timeline_entry.attributes.update(notes)
        timeline_entry.message += "".join(f" [{k}: {v}]" for k, v in sorted(notes.items()))
    return timeline_entry
