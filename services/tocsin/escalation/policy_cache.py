"""Escalation policies and their first schedules' revisions, kept in the process, so that
starting an escalation sends nothing to Redis before the write that fires level 0.

Guarantee: an escalation that starts more than `REFRESH_S` (plus two round trips) after a
policy or schedule change was written uses the change; one that starts later than
`TTL_MS` after the last check that succeeded never uses the copy (it reads the policy
and the revisions on its path, as it did before the copy existed). A change made through
this process is used at once.

How: every policy write (create, update, delete; store.py) raises one counter,
`POLICY_GENERATION`, in its own script, and every schedule write raises scheduling's
revision counter (runtime/oncall.py, `REVISION_COUNTER`) in its. The server's refresh
loop reads both counters every `REFRESH_S` (two GETs: they are in two Cluster slots);
when the first moved it reads every policy again, and when either moved, the revisions
of the schedules that a policy's level 0 names. A check counts from the moment before
its reads were sent, so a change written after that is caught by the next check, and a
read that a write through this process overtook is not kept. Every `FULL_RELOAD_MS`
everything is read again whatever the counters say, for a change no counter saw (a
policy written by a version before the counter, a restored backup).

Why a copy and not a check per page: the policy and the revisions live in the
`{policies}` and `{sched}` slots, not the incident's, so on a Cluster they cannot be
read inside the escalation's write; reading them, or a version of them, before the
write is one sequential round trip on every first page. The revision keeps its meaning
for the on-call answers (oncall.py): an answer is used only under the revision it was
fetched under, so a copied revision can only make a page use the answer that was right
when the copy was made, never one that was not right then.

Whether the escalation exists already is not read either: the write that starts it is a
compare-and-set on "nothing stored yet", so a repeated TRIGGERED event pages nobody.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tocsin.escalation.codec import policy_from_proto
from tocsin.runtime.clock import Clock
from tocsin.runtime.oncall import REVISION_COUNTER, read_revisions
from tocsin.v1 import escalation_pb2 as pb

if TYPE_CHECKING:
    from tocsin.escalation.store import EscalationStore

REFRESH_S = 0.25
"""How often the server's loop checks the counters (real time)."""
TTL_MS = 1_000
"""How long after its last successful check the copy is used (the clock's ms)."""
FULL_RELOAD_MS = 60_000
"""How often everything is read again whatever the counters say."""


def first_schedules(policy: pb.EscalationPolicy) -> tuple[str, ...]:
    """The schedules `policy`'s level 0 pages (their revisions are what a start reads)."""
    if not policy.levels:
        return ()
    levels = policy_from_proto(policy).levels
    return tuple(dict.fromkeys(t.id for t in levels[0].targets if t.kind == "schedule"))


class PolicyCache:
    """Every policy, and the revisions of the schedules their level 0 names."""

    def __init__(self, store: EscalationStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.ttl_ms = TTL_MS
        self._policies: dict[str, pb.EscalationPolicy] = {}
        self._first: dict[str, tuple[str, ...]] = {}
        self._revisions: dict[str, bytes | None] = {}
        self._generation: bytes | None = None
        self._counter: bytes | None = None
        self._checked_ms: int | None = None
        """When the last check that succeeded began (None: never)."""
        self._loaded_ms: int | None = None
        """When the last full read began."""
        self._writes = 0
        """Bumped by each write through this process: a read begun before is not kept."""
        self.reloads = 0

    def get(
        self, policy_id: str, now_ms: int
    ) -> tuple[pb.EscalationPolicy, dict[str, bytes | None]] | None:
        """`policy_id`'s policy and its level 0's schedules' revisions, or None when the
        copy is older than `ttl_ms` or does not have the policy (read it then)."""
        checked = self._checked_ms
        if checked is None or now_ms - checked >= self.ttl_ms:
            return None
        policy = self._policies.get(policy_id)
        if policy is None:
            return None
        revisions = self._revisions
        return policy, {s: revisions[s] for s in self._first[policy_id] if s in revisions}

    def wrote(self, policy_id: str, policy: pb.EscalationPolicy | None) -> None:
        """This process wrote `policy` (None: deleted it): used from now on."""
        self._writes += 1
        if policy is None:
            self._policies.pop(policy_id, None)
            self._first.pop(policy_id, None)
        else:
            self._policies[policy_id] = policy
            self._first[policy_id] = first_schedules(policy)

    async def refresh(self) -> bool:
        """Check the counters and read again what they say changed. True when the
        policies were read again."""
        started, writes = self.clock.now_ms(), self._writes
        store = self.store
        generation, counter = await asyncio.gather(
            store.policy_generation(), store.redis.get(REVISION_COUNTER)
        )
        reload = (
            self._loaded_ms is None
            or generation != self._generation
            or started - self._loaded_ms >= FULL_RELOAD_MS
        )
        policies, first = self._policies, self._first
        if reload:
            policies = await store.all_policies()
            first = {policy_id: first_schedules(p) for policy_id, p in policies.items()}
        wanted = {s for schedules in first.values() for s in schedules}
        revisions = self._revisions
        if reload or counter != self._counter or wanted != revisions.keys():
            revisions = await read_revisions(store.redis, sorted(wanted))
        if writes != self._writes:
            return reload  # a write here overtook these reads: the next check reads again
        self._policies, self._first, self._revisions = policies, first, revisions
        self._generation, self._counter, self._checked_ms = generation, counter, started
        if reload:
            self._loaded_ms = started
            self.reloads += 1
        return reload
