"""Paging state in Redis: cycles, their rule timers, send attempts, the incident mirror.

Everything about one incident lives in its shard's slot (keys.py), the slot of the
incident itself, so each decision is one script:

- `start_cycle` (lua/notify.lua): idempotency key, replacement of the user's running
  cycle, the new cycle's rule snapshot and one timer per rule, all or nothing; the
  timers of the rules due now claimed for the caller and, for those it asks (`SendNow`),
  fired in the same script as `fire` would.
- `fire` (lua/fire.lua): a rule's timer may send only if its claim (fence) is current, its
  cycle is current and not cancelled, the incident is not known to be stopped and no
  attempt exists yet for that rule; then the attempt is recorded SENDING and the timer
  completed in the same step. The provider is called only after that.
- `apply_incident` / `cancel` (lua/incident_state.lua): the status mirror and the
  cancellation of every cycle of an incident.

Timers use the runtime's timer library in their own namespace ("notify") of the incident
shards (`tocsin:{tN}:notify:timers` ...), so no other service's worker ever claims them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import RedisCluster

from tocsin.notification import domain, keys
from tocsin.notification.contacts import (
    REPLY_CODE_TTL_MS,
    ContactStore,
    KeyWrite,
    KnownSettings,
    PageContext,
)
from tocsin.notification.records import AttemptRecord, CycleRule, decode_rules, encode_rules
from tocsin.runtime.clock import Clock
from tocsin.runtime.events import INCIDENT_SHARDS, incident_shard
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import PROTO_LUA, LuaScript
from tocsin.runtime.timers import TIMER_LUA, ClaimedTimer, TimerStore, claimed_from_reply
from tocsin.v1 import incidents_pb2, notification_pb2

_LIBS = (
    PROTO_LUA,
    TIMER_LUA,
    read_lua("tocsin.notification", "lua/attempt_lib.lua"),
    read_lua("tocsin.notification", "lua/cycle_lib.lua"),
)


def _script(redis: RedisClient, name: str) -> LuaScript:
    body = read_lua("tocsin.notification", f"lua/{name}.lua")
    return LuaScript(redis, f"{name}.lua", *_LIBS, body=body)


@dataclass(frozen=True)
class CycleStart:
    started: bool
    cycle_id: str = ""
    rules: int = 0
    replaced_timers: int = 0
    claimed: tuple[ClaimedTimer, ...] = ()
    """The timers of the rules due now, claimed for the caller to fire at once."""
    fired: tuple[Fired | None, ...] = ()
    """Per claimed timer, what the script decided for a rule the caller asked it to send
    at once (`SendNow`: 'send' means recorded SENDING, the caller sends it now; 'check'
    or 'unmirrored': nothing written, the claim is the caller's to fire); None for a
    rule it was not asked to send."""


@dataclass(frozen=True)
class SendNow:
    """A rule due now that `start_cycle` records SENDING in the same script, as `fire`
    would with `mode` ('mirror' or 'mirrored'), `channel` and `provider`, so the page
    goes with no round trip of its own. The caller holds its send slot and everything
    the page needs before asking: nothing may wait between SENDING and the provider."""

    contact_method_id: str
    channel: int
    mode: str
    provider: str = ""


@dataclass(frozen=True)
class CycleRequest:
    """What a Notify asks of lua/notify.lua: the user's cycle for the incident, from
    `rules`, idempotent by `idempotency_key`; its claims on the rules due now leased for
    `lease_ms`; `level_due_ms` when the page stops mattering (0: not known); `send_now`,
    the rules (by index) to record SENDING at once (see `SendNow`)."""

    incident_id: str
    user_id: str
    idempotency_key: str
    traceparent: str
    lease_ms: int
    level_due_ms: int = 0
    rules: Sequence[CycleRule] = ()
    send_now: Mapping[int, SendNow] | None = None


@dataclass(frozen=True)
class Fired:
    """What `fire` decided. `outcome` is 'send' (the attempt is recorded SENDING),
    'check' (ask the incidents service), 'unreachable' (recorded FAILED; `next_rule` was
    re-armed due now if >= 0), or a reason nothing happened."""

    outcome: str
    reply_code: str = ""
    summary: str = ""
    service_id: str = ""
    incident_id: str = ""
    user_id: str = ""
    next_rule: int = -1
    number: int = 0
    """The incident's number from the status mirror (0: not known)."""
    created_ms: int = 0
    """The incident's creation from the status mirror (0: not known)."""


@dataclass(frozen=True)
class RetryWindow:
    """A cycle's start, its rules' delays (in order) and when the escalation's next level
    is due (0: not known)."""

    created_ms: int
    delays_ms: tuple[int, ...]
    level_due_ms: int


def _fired(reply: Any) -> Fired:
    """fire.lua's answer (cycle_lib's cycle_fire) as a `Fired`."""
    outcome = _text(reply[0])
    if outcome == "send":
        code, summary, service_id, incident, user = (_text(v) for v in reply[1:6])
        number, created = (_text(v) for v in reply[6:8])
        return Fired(
            outcome,
            code,
            summary,
            service_id,
            incident,
            user,
            number=int(number or 0),
            created_ms=int(created or 0),
        )
    if outcome == "unreachable":
        return Fired(outcome, next_rule=int(reply[1]))
    return Fired(outcome)


def _text(value: Any) -> str:
    return keys.as_text(value) if isinstance(value, bytes | str) else str(value)


class PagingStore:
    def __init__(self, redis: RedisClient, clock: Clock, retention_ms: int) -> None:
        self.redis = redis
        self.clock = clock
        self.retention_ms = retention_ms
        self.timers = TimerStore(redis, clock, INCIDENT_SHARDS, namespace=keys.NAMESPACE)
        self._notify = _script(redis, "notify")
        self._fire = _script(redis, "fire")
        self._advance = _script(redis, "advance")
        self._rearm = _script(redis, "rearm")
        self._retry_later = _script(redis, "retry_later")
        self._cycle_spent = _script(redis, "cycle_spent")
        self._incident_state = _script(redis, "incident_state")
        self._update = _script(redis, "attempt_update")
        self._begin = _script(redis, "attempt_begin")
        self._sweep = _script(redis, "sweep")
        self._failover = _script(redis, "attempt_failover")
        self._notice = _script(redis, "notice_begin")

    async def start_cycle(self, request: CycleRequest, reply_code: str) -> CycleStart:
        """Start the cycle (lua/notify.lua) with the user's `reply_code`."""
        reply = await self._notify(**self._start_call(request, reply_code))
        return self._cycle_start(request.incident_id, reply)

    async def start_cycle_with_page(
        self, request: CycleRequest, contacts: ContactStore, known: KnownSettings
    ) -> tuple[PageContext, CycleStart | None]:
        """`contacts.prepare_page` and `start_cycle` in one round trip, on one Redis
        server: the rules were taken from `known`, this process's copy of the user's
        settings, and lua/notify.lua starts the cycle only if the stored settings still
        have its digest, with the reply code page_prepare.lua held just before it in the
        same pipeline. The page's context (the settings as stored now) comes back with
        the start, or with None when the script started nothing (the settings changed
        since the copy was taken): the caller starts the cycle from that context. A Redis
        that lost its scripts (a restart) runs each again alone, in order
        (`QueuedCall.result`)."""
        pipe = self.redis.pipeline(transaction=False)
        prepare = contacts.queue_prepare(pipe, request.user_id, request.incident_id)
        notify = self._notify.queue(pipe, **self._start_call(request, "", known))
        prepared, started = await pipe.execute(raise_on_error=False)
        page = contacts.page_context(request.user_id, await prepare.result(prepared))
        reply = await notify.result(started)
        if int(reply[0]) < 0:
            return page, None
        return page, self._cycle_start(request.incident_id, reply)

    def _start_call(
        self, request: CycleRequest, reply_code: str, known: KnownSettings | None = None
    ) -> dict[str, Any]:
        """notify.lua's keys and arguments; with `known`, checked against the user's
        stored settings and taking the code page_prepare.lua held (one Redis server)."""
        incident_id, user_id = request.incident_id, request.user_id
        shard = incident_shard(incident_id)
        send_now = request.send_now
        now_json = (
            json.dumps(
                {
                    str(rule): {
                        "cm": s.contact_method_id,
                        "ch": s.channel,
                        "m": s.mode,
                        "p": s.provider,
                    }
                    for rule, s in send_now.items()
                },
                separators=(",", ":"),
            )
            if send_now
            else ""
        )
        user_keys = (
            [keys.user_settings(user_id), keys.code_of(user_id), keys.reply_codes(user_id)]
            if known is not None
            else []
        )
        return {
            "keys": [
                keys.idempotency(incident_id, request.idempotency_key),
                keys.incident_state(incident_id),
                keys.incident_cycles(incident_id),
                keys.incident_attempts(incident_id),
                keys.sending(shard),
                *keys.timer_keys(shard),
                *user_keys,
            ],
            "tag": keys.timer_tag(shard),
            "prefix": keys.prefix(shard),
            "incident": incident_id,
            "user": user_id,
            "now_ms": self.clock.now_ms(),
            "ttl_ms": self.retention_ms,
            "traceparent": request.traceparent,
            "reply_code": reply_code,
            "rules": encode_rules(request.rules),
            "lease_ms": request.lease_ms,
            "key": request.idempotency_key,
            "level_due_ms": request.level_due_ms,
            "send_now": now_json,
            "settings_digest": known.digest if known is not None else "",
            "window_ms": REPLY_CODE_TTL_MS,
        }

    def _cycle_start(self, incident_id: str, reply: Any) -> CycleStart:
        if not int(reply[0]):
            return CycleStart(started=False)
        shard = incident_shard(incident_id)
        claimed = tuple(claimed_from_reply(shard, row) for row in reply[4])
        fired = tuple(None if _text(row[0]) == "claimed" else _fired(row) for row in reply[5])
        return CycleStart(True, _text(reply[1]), int(reply[2]), int(reply[3]), claimed, fired)

    async def fire(
        self,
        timer: ClaimedTimer,
        payload: domain.TimerPayload,
        channel: int,
        mode: str,
        detail: str = "",
        provider: str = "",
    ) -> Fired:
        """`provider`: the phone provider the send goes through, named in the record."""
        incident_id = payload.incident_id
        reply = await self._fire(
            keys=[
                keys.incident_state(incident_id),
                keys.incident_cycles(incident_id),
                keys.cycle(payload.cycle_id, incident_id),
                keys.incident_attempts(incident_id),
                keys.sending(timer.shard),
                *keys.timer_keys(timer.shard),
            ],
            tag=keys.timer_tag(timer.shard),
            id=timer.timer_id,
            fence=timer.fence,
            rule=payload.rule_index,
            method=payload.contact_method_id,
            channel=channel,
            now_ms=self.clock.now_ms(),
            ttl_ms=self.retention_ms,
            mode=mode,
            detail=detail,
            provider=provider,
        )
        return _fired(reply)

    async def advance(self, payload: domain.TimerPayload, failed_method_id: str) -> int:
        """Re-arm the next rule (another contact method) due now; its index or -1."""
        incident_id = payload.incident_id
        shard = incident_shard(incident_id)
        return int(
            await self._advance(
                [keys.cycle(payload.cycle_id, incident_id), *keys.timer_keys(shard)],
                tag=keys.timer_tag(shard),
                cycle=payload.cycle_id,
                from_rule=payload.rule_index,
                method=failed_method_id,
                now_ms=self.clock.now_ms(),
            )
        )

    async def rearm(self, timer: ClaimedTimer, due_ms: int, payload: domain.TimerPayload) -> bool:
        """Put a claimed timer back due at `due_ms` (if the claim is still ours)."""
        return bool(
            await self._rearm(
                keys.timer_keys(timer.shard),
                tag=keys.timer_tag(timer.shard),
                id=timer.timer_id,
                fence=timer.fence,
                due_ms=due_ms,
                payload=payload.encode(),
            )
        )

    async def retry_later(self, payload: domain.TimerPayload, due_ms: int) -> bool:
        """Remove the rule's SENDING attempt (the provider did not process it) and re-arm
        its timer due at `due_ms` with `payload`; False when the cycle no longer wants it."""
        incident_id = payload.incident_id
        shard = incident_shard(incident_id)
        return bool(
            await self._retry_later(
                [
                    keys.cycle(payload.cycle_id, incident_id),
                    keys.incident_attempts(incident_id),
                    keys.sending(shard),
                    *keys.timer_keys(shard),
                ],
                tag=keys.timer_tag(shard),
                id=payload.attempt_id,
                due_ms=due_ms,
                payload=payload.encode(),
            )
        )

    async def retry_window(self, payload: domain.TimerPayload) -> RetryWindow | None:
        """What decides how long a rule's throttled send is retried (None: no cycle)."""
        raw = await self.redis.hmget(
            keys.cycle(payload.cycle_id, payload.incident_id), ["c", "rules", "lv"]
        )
        created, rules, level_due = raw
        if created is None or rules is None:
            return None
        return RetryWindow(
            int(created),
            tuple(r.delay_ms for r in decode_rules(keys.as_bytes(rules))),
            int(level_due or 0),
        )

    async def awaited_key(self, incident_id: str, cycle_id: str) -> str | None:
        """The Notify idempotency key of the cycle when an escalation level waits on it
        (its Notify named the next level's time); None otherwise or if it is gone."""
        key, level_due = await self.redis.hmget(keys.cycle(cycle_id, incident_id), ["k", "lv"])
        if not key or not int(level_due or 0):
            return None
        return _text(key)

    async def cycle_spent(self, payload: domain.TimerPayload) -> str | None:
        """The cycle's Notify idempotency key when nothing is left to reach the user with
        (no rule waiting, every attempt failed); None otherwise."""
        incident_id = payload.incident_id
        shard = incident_shard(incident_id)
        reply = await self._cycle_spent(
            [
                keys.cycle(payload.cycle_id, incident_id),
                keys.incident_cycles(incident_id),
                keys.incident_attempts(incident_id),
                *keys.timer_keys(shard),
            ],
            tag=keys.timer_tag(shard),
            cycle=payload.cycle_id,
        )
        return _text(reply[1]) if int(reply[0]) else None

    async def apply_incident(self, incident: incidents_pb2.Incident) -> tuple[bool, int]:
        """Mirror the incident's status if newer; a stopped incident's cycles are cancelled.
        Returns (mirrored, timers cancelled)."""
        return await self._incident_state_call(
            incident.id,
            "mirror",
            incident.version,
            int(incident.status),
            incident.summary,
            incident.service_id,
            incident.number,
            incident.created_at.ToMilliseconds() if incident.HasField("created_at") else 0,
        )

    async def cancel(self, incident_id: str) -> int:
        """Cancel every cycle of the incident; returns how many pending sends were cancelled."""
        _, cancelled = await self._incident_state_call(incident_id, "cancel", 0, 0, "", "", 0, 0)
        return cancelled

    async def _incident_state_call(
        self,
        incident_id: str,
        mode: str,
        version: int,
        status: int,
        summary: str,
        service: str,
        number: int,
        created_ms: int,
    ) -> tuple[bool, int]:
        shard = incident_shard(incident_id)
        applied, cancelled = await self._incident_state(
            keys=[
                keys.incident_state(incident_id),
                keys.incident_cycles(incident_id),
                *keys.timer_keys(shard),
            ],
            tag=keys.timer_tag(shard),
            prefix=keys.prefix(shard),
            mode=mode,
            ttl_ms=self.retention_ms,
            version=version,
            status=status,
            summary=summary,
            service=service,
            number=number,
            created=created_ms,
        )
        return bool(applied), int(cancelled)

    async def incident_status(self, incident_id: str) -> int | None:
        """The mirrored status, None while unknown."""
        raw = await self.redis.hget(keys.incident_state(incident_id), "st")
        return int(raw) if raw is not None else None

    async def incident_mirror(self, incident_id: str) -> tuple[int | None, str, str]:
        """The mirrored status (None while unknown), summary and how a person names the
        incident ("#18"; "#<id>" while its number is not known)."""
        status, summary, number = await self.redis.hmget(
            keys.incident_state(incident_id), ["st", "sum", "nr"]
        )
        label = keys.as_text(number) if number is not None else "0"
        return (
            int(status) if status is not None else None,
            keys.as_text(summary) if summary is not None else "",
            f"#{label}" if label != "0" else f"#{incident_id}",
        )

    async def incident_page_info(self, incident_id: str) -> tuple[str, str, int, int]:
        """The mirrored summary and service id ("" while unknown), number (0) and creation
        time in ms (0 while unknown)."""
        summary, service, number, created = await self.redis.hmget(
            keys.incident_state(incident_id), ["sum", "svc", "nr", "ca"]
        )
        return (
            keys.as_text(summary) if summary is not None else "",
            keys.as_text(service) if service is not None else "",
            int(number) if number is not None else 0,
            int(created) if created is not None else 0,
        )

    # -- attempts -----------------------------------------------------------------------

    def _attempt_keys(self, location: domain.AttemptLocation) -> list[str]:
        if location.incident_id is not None:
            return [
                keys.incident_attempts(location.incident_id),
                keys.sending(incident_shard(location.incident_id)),
            ]
        assert location.user_id is not None
        return [keys.test_attempts(location.user_id), keys.TEST_SENDING]

    async def update_attempt(
        self,
        location: domain.AttemptLocation,
        status: int = 0,
        *,
        provider_id: str = "",
        error_code: int = 0,
        provider_status: str = "",
    ) -> tuple[notification_pb2.Attempt, bool] | None:
        """Record a result or callback; (attempt, status changed), None if unknown."""
        reply = await self._update(
            self._attempt_keys(location),
            id=location.attempt_id,
            status=status,
            provider_id=provider_id,
            error_code=error_code,
            provider_status=provider_status,
            now_ms=self.clock.now_ms(),
        )
        if not reply:
            return None
        return domain.attempt_from_record(reply[0]), bool(int(reply[1]))

    async def attempt(self, location: domain.AttemptLocation) -> notification_pb2.Attempt | None:
        raw = await self.redis.hget(self._attempt_keys(location)[0], location.attempt_id)
        return domain.attempt_from_record(keys.as_bytes(raw)) if raw is not None else None

    async def list_attempts(self, incident_id: str) -> list[notification_pb2.Attempt]:
        records = await self.redis.hvals(keys.incident_attempts(incident_id))
        return domain.attempts_in_order(keys.as_bytes(r) for r in records)

    async def list_user_attempts(self, user_id: str) -> list[notification_pb2.Attempt]:
        """A user's attempts outside incidents: test pages and notices."""
        records = await self.redis.hvals(keys.test_attempts(user_id))
        return domain.attempts_in_order(keys.as_bytes(r) for r in records)

    async def begin_notice(
        self, idempotency_key: str, user_id: str, records: Sequence[AttemptRecord], keep_ms: int
    ) -> list[notification_pb2.Attempt] | None:
        """Record the notice's key and its attempts (SENDING) under `user_id` in one step
        (lua/notice_begin.lua); None if the key was used before (nothing written)."""
        reply = await self._notice(
            [keys.notice(idempotency_key), keys.test_attempts(user_id), keys.TEST_SENDING],
            keep_ms=keep_ms,
            ttl_ms=self.retention_ms,
            records="[" + ",".join(r.encode() for r in records) + "]",
        )
        if reply is None:
            return None
        return [domain.attempt_from_record(keys.as_bytes(raw)) for raw in reply]

    async def begin_test_attempt(
        self, user_id: str, method: notification_pb2.ContactMethod, provider: str = ""
    ) -> notification_pb2.Attempt:
        now = self.clock.now_ms()
        record = AttemptRecord(
            id="",  # the script numbers it
            incident_id="",
            user_id=user_id,
            contact_method_id=method.id,
            channel=int(method.type),
            rule_index=-1,
            status=domain.SENDING,
            created_ms=now,
            updated_ms=now,
            providers=(provider,) if provider else (),
        )
        raw = await self._begin(
            [keys.test_attempts(user_id), keys.TEST_SENDING],
            id_prefix=f"test-{user_id}-",
            record=record.encode(),
            ttl_ms=self.retention_ms,
        )
        return domain.attempt_from_record(raw)

    async def fail_over(
        self, location: domain.AttemptLocation, from_provider: str, to_provider: str
    ) -> bool:
        """Hand a SENDING attempt from `from_provider` to `to_provider`, recorded before
        `to_provider` is called (lua/attempt_failover.lua); False if that may not happen
        (no longer SENDING, or `to_provider` already had it)."""
        return bool(
            await self._failover(
                self._attempt_keys(location),
                id=location.attempt_id,
                from_provider=from_provider,
                to_provider=to_provider,
                now_ms=self.clock.now_ms(),
            )
        )

    async def send_starts_at(self, location: domain.AttemptLocation, start_ms: int) -> None:
        """The send of this SENDING attempt starts at `start_ms` (it waits for a rate-limit
        slot): the sweep counts from then, so a wait longer than its timeout is not taken
        for a dead sender. An attempt no longer SENDING (no longer in the index) is left
        alone (ZADD XX)."""
        attempts_key, sending_key = self._attempt_keys(location)
        member = f"{attempts_key}|{location.attempt_id}"  # as lua/attempt_lib.lua names it
        await self.redis.zadd(sending_key, {member: start_ms}, xx=True)

    async def sweep(
        self, shard: int | None, older_than_ms: int, limit: int = 100
    ) -> list[notification_pb2.Attempt]:
        """Mark attempts SENDING since before `older_than_ms` as UNKNOWN (shard None: test
        pages). Returns those it marked."""
        index = keys.TEST_SENDING if shard is None else keys.sending(shard)
        marked = await self._sweep(
            [index], older_than_ms=older_than_ms, now_ms=self.clock.now_ms(), limit=limit
        )
        return [domain.attempt_from_record(raw) for raw in marked]

    async def record_sent(
        self,
        location: domain.AttemptLocation,
        provider_id: str,
        provider_status: str,
        also: KeyWrite | None = None,
        first_page: KeyWrite | None = None,
        queue_also: Callable[[Any], None] | None = None,
    ) -> bool:
        """An attempt the provider accepted: SENT (`update_attempt`), then the writes of
        `remember_page`, whose answer this is. On one Redis server the script and the SETs
        go in one pipeline, in that order, as they went in two round trips before (a
        crash between them leaves what a crash between those two left; a Redis that lost
        its scripts gets SENT right after them: `QueuedCall.result`); on a Cluster, where
        redis-py sends no script in a pipeline, one after the other. `queue_also` adds
        commands to that pipeline, after the rest (the page-out report's XADD); it is
        called only on one Redis server (`pipelines_scripts`), and what it queued went
        through when this returns."""
        writes = self._page_writes(provider_id, location.attempt_id, also)
        if not self.pipelines_scripts or (not writes and first_page is None and queue_also is None):
            await self.update_attempt(
                location, domain.SENT, provider_id=provider_id, provider_status=provider_status
            )
            return await self.remember_page(provider_id, location.attempt_id, also, first_page)
        pipe = self.redis.pipeline(transaction=False)
        update = self._update.queue(
            pipe,
            self._attempt_keys(location),
            id=location.attempt_id,
            status=domain.SENT,
            provider_id=provider_id,
            error_code=0,
            provider_status=provider_status,
            now_ms=self.clock.now_ms(),
        )
        self._queue_page_writes(pipe, writes, first_page)
        if queue_also is not None:
            queue_also(pipe)
        replies = await pipe.execute(raise_on_error=False)
        await update.result(replies[0])
        for reply in replies[1:]:
            if isinstance(reply, Exception):
                raise reply
        return first_page is not None and bool(replies[1 + len(writes)])

    @property
    def pipelines_scripts(self) -> bool:
        """Whether a script goes in a pipeline with other commands (one Redis server; on a
        Cluster redis-py sends no script in a pipeline)."""
        return not isinstance(self.redis, RedisCluster)

    async def remember_page(
        self,
        provider_id: str,
        attempt_id: str,
        also: KeyWrite | None = None,
        first_page: KeyWrite | None = None,
    ) -> bool:
        """Index the provider id -> attempt (and make `also`'s write) in one round trip;
        with `first_page`, also set that key unless it is set (SET NX: the incident's
        first page accepted, pagemetrics). True when `first_page` was set here."""
        writes = self._page_writes(provider_id, attempt_id, also)
        if not writes and first_page is None:
            return False
        pipe = self.redis.pipeline(transaction=False)
        self._queue_page_writes(pipe, writes, first_page)
        replies = await pipe.execute()
        return first_page is not None and bool(replies[-1])

    def _page_writes(
        self, provider_id: str, attempt_id: str, also: KeyWrite | None
    ) -> list[KeyWrite]:
        writes = [KeyWrite(keys.provider_sid(provider_id), attempt_id, self.retention_ms)]
        if not provider_id:
            writes = []
        if also is not None:
            writes.append(also)
        return writes

    @staticmethod
    def _queue_page_writes(pipe: Any, writes: list[KeyWrite], first_page: KeyWrite | None) -> None:
        for write in writes:
            pipe.set(write.key, write.value, px=write.ttl_ms)
        if first_page is not None:
            pipe.set(first_page.key, first_page.value, px=first_page.ttl_ms, nx=True)

    async def attempt_of_provider_id(self, provider_id: str) -> str | None:
        raw = await self.redis.get(keys.provider_sid(provider_id))
        return keys.as_text(raw) if raw is not None else None
