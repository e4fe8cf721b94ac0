"""Hand-off notices from durable timers: one timer per schedule, armed for its next
hand-off (scheduling/handoff.py), re-armed when it fires and whenever the schedule
changes.

Firing reads the schedule as it is, asks notification (SendNotice) to tell each user on
either side of the hand-off who asked for that kind of notice, and, at a shift's start,
the schedule's `announce_slack_channel` "now on call: X"; then it arms the next one. Each
notice carries the idempotency key (user, schedule, shift start, kind) and notification
records a key before it sends, so a timer fired twice (a stalled worker whose lease ran
out, a second replica, a restart at the moment of the hand-off) tells each person once.
A notice that could not be handed to notification raises: the timer stays claimed and is
offered again after its lease, when the keys already used send nothing. A firing more
than `STALE` late (the service was down over the hand-off) sends nothing and arms the
next hand-off after now: no "your shift starts now" hours afterwards. Schedules stored
before this existed get their timer when the worker starts (`arm_missing`).

Arming never undoes a newer schedule: the timers live in the schedules' slot
(`tocsin:{sched}:handoff:*`), and one script arms a timer only if the schedule is still
at the version its hand-off was computed from (else the caller computes again from the
schedule as it now is; a deleted schedule's timer is cancelled). So a firing that
computed from version 3 while a change stored version 4 and armed its timer cannot put
version 3's moment back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import Conflict, NotFound
from tocsin.runtime.loops import WorkerHealth
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.scripts import LuaScript
from tocsin.runtime.timers import TIMER_LUA, ClaimedTimer, TimerStore, TimerWorker
from tocsin.scheduling import handoff
from tocsin.scheduling.store import TAG, SchedulingStore, schedule_key
from tocsin.v1 import notification_pb2, scheduling_pb2

log = logging.getLogger(__name__)
NAMESPACE = "handoff"
ONE_MS = timedelta(milliseconds=1)
STALE = timedelta(hours=1)
ARM_ATTEMPTS = 5
"""A schedule changing this often while its timer is armed: the arming gives up (raises);
the change that won armed it, or the timer is offered again after its lease."""
_ARM = """-- Arm a schedule's hand-off timer if the schedule is still at the version it was
-- computed from; cancel it if the schedule is gone. A timer already due and not fired
-- yet (its worker is behind) is left as it is: moved to the next hand-off after now, the
-- due one's notices would never go; when it fires, its notices are computed from the
-- schedule as it is then, and it arms the next one itself.
-- KEYS: schedule hash, the timer library's keys (same slot: {sched})
-- ARGV:
--   tag
--   id
--   version
--   due_ms
--   payload
--   now_ms
-- Returns 0 (armed, or left due), -1 (no schedule: cancelled) or the schedule's current
-- version.
local version = redis.call('HGET', KEYS[1], 'version')
if not version then
  timer_cancel(ARGV[1], ARGV[2])
  return -1
end
if version ~= ARGV[3] then
  return tonumber(version)
end
local waiting = redis.call('ZSCORE', timer_key(ARGV[1], 'timers'), ARGV[2])
if waiting and tonumber(waiting) <= tonumber(ARGV[6]) then
  return 0
end
timer_arm(ARGV[1], ARGV[2], ARGV[4], ARGV[5])
return 0"""


class NoticeSender(Protocol):
    def SendNotice(
        self, request: notification_pb2.SendNoticeRequest
    ) -> Awaitable[notification_pb2.SendNoticeResponse]: ...


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def timer_id(schedule_id: str) -> str:
    return f"handoff:{schedule_id}"


class HandoffTimers:
    def __init__(
        self,
        store: SchedulingStore,
        redis: RedisClient,
        clock: Clock,
        notices: Callable[[], NoticeSender],
    ) -> None:
        self.store = store
        self.clock = clock
        self.notices = notices
        self.redis = redis
        self.timers = TimerStore(redis, clock, shards=1, namespace=NAMESPACE, hash_tag=TAG)
        self._arm = LuaScript(redis, "handoff arm", TIMER_LUA, body=_ARM)

    async def rearm(self, schedule_id: str, after: datetime | None = None) -> None:
        """Arm the schedule's timer for its next hand-off after `after` (default now),
        computed from the schedule as stored and armed only while it is still stored so
        (else computed again); cancel it if the schedule is gone."""
        after = after or self.clock.now()
        for _ in range(ARM_ATTEMPTS):
            try:
                schedule = await self.store.compiled(schedule_id)
            except NotFound:
                await self.timers.cancel(timer_id(schedule_id))
                return
            due, _ = handoff.next_handoffs(schedule, after)
            outcome = await self._arm(
                [schedule_key(schedule_id), *self.timers.keys(0)],
                tag=self.timers.tag(0),
                id=timer_id(schedule_id),
                version=schedule.version,
                due_ms=_ms(due),
                payload=str(_ms(due)).encode(),
                now_ms=self.clock.now_ms(),
            )
            if int(outcome) <= 0:
                return
            log.info(
                "schedule %s changed (version %s -> %s) while its hand-off timer was armed; "
                "computing again",
                schedule_id,
                schedule.version,
                outcome,
            )
        raise Conflict(f"schedule {schedule_id!r} kept changing; hand-off timer not armed")

    async def fire(self, timer: ClaimedTimer) -> None:
        schedule_id = timer.timer_id.removeprefix("handoff:")
        at = _at(int(timer.payload))
        if self.clock.now() - at > STALE:
            log.warning("hand-off of schedule %s at %s missed; none sent", schedule_id, at)
            await self.rearm(schedule_id)
            return
        try:
            proto = await self.store.get_schedule(schedule_id)
        except NotFound:
            return
        schedule = await self.store.compiled(schedule_id)
        due = handoff.notices_between(schedule, at - ONE_MS, at)
        for notice in due:
            await self._tell_user(proto, notice)
        starting = [n.user for n in due if n.kind == handoff.START]
        if proto.announce_slack_channel and starting:
            names = [await self._name(user) for user in starting]
            await self._send(
                notification_pb2.SendNoticeRequest(
                    channel=notification_pb2.ChannelTarget(
                        type=notification_pb2.CONTACT_METHOD_TYPE_SLACK,
                        address=proto.announce_slack_channel,
                    ),
                    text=f"{proto.name or proto.id}: now on call: {', '.join(names)}",
                    idempotency_key=f"handoff/{schedule_id}/announce/{_ms(at)}",
                )
            )
        await self.rearm(schedule_id, at)

    async def _tell_user(self, schedule: scheduling_pb2.Schedule, notice: handoff.Notice) -> None:
        try:
            user = await self.store.get_user(notice.user)
        except NotFound:
            return
        if notice.kind not in user.handoff_notices:
            return
        name = schedule.name or schedule.id
        when = notice.anchor.strftime("%Y-%m-%d %H:%M UTC")
        text = {
            handoff.START: f"tocsin: your on-call shift on {name} starts now.",
            handoff.END: f"tocsin: your on-call shift on {name} has ended.",
            handoff.DAY_BEFORE: f"tocsin: your on-call shift on {name} starts in a day ({when}).",
        }[notice.kind]
        await self._send(
            notification_pb2.SendNoticeRequest(
                user_id=notice.user, text=text, idempotency_key=notice.key(schedule.id)
            )
        )

    async def _name(self, user_id: str) -> str:
        try:
            return (await self.store.get_user(user_id)).name or user_id
        except NotFound:
            return user_id

    async def _send(self, request: notification_pb2.SendNoticeRequest) -> None:
        reply = await self.notices().SendNotice(request)
        if not reply.first:
            log.info("hand-off notice %s was sent before", request.idempotency_key)

    async def arm_missing(self) -> int:
        """Arm the timer of every schedule that has none; returns how many were armed."""
        due_key = self.timers.keys(0)[3]
        armed, after = 0, ""
        while True:
            page = await self.store.list_schedules(after, 500)
            if not page:
                return armed
            for schedule in page:
                if not await self.redis.hexists(due_key, timer_id(schedule.id)):
                    try:
                        await self.rearm(schedule.id)
                    except Exception:  # one schedule must not keep the others unarmed
                        log.exception("hand-off timer of schedule %s not armed", schedule.id)
                        continue
                    armed += 1
            after = page[-1].id

    async def run(self, stop: asyncio.Event, health: WorkerHealth) -> None:
        """Arm what is missing (retried under a health guard until Redis answers: a
        failing start shows in health), then fire timers until `stop`."""
        guard = health.guard("hand-off timers: arming", stop)
        armed = False
        while not armed and not stop.is_set():
            async with guard:
                await self.arm_missing()
                armed = True
        await self.worker().run(stop, health)

    def worker(self) -> TimerWorker:
        worker = TimerWorker(self.timers, self.clock, self.fire, lambda: range(1))
        worker.kind = NAMESPACE
        return worker
