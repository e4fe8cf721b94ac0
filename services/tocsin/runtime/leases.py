"""Shard ownership through leases, so each timer shard is polled by one instance at a time.

Instances of a group heartbeat into a membership set; each heartbeat computes who should
own which shard by rendezvous (highest-random-weight) hashing over the live members, so
a join or a death moves only the shards that must move. An instance takes a lease only
when it is free or expired, renews what it holds and gives up what is no longer its own;
so as long as heartbeats keep coming, no shard has two owners.

Leases are for efficiency, not correctness: a paused process can believe it still owns a
shard, so the writes a timer handler makes are fenced (see timers.ClaimedTimer.fence).
Deadlines are clock milliseconds judged inside Lua with the caller's `now`; the keys'
PEXPIRE is only garbage collection for groups that vanished.

Keys (one hash tag per group): `tocsin:{leases:<group>}:members` (zset member -> expiry)
and `tocsin:{leases:<group>}:owners` (hash shard -> "instance|deadline_ms").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable

from tocsin.runtime.clock import Clock
from tocsin.runtime.loops import LoopGuard, WorkerHealth
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript

log = logging.getLogger(__name__)

_JOIN = read_lua("tocsin.runtime", "lua/lease_join.lua")
_SYNC = read_lua("tocsin.runtime", "lua/lease_sync.lua")
_LEAVE = read_lua("tocsin.runtime", "lua/lease_leave.lua")
_MIN_GC_MS = 3_600_000


def assign_shards(members: Iterable[str], shards: int) -> dict[int, str]:
    """The desired owner of every shard: rendezvous hashing, deterministic everywhere."""
    live = sorted(set(members))
    if not live:
        return {}
    return {shard: max(live, key=lambda m: (_weight(m, shard), m)) for shard in range(shards)}


def _weight(member: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{member}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class ShardLeases:
    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        group: str,
        instance_id: str,
        shards: int,
        lease_ms: int,
    ) -> None:
        if not group or any(c in group for c in "{}"):
            raise ValueError(f"group must be non-empty without braces, got {group!r}")
        if not instance_id or "|" in instance_id:
            raise ValueError(f"instance_id must be non-empty without '|', got {instance_id!r}")
        if shards < 1 or lease_ms < 1:
            raise ValueError("shards and lease_ms must be positive")
        self.clock = clock
        self.group = group
        self.instance_id = instance_id
        self.shards = shards
        self.lease_ms = lease_ms
        tag = f"{{leases:{group}}}"
        self.members_key = f"tocsin:{tag}:members"
        self.owners_key = f"tocsin:{tag}:owners"
        self._gc_ms = max(_MIN_GC_MS, 10 * lease_ms)
        self._join = LuaScript(redis, "lease_join.lua", body=_JOIN)
        self._sync = LuaScript(redis, "lease_sync.lua", body=_SYNC)
        self._leave = LuaScript(redis, "lease_leave.lua", body=_LEAVE)
        self._owned: frozenset[int] = frozenset()
        self._valid_until_ms = 0

    @property
    def owned(self) -> frozenset[int]:
        """Shards leased by the last heartbeat; empty once those leases have run out."""
        if self.clock.now_ms() >= self._valid_until_ms:
            return frozenset()
        return self._owned

    async def heartbeat(self) -> frozenset[int]:
        """Renew membership, rebalance and renew leases; returns the shards now owned."""
        now = self.clock.now_ms()
        members = await self._join(
            keys=[self.members_key],
            member=self.instance_id,
            now_ms=now,
            lease_ms=self.lease_ms,
            gc_ms=self._gc_ms,
        )
        assignment = assign_shards((m.decode() for m in members), self.shards)
        desired = [shard for shard, owner in assignment.items() if owner == self.instance_id]
        owned = await self._sync(
            keys=[self.owners_key],
            owner=self.instance_id,
            now_ms=now,
            lease_ms=self.lease_ms,
            gc_ms=self._gc_ms,
            shards=self.shards,
            desired=desired,
        )
        previous = self._owned
        self._owned = frozenset(int(shard) for shard in owned)
        self._valid_until_ms = now + self.lease_ms
        if self._owned != previous:
            log.info(
                "%s owns %d of %d %s shards (%d members)",
                self.instance_id,
                len(self._owned),
                self.shards,
                self.group,
                len(members),
            )
        return self._owned

    async def release_all(self) -> None:
        """Give up every lease and leave the group (on a clean shutdown)."""
        self._owned = frozenset()
        self._valid_until_ms = 0
        await self._leave(
            keys=[self.members_key, self.owners_key], owner=self.instance_id, shards=self.shards
        )

    async def run(self, stop: asyncio.Event, health: WorkerHealth | None = None) -> None:
        """Heartbeat every third of a lease until `stop` is set, then release all leases.

        A failed heartbeat (whatever it raised: a cut-off Cluster client gives up with
        RedisClusterException, not a RedisError) is retried after a short backoff, for as
        long as it takes: once Redis answers again, the instance rejoins the group and
        takes its shards back. Meanwhile `owned` empties when the last leases run out.
        """
        name = f"{self.group} lease heartbeat"
        guard = LoopGuard(name, stop) if health is None else health.guard(name, stop)
        try:
            while not stop.is_set():
                async with guard:
                    await self.heartbeat()
                if guard.ok:
                    await self.clock.sleep(self.lease_ms / 3000, stop)
        finally:
            try:
                await self.release_all()
            except Exception as error:
                log.warning("could not release %s leases; they will expire: %s", self.group, error)
