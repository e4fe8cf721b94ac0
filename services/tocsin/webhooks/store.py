"""Redis state of webhook and stakeholder subscriptions.

Configuration: one hash of webhook subscriptions (`tocsin:{webhooks}:config`, id ->
Webhook protobuf with its secret), small and read whole.

Stakeholder subscriptions (id -> Subscription protobuf) are kept where one status update
finds them, so an update reads only its incident's and its service's:

- a service's: `tocsin:{webhooks}:subs:service:<service_id>` (configuration, few);
- an incident's: `tocsin:T:inc:<incident_id>:subscriptions`, under the incident's own
  hash tag T (tocsin.incidents.keys), expiring with the incident: when it resolves
  (Router, its RESOLVED event) the hash gets the incident's retention, and one written
  after that takes the incident hash's remaining time (lua/subscription_put.lua);
- `tocsin:{webhooks}:subscription-index` (id -> "s:<service>" or "i:<incident>") finds one
  by id (Unsubscribe, the deliverer, a listing of all), and
  `tocsin:{webhooks}:subscription-deadlines` (id scored by ms) lets an incident
  subscription's entry lapse when its hash expires (lua/subscription_index.lua prunes a
  few on every write); an entry whose subscription is gone is also dropped when looked up.

Subscriptions stored by an earlier version in the one hash `tocsin:{webhooks}:subscriptions`
are moved into this layout when the notification service starts (`migrate_subscriptions`,
one at a time: a crash midway leaves the rest to the next start).

Deliveries, per destination `dest` ("wh:<id>" for a webhook, "sub:<id>" for a
stakeholder subscription), every key with the hash tag `{dest}` (one Cluster slot):

- `tocsin:{dest}:q:<incident>`: the incident's events still to deliver, in stream order;
- `tocsin:{dest}:m:<incident>`: its meta hash: the last stream id queued (dedup of a
  re-read stream entry), the head's failed attempts and first failure time;
- `tocsin:{dest}:due`: sorted set, incident -> when its head is due (or, while a
  deliverer holds it, when that claim's lease ends);
- `tocsin:{dest}:log`: the delivery log, Delivery protobufs newest first, capped;

and `tocsin:{webhooks}:busy`, the set of destinations that may have work (added after
each enqueue, removed by the deliverer only when the due set is empty, checked again
after removing, so a concurrent enqueue is never left out).

Enqueueing, claiming and completing are one Lua script each (lua/), so a queue, its due
entry and its log change together.
"""

from __future__ import annotations

import time
from typing import Any

from tocsin.incidents.keys import incident_key
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript
from tocsin.v1 import webhooks_pb2
from tocsin.webhooks.domain import Queued

CONFIG_KEY = "tocsin:{webhooks}:config"
LEGACY_SUBSCRIPTIONS_KEY = "tocsin:{webhooks}:subscriptions"
"""Where subscriptions were kept before the per-incident layout (migrate_subscriptions)."""
SUBSCRIPTION_INDEX_KEY = "tocsin:{webhooks}:subscription-index"
SUBSCRIPTION_DEADLINES_KEY = "tocsin:{webhooks}:subscription-deadlines"
BUSY_KEY = "tocsin:{webhooks}:busy"
"""Destinations that may have something to deliver: the deliverer looks only at these,
so idle subscriptions (an incident's stakeholders, long after it) cost nothing."""
LOG_MAX = 1000
"""Delivery log entries kept per destination."""
KEEP_S = 3 * 24 * 3600
"""How long an incident's queue and dedup mark outlive its last change (longer than the
retry window, so a re-read event is still recognised)."""


def webhook_dest(webhook_id: str) -> str:
    return f"wh:{webhook_id}"


def subscription_dest(subscription_id: str) -> str:
    return f"sub:{subscription_id}"


def service_subscriptions_key(service_id: str) -> str:
    return f"tocsin:{{webhooks}}:subs:service:{service_id}"


def incident_subscriptions_key(incident_id: str) -> str:
    return incident_key(incident_id) + ":subscriptions"


def _location(sub: webhooks_pb2.Subscription) -> str:
    return f"i:{sub.incident_id}" if sub.incident_id else f"s:{sub.service_id}"


def _location_key(location: str) -> str:
    kind, _, name = location.partition(":")
    return incident_subscriptions_key(name) if kind == "i" else service_subscriptions_key(name)


def due_key(dest: str) -> str:
    return f"tocsin:{{{dest}}}:due"


def queue_key(dest: str, incident_id: str) -> str:
    return f"tocsin:{{{dest}}}:q:{incident_id}"


def meta_key(dest: str, incident_id: str) -> str:
    return f"tocsin:{{{dest}}}:m:{incident_id}"


def log_key(dest: str) -> str:
    return f"tocsin:{{{dest}}}:log"


def _lua(name: str) -> str:
    return read_lua("tocsin.webhooks", f"lua/{name}")


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Head:
    """The event at the head of an incident's queue, with its failures so far."""

    def __init__(self, raw: str, failures: int, first_failure_ms: int | None) -> None:
        self.raw = raw
        self.item = Queued.decode(raw)
        self.failures = failures
        self.first_failure_ms = first_failure_ms


ROUTING_READ_INTERVAL_S = 1.0
"""How long the router matches events against its copy of the webhooks before it reads
them again (see `WebhookStore.routing_webhooks`)."""


class WebhookStore:
    def __init__(self, redis: RedisClient, retention_ms: int = 90 * 86_400_000) -> None:
        self.redis = redis
        self._routing: dict[str, webhooks_pb2.Webhook] = {}
        self._routing_read_at: float | None = None
        self._generation = 0
        """Bumped by every change made through this store: a read that began before one
        is not kept."""
        self.retention_ms = retention_ms
        """How long a resolved incident is kept (TOCSIN_RETENTION): its subscriptions too."""
        self._sub_put = LuaScript(redis, "subscription_put.lua", body=_lua("subscription_put.lua"))
        self._sub_index = LuaScript(
            redis, "subscription_index.lua", body=_lua("subscription_index.lua")
        )
        self._enqueue = LuaScript(redis, "enqueue.lua", body=_lua("enqueue.lua"))
        self._claim = LuaScript(redis, "claim.lua", body=_lua("claim.lua"))
        self._complete = LuaScript(redis, "complete.lua", body=_lua("complete.lua"))

    # -- configuration -------------------------------------------------------------------

    async def webhooks(self) -> dict[str, webhooks_pb2.Webhook]:
        raw: dict[Any, Any] = await self.redis.hgetall(CONFIG_KEY)
        return {_text(k): webhooks_pb2.Webhook.FromString(v) for k, v in raw.items()}

    async def routing_webhooks(self) -> dict[str, webhooks_pb2.Webhook]:
        """The webhooks, as the router matches each event against them: read at most once
        per `ROUTING_READ_INTERVAL_S` (real time) per process, not per event (an HGETALL
        for every event, two per new incident, webhooks or none). A change made through
        this store (this process's WebhookService) is seen by the next event; one made
        through another replica within the interval. Callers must not modify the result."""
        read_at = self._routing_read_at
        if read_at is not None and time.monotonic() - read_at < ROUTING_READ_INTERVAL_S:
            return self._routing
        generation, started = self._generation, time.monotonic()
        hooks = await self.webhooks()
        if generation == self._generation:  # no change through this store meanwhile
            self._routing, self._routing_read_at = hooks, started
        return hooks

    def _changed(self) -> None:
        self._generation += 1
        self._routing_read_at = None

    async def subscription(
        self, subscription_id: str, now_ms: int = 0
    ) -> webhooks_pb2.Subscription | None:
        """The subscription `subscription_id` (index, then its hash); an index entry whose
        subscription is gone (its incident expired) is dropped."""
        location = await self.redis.hget(SUBSCRIPTION_INDEX_KEY, subscription_id)
        if location is None:
            return None
        raw = await self.redis.hget(_location_key(_text(location)), subscription_id)
        if raw is None:
            await self._index(now_ms, subscription_id, "")
            return None
        return webhooks_pb2.Subscription.FromString(_bytes(raw))

    async def webhook(self, webhook_id: str) -> webhooks_pb2.Webhook | None:
        raw = await self.redis.hget(CONFIG_KEY, webhook_id)
        return None if raw is None else webhooks_pb2.Webhook.FromString(_bytes(raw))

    async def put_webhook(self, webhook: webhooks_pb2.Webhook) -> None:
        self._changed()
        try:
            await self.redis.hset(CONFIG_KEY, webhook.id, webhook.SerializeToString())
        finally:
            self._changed()

    async def delete_webhook(self, webhook_id: str) -> bool:
        self._changed()
        try:
            removed = bool(await self.redis.hdel(CONFIG_KEY, webhook_id))
        finally:
            self._changed()
        await self.drop_destination(webhook_dest(webhook_id))
        return removed

    async def _read_subscriptions(self, key: str) -> dict[str, webhooks_pb2.Subscription]:
        raw: dict[Any, Any] = await self.redis.hgetall(key)
        return {_text(k): webhooks_pb2.Subscription.FromString(v) for k, v in raw.items()}

    async def updates_for(
        self, service_id: str, incident_id: str
    ) -> list[webhooks_pb2.Subscription]:
        """Who gets a status update of incident `incident_id` of service `service_id`:
        the incident's subscribers and the service's (two small hashes, nothing else)."""
        found = await self._read_subscriptions(incident_subscriptions_key(incident_id))
        found.update(await self._read_subscriptions(service_subscriptions_key(service_id)))
        return [found[i] for i in sorted(found)]

    async def subscriptions(
        self, service_id: str = "", incident_id: str = ""
    ) -> dict[str, webhooks_pb2.Subscription]:
        """An incident's subscriptions, a service's, or (neither given) every one indexed."""
        if incident_id:
            subs = await self._read_subscriptions(incident_subscriptions_key(incident_id))
            return {i: s for i, s in subs.items() if not service_id or s.service_id == service_id}
        if service_id:
            return await self._read_subscriptions(service_subscriptions_key(service_id))
        index: dict[Any, Any] = await self.redis.hgetall(SUBSCRIPTION_INDEX_KEY)
        found: dict[str, webhooks_pb2.Subscription] = {}
        for location in sorted({_text(v) for v in index.values()}):
            found.update(await self._read_subscriptions(_location_key(location)))
        return found

    async def put_subscription(self, sub: webhooks_pb2.Subscription, now_ms: int) -> None:
        """Store `sub` where status updates look (moved, if it was kept elsewhere), then
        index it. A crash between the two leaves it unindexed but delivered to; a retry
        of Subscribe indexes it."""
        location = _location(sub)
        deadline = 0
        if sub.incident_id:
            ttl = await self._sub_put(
                [incident_subscriptions_key(sub.incident_id), incident_key(sub.incident_id)],
                id=sub.id,
                subscription=sub.SerializeToString(),
                retention_ms=self.retention_ms,
            )
            deadline = now_ms + int(ttl) if int(ttl) > 0 else 0
        else:
            await self.redis.hset(
                service_subscriptions_key(sub.service_id), sub.id, sub.SerializeToString()
            )
        previous = await self._index(now_ms, sub.id, location, deadline)
        if previous is not None and _text(previous) != location:
            await self.redis.hdel(_location_key(_text(previous)), sub.id)

    async def delete_subscription(self, subscription_id: str, now_ms: int = 0) -> bool:
        location = await self.redis.hget(SUBSCRIPTION_INDEX_KEY, subscription_id)
        removed = False
        if location is not None:
            removed = bool(await self.redis.hdel(_location_key(_text(location)), subscription_id))
            await self._index(now_ms, subscription_id, "")
        await self.drop_destination(subscription_dest(subscription_id))
        return removed

    async def incident_resolved(self, incident_id: str, now_ms: int) -> None:
        """An incident resolved: its subscriptions expire with it, their index entries
        lapse then too. Idempotent (an event read again does it again)."""
        key = incident_subscriptions_key(incident_id)
        if not await self.redis.pexpire(key, self.retention_ms):
            return
        for subscription_id in await self._read_subscriptions(key):
            await self._index(
                now_ms, subscription_id, f"i:{incident_id}", now_ms + self.retention_ms
            )

    async def _index(
        self, now_ms: int, subscription_id: str, location: str, deadline_ms: int = 0
    ) -> Any:
        return await self._sub_index(
            [SUBSCRIPTION_INDEX_KEY, SUBSCRIPTION_DEADLINES_KEY],
            now_ms=now_ms,
            id=subscription_id,
            location=location,
            deadline_ms=deadline_ms,
        )

    async def migrate_subscriptions(self, now_ms: int) -> int:
        """Move the subscriptions an earlier version kept in one hash into the
        per-incident layout, one at a time (removed from the old hash once stored); how
        many moved. Nothing to do (one HGETALL of a missing key) once done."""
        old = await self._read_subscriptions(LEGACY_SUBSCRIPTIONS_KEY)
        for subscription_id, sub in old.items():
            await self.put_subscription(sub, now_ms)
            await self.redis.hdel(LEGACY_SUBSCRIPTIONS_KEY, subscription_id)
        return len(old)

    async def drop_destination(self, dest: str) -> None:
        """Forget what a removed subscription still had to deliver, and its log."""
        incidents: list[Any] = await self.redis.zrange(due_key(dest), 0, -1)
        for incident in incidents:
            await self.redis.delete(queue_key(dest, _text(incident)))
            await self.redis.delete(meta_key(dest, _text(incident)))
        await self.redis.delete(due_key(dest))
        await self.redis.delete(log_key(dest))
        await self.redis.srem(BUSY_KEY, dest)

    # -- deliveries ----------------------------------------------------------------------

    async def enqueue(self, dest: str, stream_id: str, item: Queued, now_ms: int) -> bool:
        """Queue `item` unless this incident's queue saw its stream entry already; the
        destination is marked busy after (see the module docstring)."""
        incident = item.incident_id
        result = await self._enqueue(
            [due_key(dest), queue_key(dest, incident), meta_key(dest, incident)],
            incident=incident,
            stream_id=stream_id,
            item=item.encode(),
            now_ms=now_ms,
            keep_s=KEEP_S,
        )
        await self.redis.sadd(BUSY_KEY, dest)
        return bool(result)

    async def busy(self) -> list[str]:
        members: list[Any] = list(await self.redis.smembers(BUSY_KEY))
        return sorted(_text(m) for m in members)

    async def settle_idle(self, dest: str) -> bool:
        """Unmark `dest` if its due set is empty (re-marked if an enqueue raced in);
        whether it is idle now."""
        if await self.redis.zcard(due_key(dest)):
            return False
        await self.redis.srem(BUSY_KEY, dest)
        if await self.redis.zcard(due_key(dest)):
            await self.redis.sadd(BUSY_KEY, dest)
            return False
        return True

    async def claim(self, dest: str, now_ms: int, lease_ms: int, limit: int) -> list[str]:
        """Incidents whose head is due, now held by the caller for `lease_ms`."""
        if limit <= 0:
            return []
        claimed: list[Any] = await self._claim(
            [due_key(dest)], now_ms=now_ms, lease_ms=lease_ms, limit=limit
        )
        return [_text(incident) for incident in claimed]

    async def head(self, dest: str, incident_id: str) -> Head | None:
        raw = await self.redis.lindex(queue_key(dest, incident_id), 0)
        if raw is None:
            return None
        attempts, first = await self.redis.hmget(
            meta_key(dest, incident_id), "attempts", "first_ms"
        )
        return Head(
            _text(raw),
            int(attempts) if attempts is not None else 0,
            int(first) if first is not None else None,
        )

    async def complete(
        self,
        dest: str,
        incident_id: str,
        head_raw: str,
        *,
        done: bool,
        now_ms: int,
        next_ms: int,
        record: webhooks_pb2.Delivery | None,
    ) -> bool:
        """Record the head's outcome (see lua/complete.lua); False if the head changed.
        An empty `head_raw` only drops an incident whose queue is gone from the due set."""
        result = await self._complete(
            [
                due_key(dest),
                queue_key(dest, incident_id),
                meta_key(dest, incident_id),
                log_key(dest),
            ],
            incident=incident_id,
            item=head_raw,
            outcome="done" if done else "retry",
            now_ms=now_ms,
            next_ms=next_ms,
            record=record.SerializeToString() if record is not None else b"",
            log_max=LOG_MAX,
            keep_s=KEEP_S,
        )
        return bool(result)

    async def deliveries(self, dest: str, limit: int) -> list[webhooks_pb2.Delivery]:
        raw: list[Any] = await self.redis.lrange(log_key(dest), 0, limit - 1)
        return [webhooks_pb2.Delivery.FromString(r) for r in raw]

    async def pending(self, dest: str) -> int:
        """Events waiting in every incident queue of `dest`."""
        incidents: list[Any] = await self.redis.zrange(due_key(dest), 0, -1)
        total = 0
        for incident in incidents:
            total += int(await self.redis.llen(queue_key(dest, _text(incident))))
        return total
