"""Send rate limits that queue, never drop.

Two limits apply to every page, per channel (SMS and calls are counted apart):

- per destination number: at least `number_interval_ms` between two pages to one phone,
  so an alert storm does not fire twenty texts at one person in the same second;
- per sender (our Twilio number): at most `sends_per_second`; a US long code sends about
  one SMS segment a second and Twilio queues (then refuses) the rest.

The destination's limit is a "next free slot" in Redis: reserving returns the earliest
moment the send may go (lua/reserve.lua) and moves the slot on, so one person's pages go
in order. The destination slot is reserved first, then the sender's no earlier than it,
in the first gap of the sender's schedule (lua/reserve_gap.lua: the reservations are
kept until they are past). So the sender's slots are not handed out first come, first
served behind the last reservation: a storm paging one person (every
`number_interval_ms`) leaves the slots in between to every other page, and another
service's first page to someone else goes within a slot or two instead of after the
storm's whole queue. The caller waits for the slot on the clock; nothing is dropped.
On one Redis server both reservations are one script (lua/reserve_pair.lua), one round
trip; on a Cluster, where the two keys are in different slots, two one after the other.

Known limit: a storm that pages many different people at once fills the sender's slots
one after another, and other pages then wait behind the reservations made before them
(fairness between services in the sender would need the service in each page's timer).
"""

from __future__ import annotations

from redis.asyncio import RedisCluster

from tocsin.notification import keys
from tocsin.notification.channels import channel_name
from tocsin.runtime.clock import Clock
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript

MAX_GAP_SCAN = 1000
"""Reservations of the sender looked at for a gap; past that, the slot after the last."""


def _script(redis: RedisClient, name: str) -> LuaScript:
    lib = read_lua("tocsin.notification", "lua/rate_lib.lua")
    body = read_lua("tocsin.notification", f"lua/{name}.lua")
    return LuaScript(redis, f"{name}.lua", lib, body=body)


class RateLimiter:
    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        sender: str,
        *,
        sends_per_second: float,
        number_interval_ms: int,
    ) -> None:
        if sends_per_second < 0 or number_interval_ms < 0:
            raise ValueError("rate limits must not be negative")
        self.clock = clock
        self.sender = sender
        self.sender_interval_ms = round(1000 / sends_per_second) if sends_per_second else 0
        self.number_interval_ms = number_interval_ms
        self._one_server = not isinstance(redis, RedisCluster)
        self._reserve = _script(redis, "reserve")
        self._reserve_gap = _script(redis, "reserve_gap")
        self._reserve_pair = _script(redis, "reserve_pair")

    @property
    def enabled(self) -> bool:
        return bool(self.sender_interval_ms or self.number_interval_ms)

    async def reserve(self, channel: int, number: str) -> int:
        """The moment (clock ms) a page on `channel` to `number` may go; reserves it."""
        now = self.clock.now_ms()
        slot = now
        kind = channel_name(channel)
        if self.number_interval_ms and self.sender_interval_ms and self._one_server:
            return int(
                await self._reserve_pair(
                    [
                        keys.rate_slot(f"{kind}:to:{number}"),
                        keys.rate_slots(f"{kind}:from:{self.sender}"),
                    ],
                    now_ms=now,
                    number_interval_ms=self.number_interval_ms,
                    sender_interval_ms=self.sender_interval_ms,
                    max_scan=MAX_GAP_SCAN,
                )
            )
        if self.number_interval_ms:
            slot = await self._take(f"{kind}:to:{number}", now, slot, self.number_interval_ms)
        if self.sender_interval_ms:
            slot = int(
                await self._reserve_gap(
                    [keys.rate_slots(f"{kind}:from:{self.sender}")],
                    now_ms=now,
                    not_before_ms=slot,
                    interval_ms=self.sender_interval_ms,
                    max_scan=MAX_GAP_SCAN,
                )
            )
        return slot

    async def _take(self, name: str, now: int, not_before: int, interval_ms: int) -> int:
        return int(
            await self._reserve(
                [keys.rate_slot(name)],
                now_ms=now,
                not_before_ms=not_before,
                interval_ms=interval_ms,
            )
        )
