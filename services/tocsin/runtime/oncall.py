"""Who is on call, remembered between pages: the schedules' revisions and the answer cache
escalation keeps so that a page does not wait for a WhoIsOnCall call it already made.

Guarantee: a remembered answer is used only when

1. the schedule's revision, read from Redis for this page, is the one read before the
   WhoIsOnCall call that gave the answer (for the first level of an escalation that
   starts, the revision may instead come from escalation's copy, checked every 250 ms
   and never used once a second old: escalation/policy_cache.py), and
2. the moment asked about lies inside the merged shift that answer returned (the whole
   stretch of time that user is on call without a break, so a hand-off always asks again).

Scheduling writes every change to a schedule (layers, overrides, time zone, a delete and
a re-create under the same id) with a new revision taken from one counter that never
goes back, in the same script as the change (`put_schedule.lua`). A revision therefore
names one content of the schedule forever, and a change is seen by every page whose
revision read comes after the change's write, exactly as a WhoIsOnCall call made at that
moment would see it (a first level started from escalation's copy: every page that
starts more than one check after the change). The answer's user is constant over its
shift, so for any moment in the shift and the same revision it is what scheduling would
answer.

This module is the contract between the two services: scheduling owns the keys, writes
the revision, and stamps a revision on schedules stored before revisions existed; a
schedule without one (a deleted schedule, or one not stamped yet) is never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tocsin.runtime.redis import RedisClient

SCHEDULE_PREFIX = "tocsin:{sched}:"
"""The scheduling directory's key prefix (one hash tag: one slot)."""
REVISION_FIELD = "rev"
"""The schedule hash's field holding its revision."""
REVISION_COUNTER = SCHEDULE_PREFIX + "revision"
"""The counter every schedule write takes its revision from."""


def schedule_key(schedule_id: str) -> str:
    """The hash holding a schedule: `proto`, `version`, `users` and `rev`."""
    return f"{SCHEDULE_PREFIX}schedule:{schedule_id}"


async def read_revisions(
    redis: RedisClient, schedule_ids: Iterable[str]
) -> dict[str, bytes | None]:
    """Each schedule's current revision (None: no such schedule, or none stamped yet), in
    one round trip."""
    ids = list(dict.fromkeys(schedule_ids))
    if not ids:
        return {}
    client: Any = redis
    async with client.pipeline(transaction=False) as pipe:
        for schedule_id in ids:
            pipe.hget(schedule_key(schedule_id), REVISION_FIELD)
        found = await pipe.execute()
    return dict(zip(ids, found, strict=True))


@dataclass(frozen=True)
class OnCallAnswer:
    """What WhoIsOnCall said for one schedule, under one revision."""

    revision: bytes
    user_id: str
    start_ms: int
    """The merged shift's start (inclusive), ms since the epoch."""
    end_ms: int
    """The merged shift's end (exclusive): the next hand-off."""


class OnCallCache:
    """Answers per schedule, at most `size` schedules, least recently used out first."""

    def __init__(self, size: int = 1024) -> None:
        self._answers: OrderedDict[str, OnCallAnswer] = OrderedDict()
        self._size = size
        self.hits = 0
        self.misses = 0

    def lookup(self, schedule_id: str, revision: bytes | None, at_ms: int) -> str | None:
        """The user on call at `at_ms`, if a remembered answer holds for it under
        `revision`; None: ask scheduling."""
        answer = self._answers.get(schedule_id)
        if (
            answer is None
            or revision is None
            or answer.revision != revision
            or not answer.start_ms <= at_ms < answer.end_ms
        ):
            self.misses += 1
            return None
        self._answers.move_to_end(schedule_id)
        self.hits += 1
        return answer.user_id

    def remember(
        self, schedule_id: str, revision: bytes | None, user_id: str, start_ms: int, end_ms: int
    ) -> None:
        """Keep scheduling's answer, fetched after `revision` was read (no revision: the
        schedule is not cached)."""
        if revision is None or not user_id or end_ms <= start_ms:
            self._answers.pop(schedule_id, None)
            return
        self._answers[schedule_id] = OnCallAnswer(revision, user_id, start_ms, end_ms)
        self._answers.move_to_end(schedule_id)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)
