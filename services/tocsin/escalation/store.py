"""Escalation state, its timers and the policies, in Redis.

An incident's escalation state lives under the incident's shard tag (the same slot as
its level timer and its outbox timers), so `write` commits the new state, the next level
timer and the pages to send as one compare-and-set. Policies live under `{policies}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import RedisCluster

from tocsin.escalation.codec import HopPayload, LevelTimerPayload, dump_state, load_state
from tocsin.escalation.domain import Escalation, LevelKey
from tocsin.escalation.policy_cache import PolicyCache
from tocsin.runtime import page_outbox, timeline_outbox
from tocsin.runtime.batching import BatchedScript
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import AlreadyExists, Conflict, NotFound
from tocsin.runtime.events import INCIDENT_SHARDS, incident_shard
from tocsin.runtime.oncall import REVISION_FIELD, schedule_key
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript
from tocsin.runtime.timers import (
    TIMER_LUA,
    ClaimedTimer,
    TimerStore,
    claimed_from_reply,
    shard_tag,
    timer_keys,
)
from tocsin.v1 import escalation_pb2 as pb

POLICY_PREFIX = "tocsin:{policies}:"
POLICIES = POLICY_PREFIX + "index"
POLICY_GENERATION = POLICY_PREFIX + "generation"
"""Raised by every policy write, in the write's own script: the policy cache reads it to
know whether any policy changed (policy_cache.py)."""
_CREATE_POLICY = """
-- Create a policy unless its id is taken. KEYS: policy hash, policies index, generation
-- ARGV:
--   id
--   policy    EscalationPolicy protobuf
--   version
-- Returns 1, or 0 when the id is taken.
if redis.call("HSETNX", KEYS[1], "proto", ARGV[2]) == 1 then
  redis.call("HSET", KEYS[1], "version", ARGV[3])
  redis.call("ZADD", KEYS[2], 0, ARGV[1])
  redis.call("INCR", KEYS[3])
  return 1
end
return 0
"""
_UPDATE_POLICY = """
-- Replace a policy (compare-and-set on its version).
-- KEYS: policy hash, policies index, generation
-- ARGV:
--   policy     EscalationPolicy protobuf
--   version    the new version
--   expected   the version the caller read ("0": any)
-- Returns {"ok"}, {"missing"} or {"conflict", current version}.
local current = redis.call("HGET", KEYS[1], "version")
if not current then return {"missing"} end
if ARGV[3] ~= "0" and current ~= ARGV[3] then return {"conflict", current} end
redis.call("HSET", KEYS[1], "proto", ARGV[1], "version", ARGV[2])
redis.call("INCR", KEYS[3])
return {"ok"}
"""
_DELETE_POLICY = """
-- Delete a policy. KEYS: policy hash, policies index, generation
-- ARGV:
--   id
-- Returns 1, or 0 when there was no such policy.
local deleted = redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[2], ARGV[1])
if deleted == 1 then redis.call("INCR", KEYS[3]) end
return deleted
"""


def state_key(incident_id: str) -> str:
    return f"tocsin:{shard_tag(incident_shard(incident_id))}:esc:{incident_id}"


def active_key(shard: int) -> str:
    """Active escalations of a shard by next fire time: what the auditor checks."""
    return f"tocsin:{shard_tag(shard)}:esc-active"


def unreachable_key(incident_id: str, epoch: int, level: int, loop: int) -> str:
    """Users of one firing of a level reported unreachable: user -> reason."""
    tag = shard_tag(incident_shard(incident_id))
    return f"tocsin:{tag}:esc-unreachable:{incident_id}:{epoch}:{level}:{loop}"


def out_key(incident_id: str, epoch: int, level: int, loop: int) -> str:
    """Users of one firing of a level whose first page was reported out: user -> when."""
    tag = shard_tag(incident_shard(incident_id))
    return f"tocsin:{tag}:esc-out:{incident_id}:{epoch}:{level}:{loop}"


def level_timer_id(incident_id: str) -> str:
    return f"esc:{incident_id}"


def hop_timer_id(incident_id: str, epoch: int, level: int, loop: int) -> str:
    return f"hop:{incident_id}:{epoch}:{level}:{loop}"


_ROUND_ROBIN = """-- An incident's turn at a round-robin level (one per incident).
-- KEYS: 1 the policy's counters hash, 2 the incident's turn at the level
-- ARGV:
--   level
--   ttl_ms     how long the incident's turn is kept
local turn = redis.call('GET', KEYS[2])
if turn then
  return tonumber(turn)
end
turn = redis.call('HINCRBY', KEYS[1], ARGV[1], 1) - 1
redis.call('SET', KEYS[2], turn, 'PX', ARGV[2])
return turn"""


def policy_key(policy_id: str) -> str:
    return f"{POLICY_PREFIX}policy:{policy_id}"


def _for_report(raw: bytes | None, payload: bytes | None) -> tuple[Escalation | None, str]:
    state = load_state(raw) if raw is not None else None
    return state, LevelTimerPayload.decode(payload).traceparent if payload is not None else ""


@dataclass(frozen=True)
class Hop:
    """The outgoing work of one fired level, kept in an outbox timer until it is done."""

    timer_id: str
    payload: HopPayload


class EscalationStore:
    def __init__(self, redis: RedisClient, clock: Clock, retention_ms: int) -> None:
        self.redis: Any = redis  # replies are bytes; redis-py annotates str
        self.clock = clock
        self.retention_ms = retention_ms
        self.timers = TimerStore(redis, clock, shards=INCIDENT_SHARDS)
        self._write = LuaScript(
            redis,
            "write_escalation.lua",
            TIMER_LUA,
            body=read_lua("tocsin.escalation", "lua/write_escalation.lua"),
        )
        self._write_together = BatchedScript(redis, self._write.script)
        """The same script for the reports' writes: a read of the page-out reports stream
        applies its reports concurrently, and their writes share round trips."""
        self._create_policy = LuaScript(redis, "create policy", body=_CREATE_POLICY)
        self._update_policy = LuaScript(redis, "update policy", body=_UPDATE_POLICY)
        self._delete_policy = LuaScript(redis, "delete policy", body=_DELETE_POLICY)
        self._round_robin = LuaScript(redis, "round robin turn", body=_ROUND_ROBIN)
        self.policies = PolicyCache(self, clock)
        """Every policy and its level 0's schedules' revisions, kept fresh by the server's
        refresh loop, so starting an escalation reads nothing before its write."""

    @property
    def notes_in_write(self) -> bool:
        """Whether a level's timeline notes go to the timeline outbox in the write that
        fires it: on one Redis server (another slot than the escalation's, which a script
        on a Cluster cannot touch; there a hop timer carries them)."""
        return not isinstance(self.redis, RedisCluster)

    async def load(self, incident_id: str) -> Escalation | None:
        raw = await self.redis.hget(state_key(incident_id), "json")
        return load_state(raw) if raw is not None else None

    async def write(
        self,
        state: Escalation,
        expected_version: int,
        *,
        traceparent: str,
        hop: Hop | None = None,
    ) -> bool:
        """Store `state` if the stored version is `expected_version` (0: none stored yet),
        arming its level timer (or cancelling it) and the hop's outbox timer with it.
        False when another writer got there first: the caller's work is stale."""
        outcome, _ = await self._run_write(state, expected_version, traceparent, hop, 0)
        return outcome == "ok"

    async def write_hop(
        self,
        state: Escalation,
        expected_version: int,
        *,
        traceparent: str,
        hop: Hop | None,
        lease_ms: int,
        pages: Sequence[bytes] = (),
        pages_trace: str = "",
        notes: Sequence[bytes] = (),
    ) -> tuple[bool, ClaimedTimer | None]:
        """`write`, and the hop's timer claimed for the caller in the same script (with a
        lease of `lease_ms`), so it is sent with no round trip of its own: (written, the
        claim; None if not written, no hop, or the hop was not due). `pages`:
        NotifyRequest protobufs added to the shard's page stream by the same script, with
        `pages_trace` (runtime/page_outbox.py); `notes`: AppendTimelineRequest protobufs
        added to the timeline outbox by it too (`notes_in_write` only)."""
        outcome, claimed = await self._run_write(
            state,
            expected_version,
            traceparent,
            hop,
            lease_ms,
            pages=(pages, pages_trace),
            notes=notes,
        )
        return outcome == "ok", claimed

    async def report_and_write(
        self,
        state: Escalation,
        expected_version: int,
        report: LevelKey,
        at_ms: int,
        *,
        traceparent: str,
    ) -> str:
        """Record that the first page to `report`'s user, paged by that firing of the
        level, went out at `at_ms`, as `record_out` does (the first report wins), and,
        only if this report was the first, `write` `state` (the release it causes), in
        one script: "ok", "reported" (reported before: nothing written) or "conflict"
        (the stored version is not `expected_version`; the report is recorded)."""
        outcome, _ = await self._run_write(
            state, expected_version, traceparent, None, 0, report=(report, at_ms), together=True
        )
        return outcome

    async def _run_write(
        self,
        state: Escalation,
        expected_version: int,
        traceparent: str,
        hop: Hop | None,
        lease_ms: int,
        *,
        report: tuple[LevelKey, int] | None = None,
        together: bool = False,
        pages: tuple[Sequence[bytes], str] = ((), ""),
        notes: Sequence[bytes] = (),
    ) -> tuple[str, ClaimedTimer | None]:
        """`write_escalation.lua`; with `report` (the level firing and user, when), the
        report is recorded first (`report_and_write`); `together`: in a pipeline with the
        concurrent calls (BatchedScript; a lone call waits one turn of the event loop).
        `pages`: page requests for the shard's page stream, and their traceparent.
        The script's outcome, and the hop's claim."""
        shard = incident_shard(state.incident_id)
        finished = state.next_fire_ms is None
        out = report[0] if report else None
        requests, pages_trace = pages
        pages_key = page_outbox.stream_key(shard) if requests else ""
        keys = [
            state_key(state.incident_id),
            active_key(shard),
            *timer_keys(shard),
            *([out_key(out.incident_id, out.epoch, out.level, out.loop)] if out else []),
            *([pages_key] if pages_key else []),
            *([timeline_outbox.STREAM_KEY] if notes else []),
        ]
        args = self._write.args(
            tag=shard_tag(shard),
            expected_version=expected_version,
            state=dump_state(state),
            version=state.version,
            next_fire_ms=-1 if state.next_fire_ms is None else state.next_fire_ms,
            level_timer=level_timer_id(state.incident_id),
            level_payload=LevelTimerPayload(state.version, traceparent).encode(),
            hop_timer=hop.timer_id if hop else "",
            hop_payload=hop.payload.encode() if hop else "",
            hop_due_ms=self.clock.now_ms(),
            incident=state.incident_id,
            expire_ms=self.retention_ms if finished else 0,
            hop_lease_ms=lease_ms if hop else 0,
            out_user=out.user_id if out else "",
            out_ms=report[1] if report else 0,
            out_ttl_ms=self.retention_ms,
            pages_key=pages_key,
            pages_trace=pages_trace,
            notes_key=timeline_outbox.STREAM_KEY if notes else "",
            notes_maxlen=timeline_outbox.MAXLEN,
            page_count=len(requests),
            entry=[*requests, *notes],
        )
        if together:
            reply = await self._write_together(keys, args)
        else:
            reply = await self._write.script(keys=keys, args=args)
        outcome = reply[0].decode()
        if outcome != "ok":
            return outcome, None
        return outcome, claimed_from_reply(shard, reply[1]) if len(reply) > 1 else None

    async def round_robin_turn(self, policy_id: str, level: int, incident_id: str) -> int:
        """The incident's turn at a round-robin level: drawn once per incident (a repeat
        or a retried firing gets the same), from a counter per policy and level advanced
        atomically, so concurrent incidents never share a turn."""
        tag = "{rr:" + policy_id + "}"
        turn = await self._round_robin(
            [f"tocsin:{tag}:counters", f"tocsin:{tag}:turn:{incident_id}:{level}"],
            level=level,
            ttl_ms=self.retention_ms,
        )
        return int(turn)

    async def record_unreachable(
        self, incident_id: str, epoch: int, level: int, loop: int, user_id: str, reason: str
    ) -> dict[str, str]:
        """Note that `user_id`, paged by that firing of the level, cannot be reached (a
        repeat changes nothing); returns every user of it reported so far, with why."""
        key = unreachable_key(incident_id, epoch, level, loop)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, user_id, reason)
            pipe.pexpire(key, self.retention_ms)
            pipe.hgetall(key)
            *_, reported = await pipe.execute()
        return {k.decode(): v.decode() for k, v in reported.items()}

    async def record_out(
        self, incident_id: str, epoch: int, level: int, loop: int, user_id: str, at_ms: int
    ) -> tuple[dict[str, int], Escalation | None, str]:
        """Note that the first page to `user_id`, paged by that firing of the level, went
        out at `at_ms` (the first report wins); returns every user of it reported so far,
        with the escalation and its level's trace (`load_for_report`) read in the same
        transaction: one round trip, as the report needs all three."""
        key = out_key(incident_id, epoch, level, loop)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, user_id, at_ms)
            pipe.pexpire(key, self.retention_ms)
            pipe.hgetall(key)
            self._queue_load_for_report(pipe, incident_id)
            *_, reported, raw, payload = await pipe.execute()
        state, traceparent = _for_report(raw, payload)
        return {k.decode(): int(v) for k, v in reported.items()}, state, traceparent

    async def load_for_report(self, incident_id: str) -> tuple[Escalation | None, str]:
        """The escalation and the trace its level timer continues ("" if none), in one
        round trip: a write that only moves the timer (a report) keeps the trace."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self._queue_load_for_report(pipe, incident_id)
            raw, payload = await pipe.execute()
        return _for_report(raw, payload)

    @staticmethod
    def _queue_load_for_report(pipe: Any, incident_id: str) -> None:
        pipe.hget(state_key(incident_id), "json")
        pipe.hget(timer_keys(incident_shard(incident_id))[2], level_timer_id(incident_id))

    async def overdue(self, shard: int, before_ms: int, limit: int = 500) -> list[str]:
        """Active escalations of `shard` whose next level was due before `before_ms`."""
        ids = await self.redis.zrangebyscore(active_key(shard), "-inf", before_ms, 0, limit)
        return [i.decode() for i in ids]

    async def has_live_timer(self, incident_id: str) -> bool:
        shard = incident_shard(incident_id)
        timers, inflight = timer_keys(shard)[:2]
        member = level_timer_id(incident_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(timers, member)
            pipe.zscore(inflight, member)
            waiting, flying = await pipe.execute()
        return waiting is not None or flying is not None

    async def exists(self, incident_id: str) -> bool:
        return bool(await self.redis.exists(state_key(incident_id)))

    async def exists_with_policy(
        self, incident_id: str, policy_id: str, schedule_ids: Sequence[str] = ()
    ) -> tuple[bool, pb.EscalationPolicy | None, dict[str, bytes | None]]:
        """Whether the incident's escalation exists, the policy (None: no such policy, or
        no `policy_id`) and the revisions of `schedule_ids` (runtime/oncall.py), in one
        round trip: what starting an escalation reads."""
        if not policy_id:
            return await self.exists(incident_id), None, {}
        ids = list(dict.fromkeys(schedule_ids))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(state_key(incident_id))
            pipe.hget(policy_key(policy_id), "proto")
            for schedule_id in ids:
                pipe.hget(schedule_key(schedule_id), REVISION_FIELD)
            found, raw, *revisions = await pipe.execute()
        policy = None if raw is None else pb.EscalationPolicy.FromString(raw)
        return bool(found), policy, dict(zip(ids, revisions, strict=True))

    # policies

    async def create_policy(self, policy: pb.EscalationPolicy) -> pb.EscalationPolicy:
        stored = _versioned(policy, 1)
        created = await self._create_policy(
            [policy_key(policy.id), POLICIES, POLICY_GENERATION],
            id=policy.id,
            policy=stored.SerializeToString(),
            version=1,
        )
        if not created:
            raise AlreadyExists(f"escalation policy {policy.id!r} already exists")
        self.policies.wrote(policy.id, stored)
        return stored

    async def update_policy(self, policy: pb.EscalationPolicy) -> pb.EscalationPolicy:
        current = await self.get_policy(policy.id)
        stored = _versioned(policy, current.version + 1)
        reply = await self._update_policy(
            [policy_key(policy.id), POLICIES, POLICY_GENERATION],
            policy=stored.SerializeToString(),
            version=stored.version,
            expected=policy.version,
        )
        outcome = reply[0].decode()
        if outcome == "missing":
            raise NotFound(f"escalation policy {policy.id!r} does not exist")
        if outcome == "conflict":
            raise Conflict(f"escalation policy {policy.id!r} is at version {reply[1].decode()}")
        self.policies.wrote(policy.id, stored)
        return stored

    async def get_policy(self, policy_id: str) -> pb.EscalationPolicy:
        raw = await self.redis.hget(policy_key(policy_id), "proto")
        if raw is None:
            raise NotFound(f"escalation policy {policy_id!r} does not exist")
        return pb.EscalationPolicy.FromString(raw)

    async def list_policies(self, after: str, limit: int) -> list[pb.EscalationPolicy]:
        low = f"({after}" if after else "-"
        ids = await self.redis.zrangebylex(POLICIES, low, "+", 0, limit)
        return await self._read_policies(ids)

    async def _read_policies(self, ids: list[bytes]) -> list[pb.EscalationPolicy]:
        """The policies `ids` name, in that order (one pipeline in the `{policies}` slot;
        one deleted meanwhile is left out)."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for policy_id in ids:
                pipe.hget(policy_key(policy_id.decode()), "proto")
            raws = await pipe.execute()
        return [pb.EscalationPolicy.FromString(r) for r in raws if r is not None]

    async def delete_policy(self, policy_id: str) -> None:
        deleted = await self._delete_policy(
            [policy_key(policy_id), POLICIES, POLICY_GENERATION], id=policy_id
        )
        if not deleted:
            raise NotFound(f"escalation policy {policy_id!r} does not exist")
        self.policies.wrote(policy_id, None)

    async def policy_generation(self) -> bytes | None:
        """The policies' generation (None: no policy written since it was introduced)."""
        generation: bytes | None = await self.redis.get(POLICY_GENERATION)
        return generation

    async def all_policies(self) -> dict[str, pb.EscalationPolicy]:
        """Every policy, by id (two round trips in the `{policies}` slot)."""
        policies = await self._read_policies(await self.redis.zrange(POLICIES, 0, -1))
        return {policy.id: policy for policy in policies}


def _versioned(policy: pb.EscalationPolicy, version: int) -> pb.EscalationPolicy:
    stored = pb.EscalationPolicy()
    stored.CopyFrom(policy)
    stored.version = version
    return stored
