"""Users and schedules in Redis.

Every key shares the hash tag `{sched}`: the directory is small (people and rotations,
not events), and one slot lets a single script check that the users a schedule names
exist and keep the user -> schedules reference index exact, so a user still on a rotation
cannot be deleted. Scripts build the reference keys from a prefix; they stay in the slot.

Schedules are stored as their protobuf (the operator's own words: local start times,
duration strings) plus a version for compare-and-set. Compiled domain schedules are
cached per (id, version, revision), so WhoIsOnCall costs one HMGET and the shift arithmetic.

Every write also stores a revision that is never reused (tocsin/runtime/oncall.py): it
is what escalation checks before it pages from a WhoIsOnCall answer it remembers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from tocsin.identity.store import API_KEYS, failures_key, password_key, user_credentials_key
from tocsin.runtime.auth import credential_key
from tocsin.runtime.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from tocsin.runtime.oncall import REVISION_COUNTER, REVISION_FIELD, SCHEDULE_PREFIX
from tocsin.runtime.oncall import schedule_key as schedule_key
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript
from tocsin.scheduling.convert import parse_schedule, to_domain_schedule
from tocsin.scheduling.model import Schedule
from tocsin.v1 import common_pb2, scheduling_pb2

TAG = "{sched}"
PREFIX = SCHEDULE_PREFIX
USERS = PREFIX + "users"
SCHEDULES = PREFIX + "schedules"
_CACHE_SIZE = 256
_CREATE_USER = """
-- Create a user unless the id is taken. KEYS: user key, users index
-- ARGV:
--   id       user id
--   user     User protobuf
if redis.call("SET", KEYS[1], ARGV[2], "NX") then
  redis.call("ZADD", KEYS[2], 0, ARGV[1])
  return 1
end
return 0
"""
_STAMP_REVISIONS = """
-- Give every schedule stored before revisions existed one (each write gives a new one).
-- KEYS: schedules index, revision counter
-- ARGV:
--   prefix   key prefix
--   field    the revision's field
-- Returns how many schedules were stamped.
local stamped = 0
for _, id in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
  local key = ARGV[1] .. "schedule:" .. id
  if redis.call("EXISTS", key) == 1 and redis.call("HEXISTS", key, ARGV[2]) == 0 then
    redis.call("HSET", key, ARGV[2], redis.call("INCR", KEYS[2]))
    stamped = stamped + 1
  end
end
return stamped
"""
_CAS_ATTEMPTS = 5


def _script(redis: RedisClient, name: str) -> LuaScript:
    return LuaScript(redis, name, body=read_lua("tocsin.scheduling", f"lua/{name}"))


def _with_role(user: scheduling_pb2.User) -> scheduling_pb2.User:
    """A user stored before roles existed is a responder."""
    if user.role == common_pb2.ROLE_UNSPECIFIED:
        user.role = common_pb2.ROLE_RESPONDER
    return user


def user_key(user_id: str) -> str:
    return f"{PREFIX}user:{user_id}"


def refs_key(user_id: str) -> str:
    return f"{PREFIX}user-refs:{user_id}"


class SchedulingStore:
    def __init__(self, redis: RedisClient) -> None:
        # redis-py's annotations assume str replies; these clients return bytes.
        self.redis: Any = redis
        self._put = _script(redis, "put_schedule.lua")
        self._delete = _script(redis, "delete_schedule.lua")
        self._delete_user = _script(redis, "delete_user.lua")
        self._create_user = LuaScript(redis, "create user", body=_CREATE_USER)
        self._stamp = LuaScript(redis, "stamp revisions", body=_STAMP_REVISIONS)
        self._compiled: OrderedDict[tuple[str, int, bytes | None], Schedule] = OrderedDict()

    # users

    async def create_user(self, user: scheduling_pb2.User) -> None:
        created = await self._create_user(
            [user_key(user.id), USERS], id=user.id, user=user.SerializeToString()
        )
        if not created:
            raise AlreadyExists(f"user {user.id!r} already exists")

    async def update_user(self, user: scheduling_pb2.User) -> None:
        if not await self.redis.set(user_key(user.id), user.SerializeToString(), xx=True):
            raise NotFound(f"user {user.id!r} does not exist")

    async def get_user(self, user_id: str) -> scheduling_pb2.User:
        raw = await self.redis.get(user_key(user_id))
        if raw is None:
            raise NotFound(f"user {user_id!r} does not exist")
        return _with_role(scheduling_pb2.User.FromString(raw))

    async def list_users(self, after: str, limit: int) -> list[scheduling_pb2.User]:
        ids = await self._page(USERS, after, limit)
        raws = await self.redis.mget([user_key(i) for i in ids]) if ids else []
        return [_with_role(scheduling_pb2.User.FromString(r)) for r in raws if r is not None]

    async def user_ids(self) -> set[str]:
        return {i.decode() for i in await self.redis.zrange(USERS, 0, -1)}

    async def delete_user(self, user_id: str) -> None:
        reply = await self._delete_user(
            [
                user_key(user_id),
                USERS,
                refs_key(user_id),
                user_credentials_key(user_id),
                API_KEYS,
                password_key(user_id),
                failures_key(user_id),
            ],
            id=user_id,
            cred_prefix=credential_key(""),
        )
        outcome = reply[0].decode()
        if outcome == "missing":
            raise NotFound(f"user {user_id!r} does not exist")
        if outcome == "referenced":
            names = ", ".join(r.decode() for r in reply[1:])
            raise FailedPrecondition(f"user {user_id!r} is still on schedules: {names}")

    # schedules

    async def create_schedule(self, msg: scheduling_pb2.Schedule) -> scheduling_pb2.Schedule:
        stored = _with_version(msg, 1)
        await self._write(stored, "create", 0)
        return stored

    async def replace_schedule(
        self, msg: scheduling_pb2.Schedule, expected_version: int
    ) -> scheduling_pb2.Schedule:
        current = await self.get_schedule(msg.id)
        if expected_version and expected_version != current.version:
            raise Conflict(
                f"schedule {msg.id!r} is at version {current.version}, not {expected_version}"
            )
        stored = _with_version(msg, current.version + 1)
        await self._write(stored, "update", current.version)
        return stored

    async def modify_schedule(
        self,
        schedule_id: str,
        change: Callable[[scheduling_pb2.Schedule], None],
    ) -> scheduling_pb2.Schedule:
        """Read, apply `change` in place, validate and write back; retried on conflict."""
        for _ in range(_CAS_ATTEMPTS):
            current = await self.get_schedule(schedule_id)
            updated = scheduling_pb2.Schedule()
            updated.CopyFrom(current)
            change(updated)
            await self.validate(updated)
            updated.version = current.version + 1
            try:
                await self._write(updated, "update", current.version)
            except Conflict:
                continue
            return updated
        raise Conflict(f"schedule {schedule_id!r} kept changing; try again")

    async def get_schedule(self, schedule_id: str) -> scheduling_pb2.Schedule:
        raw = await self.redis.hget(schedule_key(schedule_id), "proto")
        if raw is None:
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        return scheduling_pb2.Schedule.FromString(raw)

    async def compiled(self, schedule_id: str) -> Schedule:
        """The domain schedule, compiled once per revision. A cache hit costs one small
        HMGET of the version and revision; the protobuf (tens of KB with hundreds of
        overrides) is read only when they changed. The revision, never reused, tells a
        schedule deleted and created again (its version starts at 1 again) from the old."""
        version, rev = await self.redis.hmget(
            schedule_key(schedule_id), ["version", REVISION_FIELD]
        )
        if version is None:
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        key = (schedule_id, int(version), rev)
        cached = self._compiled.get(key)
        if cached is not None:
            self._compiled.move_to_end(key)
            return cached
        raw, version, rev = await self.redis.hmget(
            schedule_key(schedule_id), ["proto", "version", REVISION_FIELD]
        )
        if raw is None or version is None:
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        compiled = to_domain_schedule(scheduling_pb2.Schedule.FromString(raw))
        self._compiled[(schedule_id, int(version), rev)] = compiled
        if len(self._compiled) > _CACHE_SIZE:
            self._compiled.popitem(last=False)
        return compiled

    async def stamp_revisions(self) -> int:
        """Stamp a revision on every schedule stored without one (before revisions
        existed), so escalation can cache its answers; how many were stamped."""
        return int(
            await self._stamp([SCHEDULES, REVISION_COUNTER], prefix=PREFIX, field=REVISION_FIELD)
        )

    async def list_schedules(self, after: str, limit: int) -> list[scheduling_pb2.Schedule]:
        ids = await self._page(SCHEDULES, after, limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            for schedule_id in ids:
                pipe.hget(schedule_key(schedule_id), "proto")
            raws = await pipe.execute()
        return [scheduling_pb2.Schedule.FromString(r) for r in raws if r is not None]

    async def all_compiled(self) -> list[Schedule]:
        ids = [i.decode() for i in await self.redis.zrange(SCHEDULES, 0, -1)]
        found = []
        for schedule_id in ids:
            try:
                found.append(await self.compiled(schedule_id))
            except NotFound:
                continue  # deleted meanwhile
        return found

    async def delete_schedule(self, schedule_id: str) -> None:
        deleted = await self._delete(
            [schedule_key(schedule_id), SCHEDULES], id=schedule_id, prefix=PREFIX
        )
        if not deleted:
            raise NotFound(f"schedule {schedule_id!r} does not exist")

    async def validate(
        self, msg: scheduling_pb2.Schedule, prefix: str = "schedule", *, assume_users: bool = False
    ) -> Schedule:
        """The domain schedule if `msg` is valid, else InvalidArgument naming each field.
        `assume_users` (a validate_only request): the users it names need not exist yet."""
        from tocsin.scheduling.validation import validate_schedule

        schedule, violations = parse_schedule(msg, prefix)
        unparsed = {v.field for v in violations}
        users = await self.user_ids()
        if assume_users:
            users |= {u for layer in msg.layers for u in layer.user_ids}
            users |= {o.user_id for o in msg.overrides}
        violations += [
            FieldViolation(f"{prefix}.{v.field}", v.description)
            for v in validate_schedule(schedule, users)
            if f"{prefix}.{v.field}" not in unparsed
        ]
        if violations:
            raise InvalidArgument(violations)
        return schedule

    async def _write(self, msg: scheduling_pb2.Schedule, mode: str, expected: int) -> None:
        users = sorted(
            {u for layer in msg.layers for u in layer.user_ids} | {o.user_id for o in msg.overrides}
        )
        reply = await self._put(
            keys=[
                schedule_key(msg.id),
                SCHEDULES,
                REVISION_COUNTER,
                *(user_key(u) for u in users),
            ],
            id=msg.id,
            mode=mode,
            expected=expected,
            schedule=msg.SerializeToString(),
            version=msg.version,
            prefix=PREFIX,
            users=users,
        )
        outcome = reply[0].decode()
        if outcome == "exists":
            raise AlreadyExists(f"schedule {msg.id!r} already exists")
        if outcome == "missing":
            raise NotFound(f"schedule {msg.id!r} does not exist")
        if outcome == "conflict":
            raise Conflict(
                f"schedule {msg.id!r} changed meanwhile (now version {reply[1].decode()})"
            )
        if outcome == "unknown_users":
            raise InvalidArgument(
                FieldViolation("schedule", f"unknown user {u.decode()!r}") for u in reply[1:]
            )

    async def _page(self, index: str, after: str, limit: int) -> list[str]:
        low = f"({after}" if after else "-"
        ids = await self.redis.zrangebylex(index, low, "+", start=0, num=limit)
        return [i.decode() for i in ids]


def _with_version(msg: scheduling_pb2.Schedule, version: int) -> scheduling_pb2.Schedule:
    stored = scheduling_pb2.Schedule()
    stored.CopyFrom(msg)
    stored.version = version
    return stored
