"""Users' contact methods and rules, reply codes and the latest page per number.

All of it sits under the `{contacts}` hash tag (keys.py): it is small, read on every page
and written rarely. A settings change reads the user's settings, computes the new whole
(domain.py) and writes it with a compare-and-set that also keeps the owner and phone
number indexes in step (lua/settings_write.lua), retrying if someone else wrote first.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import RedisCluster

from tocsin.notification import domain, keys
from tocsin.notification.domain import Settings
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import AlreadyExists, Conflict
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript, QueuedCall
from tocsin.v1 import notification_pb2

REPLY_CODES = 99
"""The first tier of codes, 1..99: one or two digits to type at 3 a.m. While all of them
are in use, codes get a digit longer (100..999, then 1000..9999, ...)."""
REPLY_CODE_TTL_MS = 24 * 3600 * 1000
"""A reply code (and "the latest page to this number") stays valid this long after the
latest page for its incident."""
REPLY_CODE_QUARANTINE_MS = 7 * 24 * 3600 * 1000
"""After that, the code names nothing for this long (a late reply is refused, not sent to
another incident) before it may be handed out again."""
REPLY_CODE_KEY_MARGIN_MS = 24 * 3600 * 1000
"""The code keys outlive the last code they hold by this much (Redis expires keys by its
own clock, the codes follow the injected one)."""
_WRITE_RETRIES = 20
SETTINGS_COPIES = 10_000
"""Users whose settings a process keeps a copy of (the latest paged), to start a cycle in
the round trip that prepares its page (`known_settings`)."""

_WRITE = read_lua("tocsin.notification", "lua/settings_write.lua")
_PREPARE = read_lua("tocsin.notification", "lua/page_prepare.lua")


@dataclass(frozen=True)
class PageContext:
    settings: Settings
    reply_code: str


@dataclass(frozen=True)
class KnownSettings:
    """A process's copy of a user's settings, as Redis held them when last read: `digest`
    is the SHA-1 of those bytes (of b"" when the user had none), which lua/notify.lua
    compares with the stored ones before it starts a cycle from rules taken from this
    copy."""

    settings: Settings
    digest: str


@dataclass(frozen=True)
class NumberOwner:
    user_id: str
    contact_method_id: str


@dataclass(frozen=True)
class KeyWrite:
    """A plain SET with a TTL, to send along with others in one round trip."""

    key: str
    value: str
    ttl_ms: int


@dataclass(frozen=True)
class LiveCode:
    """A reply code that can still be answered: `code` names `incident_id` for `user_id`."""

    code: str
    incident_id: str
    user_id: str


@dataclass(frozen=True)
class LatestPage:
    incident_id: str
    user_id: str


class ContactStore:
    def __init__(self, redis: RedisClient, clock: Clock) -> None:
        self.redis = redis
        self.clock = clock
        self._write = LuaScript(redis, "settings_write.lua", body=_WRITE)
        self._prepare = LuaScript(redis, "page_prepare.lua", body=_PREPARE)
        self._known: OrderedDict[str, KnownSettings] = OrderedDict()

    async def settings(self, user_id: str) -> Settings | None:
        """The user's settings, or None if they never had any."""
        raw = await self.redis.get(keys.user_settings(user_id))
        return Settings.FromString(keys.as_bytes(raw)) if raw is not None else None

    async def contact_method(
        self, user_id: str, method_id: str
    ) -> notification_pb2.ContactMethod | None:
        settings = await self.settings(user_id)
        return domain.contact_method(settings, method_id) if settings else None

    async def ensure_channel_target(self, target_id: str, channel_type: int, address: str) -> None:
        """The settings a channel target (an escalation level's Slack or Teams channel,
        runtime/channeltargets.py) is paged with: one contact method, the channel, and one
        rule that sends at once. Written only when they differ (the URL of a Teams
        channel may change under the same id only if its hash collides: never)."""
        method = notification_pb2.ContactMethod(
            id=target_id,
            user_id=target_id,
            type=notification_pb2.ContactMethodType.ValueType(channel_type),
            address=address,
        )
        wanted = Settings(
            contact_methods=[method],
            rules=[notification_pb2.NotificationRule(contact_method_id=target_id)],
        )
        if await self.settings(target_id) == wanted:
            return
        await self.change(target_id, lambda _: wanted)

    async def owner_of(self, method_id: str) -> str | None:
        owner = await self.redis.hget(keys.CM_OWNER, method_id)
        return keys.as_text(owner) if owner is not None else None

    async def change(self, user_id: str, change: Callable[[Settings], Settings]) -> Settings:
        """Apply `change` to the user's settings atomically (retried on a concurrent write)."""
        for _ in range(_WRITE_RETRIES):
            found = await self.redis.get(keys.user_settings(user_id))
            raw = keys.as_bytes(found) if found is not None else b""
            current = Settings.FromString(raw)
            updated = change(current)
            if await self._compare_and_set(user_id, raw, current, updated):
                self._known.pop(user_id, None)
                return updated
        raise Conflict(f"the settings of {user_id!r} keep changing; try again")

    async def _compare_and_set(
        self, user_id: str, expected: bytes, current: Settings, updated: Settings
    ) -> bool:
        before = {m.id: m for m in current.contact_methods}
        after = {m.id: m for m in updated.contact_methods}
        numbers: list[str] = []

        def index_of(number: str) -> int:
            if number not in numbers:
                numbers.append(number)
            return numbers.index(number) + 3  # KEYS[3..] in Lua (1-based)

        unlink = [
            [index_of(m.address), m.id]
            for m in before.values()
            if m.id not in after or after[m.id].address != m.address
        ]
        link = [
            [index_of(m.address), m.id]
            for m in after.values()
            if m.id not in before or before[m.id].address != m.address
        ]
        changes = {
            "own": [i for i in after if i not in before],
            "disown": [i for i in before if i not in after],
            "link": link,
            "unlink": unlink,
        }
        result = await self._write(
            keys=[
                keys.user_settings(user_id),
                keys.CM_OWNER,
                *(keys.number_index(n) for n in numbers),
            ],
            user=user_id,
            expected=expected,
            settings=updated.SerializeToString(),
            changes=json.dumps(changes),
        )
        if int(result) == -1:
            raise AlreadyExists("that contact method id belongs to another user")
        return int(result) == 1

    async def prepare_page(self, user_id: str, incident_id: str) -> PageContext:
        """The user's settings and their reply code for the incident, in one round trip."""
        return self.page_context(
            user_id, await self._prepare(**self._prepare_call(user_id, incident_id))
        )

    def queue_prepare(self, pipe: Any, user_id: str, incident_id: str) -> QueuedCall:
        """`prepare_page`'s script added to `pipe` (one Redis server only), to go with the
        cycle's start; `page_context` reads its result."""
        return self._prepare.queue(pipe, **self._prepare_call(user_id, incident_id))

    def _prepare_call(self, user_id: str, incident_id: str) -> dict[str, Any]:
        return {
            "keys": [
                keys.user_settings(user_id),
                keys.reply_codes(user_id),
                keys.code_of(user_id),
            ],
            "incident_id": incident_id,
            "now_ms": self.clock.now_ms(),
            "window_ms": REPLY_CODE_TTL_MS,
            "quarantine_ms": REPLY_CODE_QUARANTINE_MS,
            "margin_ms": REPLY_CODE_KEY_MARGIN_MS,
            "tier_prefix": keys.code_tier_prefix(user_id),
        }

    def page_context(self, user_id: str, reply: Any) -> PageContext:
        """page_prepare.lua's answer, the settings in it kept as the user's known ones."""
        raw, code = reply
        data = keys.as_bytes(raw) if raw else b""
        settings = Settings.FromString(data)
        if not isinstance(self.redis, RedisCluster):
            known = self._known
            known[user_id] = KnownSettings(settings, hashlib.sha1(data).hexdigest())
            known.move_to_end(user_id)
            while len(known) > SETTINGS_COPIES:
                known.popitem(last=False)
        return PageContext(settings, keys.as_text(code))

    def known_settings(self, user_id: str) -> KnownSettings | None:
        """This process's copy of the user's settings, from the latest page it prepared
        for them (None: none, or Redis is a Cluster, where the settings and the incident
        are in different slots and no script can check the copy against both). Dropped
        when this process changes them; another's change is caught by the digest."""
        if isinstance(self.redis, RedisCluster):
            return None
        return self._known.get(user_id)

    async def incident_of_code(self, user_id: str, code: str) -> str | None:
        """The incident a reply code names, while it is valid."""
        held = await self.redis.hget(keys.reply_codes(user_id), code.lstrip("0") or "0")
        if held is None:
            return None
        incident_id, _, expires = keys.as_text(held).partition("|")
        return incident_id if int(expires) > self.clock.now_ms() else None

    async def live_codes(self, user_id: str) -> list[LiveCode]:
        """The user's codes that can still be answered, in code order."""
        held = await self.redis.hgetall(keys.reply_codes(user_id))
        now = self.clock.now_ms()
        live: list[LiveCode] = []
        for code, value in held.items():
            incident_id, _, expires = keys.as_text(value).partition("|")
            if int(expires) > now:
                live.append(LiveCode(keys.as_text(code), incident_id, user_id))
        return sorted(live, key=lambda c: int(c.code))

    async def owners_of_number(self, number: str) -> list[NumberOwner]:
        owners = await self.redis.hgetall(keys.number_index(number))
        found = [NumberOwner(keys.as_text(u), keys.as_text(m)) for m, u in owners.items()]
        return sorted(found, key=lambda o: (o.user_id, o.contact_method_id))

    def latest_page_write(self, number: str, incident_id: str, user_id: str) -> KeyWrite:
        """The write that makes `incident_id` the latest page to `number` (for "ack")."""
        expires = self.clock.now_ms() + REPLY_CODE_TTL_MS
        return KeyWrite(
            keys.latest_page(number), f"{incident_id}|{user_id}|{expires}", REPLY_CODE_TTL_MS
        )

    async def latest_page(self, number: str) -> LatestPage | None:
        raw = await self.redis.get(keys.latest_page(number))
        if raw is None:
            return None
        incident_id, user_id, expires = keys.as_text(raw).split("|")
        if int(expires) <= self.clock.now_ms():
            return None
        return LatestPage(incident_id, user_id)

    async def set_number_enabled(self, number: str, enabled: bool) -> list[str]:
        """STOP / START for every user with an SMS contact method at `number`.

        Returns the ids of the contact methods whose state changed.
        """
        changed: list[str] = []
        for user_id in sorted({owner.user_id for owner in await self.owners_of_number(number)}):
            before = await self.settings(user_id)
            after = await self.change(
                user_id, lambda s: domain.with_number_enabled(s, number, enabled)
            )
            was = {m.id: m.disabled for m in before.contact_methods} if before else {}
            changed += [m.id for m in after.contact_methods if was.get(m.id) != m.disabled]
        return changed
