"""The audit log of configuration changes, written by every service that owns some.

Guarantee: each change that altered something leaves one entry naming the authenticated
principal (never a name the caller sent), the channel (CLI, API, console), the time, and
the object before and after as JSON; a write that changed nothing (an unchanged `tocsin
apply`) leaves none. Phone numbers are masked and secrets never enter an entry (a password
change records that it happened, not the password).

Entries are `AuditEntry` protobufs in one Redis stream, `tocsin:{audit}:log`, trimmed to
TOCSIN_RETENTION (the same as incidents) on every write. The entry is written after the
change commits (a process dying between the two loses the entry, not the change).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tocsin.runtime.auth import actor_for
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import InvalidArgument, NotFound
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import identity_pb2

AUDIT_STREAM = "tocsin:{audit}:log"
_PHONE = re.compile(r"\+?\d[\d\s().-]{5,}\d")


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask_field(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _mask_field(key: str, value: Any) -> Any:
    if key in ("address", "fromNumber", "toNumber") and isinstance(value, str):
        digits = re.sub(r"\D", "", value)
        return ("+" if value.startswith("+") else "") + "*" * max(len(digits) - 4, 0) + digits[-4:]
    return _mask(value)


def as_json(obj: Message | dict[str, Any] | None) -> str:
    """`obj` as sorted JSON with phone numbers masked; "" for None. A top-level `version`
    (which every write of a versioned object bumps) is left out: it is no change."""
    if obj is None:
        return ""
    data = MessageToDict(obj, preserving_proto_field_name=True) if isinstance(obj, Message) else obj
    data = {k: v for k, v in data.items() if k != "version"}
    return json.dumps(_mask(data), sort_keys=True)


async def before_or_none(read: Any) -> Any:
    """What `read` (an awaitable) returns, or None when the object does not exist (or the
    id is malformed: the change itself then refuses it, naming its own field)."""
    try:
        return await read
    except (NotFound, InvalidArgument):
        return None


class AuditLog:
    def __init__(self, redis: RedisClient, clock: Clock, retention: timedelta) -> None:
        self._redis: Any = redis
        self._clock = clock
        self._retention_ms = int(retention.total_seconds() * 1000)

    async def record(
        self,
        action: str,
        object_kind: str,
        object_id: str,
        before: Message | dict[str, Any] | None,
        after: Message | dict[str, Any] | None,
    ) -> bool:
        """Append an entry for a change made by the current call, unless before and after
        are the same; True if one was written."""
        before_json, after_json = as_json(before), as_json(after)
        if before_json == after_json:
            return False
        entry = identity_pb2.AuditEntry(
            actor=actor_for(None),
            action=action,
            object_kind=object_kind,
            object_id=object_id,
            before_json=before_json,
            after_json=after_json,
        )
        entry.time.FromMilliseconds(self._clock.now_ms())
        added = await self._redis.xadd(AUDIT_STREAM, {"e": entry.SerializeToString()})
        stream_ms = int((added.decode() if isinstance(added, bytes) else added).split("-")[0])
        await self._redis.xtrim(
            AUDIT_STREAM, minid=str(stream_ms - self._retention_ms), approximate=True
        )
        return True

    async def read(
        self, since_ms: int, user_id: str, limit: int, before_id: str = ""
    ) -> tuple[list[identity_pb2.AuditEntry], str]:
        """Entries newest first (after `before_id`, exclusive), at or after `since_ms`, by
        `user_id` when given; and the id to continue from ("" at the end)."""
        found: list[identity_pb2.AuditEntry] = []
        top = f"({before_id}" if before_id else "+"
        while True:
            chunk = await self._redis.xrevrange(AUDIT_STREAM, max=top, min="-", count=200)
            if not chunk:
                return found, ""
            for raw_id, fields in chunk:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                entry = identity_pb2.AuditEntry.FromString(fields[b"e"])
                entry.id = entry_id
                if since_ms and entry.time.ToMilliseconds() < since_ms:
                    return found, ""
                if user_id and entry.actor.user_id != user_id:
                    continue
                found.append(entry)
                if len(found) == limit:
                    return found, entry_id
            top = f"({entry_id}"
