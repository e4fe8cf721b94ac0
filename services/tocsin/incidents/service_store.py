"""Services (alert sources) in Redis: CRUD with a unique integration-key index.

Services are few, so they are not sharded: two hashes under the tag {services} (see
keys.py), changed together by scripts. Updates and deletes compare-and-set against the
service as read, so a concurrent edit is never silently overwritten.

Every alert looks its service up, which would cost as much as ingesting it, so `lookup`
answers from a small in-process cache for `CACHE_TTL_MS`. This replica's own writes clear
it at once; another replica's update or delete is seen here within that time (an alert
may still reach a just-deleted service, or a just-replaced key, for a second). In a
running incidents process a supervised loop (`refresh`, twice per `CACHE_TTL_MS`) reads
again the services alerts looked up in the last `REFRESH_RECENT_MS` (the `REFRESH_MAX`
most recent; two reads at most, whatever their number), so their entries do not run out
and no alert waits for the read: an alert more than a second after its service's last
one (a lone alert, every time) paid that round trip before `trigger.lua`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets

from tocsin.incidents import keys
from tocsin.incidents.validation import check, service_id_violations, service_violations
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from tocsin.runtime.redis import RedisClient, read_lua
from tocsin.runtime.scripts import LuaScript
from tocsin.v1 import incidents_pb2

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
CACHE_TTL_MS = 1000
REFRESH_RECENT_MS = 60_000
"""Services looked up this recently are kept fresh by `refresh`."""
REFRESH_MAX = 64
"""At most this many (the most recently looked up) per refresh."""
_CACHE_SIZE = 10_000
_RETRIES = 10


def _lua(name: str) -> str:
    return read_lua("tocsin.incidents", f"lua/{name}")


def new_integration_key() -> str:
    return secrets.token_hex(16)


class ServiceStore:
    def __init__(self, redis: RedisClient, clock: Clock) -> None:
        self.redis = redis
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[int, incidents_pb2.Service]] = {}
        self._finding: dict[tuple[str, str], asyncio.Future[incidents_pb2.Service | None]] = {}
        self._looked_up: dict[tuple[str, str], int] = {}
        """When each cached lookup was last asked for (the clock's ms)."""
        self._generation = 0
        """Bumped when this replica's writes clear the cache: a read begun before is not
        kept."""
        self._keys = [keys.SERVICES_BY_ID, keys.SERVICES_BY_KEY]
        self._create = LuaScript(redis, "service_create.lua", body=_lua("service_create.lua"))
        self._replace = LuaScript(redis, "service_replace.lua", body=_lua("service_replace.lua"))
        self._lookup = LuaScript(redis, "service_lookup.lua", body=_lua("service_lookup.lua"))

    async def create(
        self, service: incidents_pb2.Service, *, validate_only: bool = False
    ) -> incidents_pb2.Service:
        """`validate_only`: every check (the id and key not taken included), no write."""
        stored = incidents_pb2.Service()
        stored.CopyFrom(service)
        stored.integration_key = stored.integration_key or new_integration_key()
        stored.name = stored.name or stored.id
        check(service_violations(stored))
        if validate_only:
            if await self.find(service_id=stored.id) is not None:
                raise AlreadyExists(f"service {stored.id!r} already exists")
            await self._key_free(stored)
            return stored
        result = await self._create(
            self._keys,
            id=stored.id,
            key=stored.integration_key,
            service=stored.SerializeToString(),
        )
        if result == b"id":
            raise AlreadyExists(f"service {stored.id!r} already exists")
        if result == b"key":
            raise AlreadyExists("the integration key is already used by another service")
        return stored

    async def lookup(
        self, *, service_id: str = "", integration_key: str = ""
    ) -> incidents_pb2.Service | None:
        """`find` through the cache (for the ingest path; see the module docstring).

        Concurrent misses for one service share a single `find`, so a storm arriving on a
        cold cache costs one Redis call, not one per alert."""
        cache_key = (service_id, integration_key)
        cached = self._cache.get(cache_key)
        now = self.clock.now_ms()
        if cached is not None and cached[0] > now:
            self._looked_up[cache_key] = now
            return cached[1]
        finding = self._finding.get(cache_key)
        if finding is None:
            finding = asyncio.ensure_future(self._find_and_cache(cache_key))
            self._finding[cache_key] = finding
            finding.add_done_callback(lambda _: self._finding.pop(cache_key, None))
        return await asyncio.shield(finding)

    async def _find_and_cache(self, cache_key: tuple[str, str]) -> incidents_pb2.Service | None:
        service_id, integration_key = cache_key
        generation, now = self._generation, self.clock.now_ms()
        service = await self.find(service_id=service_id, integration_key=integration_key)
        if service is not None and generation == self._generation:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
                self._looked_up.clear()
            self._cache[cache_key] = (now + CACHE_TTL_MS, service)
            self._looked_up[cache_key] = now
        return service

    async def refresh(self) -> int:
        """Read again the services looked up in the last `REFRESH_RECENT_MS` (at most
        `REFRESH_MAX`, the most recent), together, so their cache entries stay fresh
        without an alert waiting (see the module docstring); the others are forgotten
        when their entry runs out. A service gone is dropped from the cache. Returns
        how many were read."""
        now = self.clock.now_ms()
        for key, at in list(self._looked_up.items()):
            if now - at >= REFRESH_RECENT_MS or key not in self._cache:
                del self._looked_up[key]
        recent = sorted(self._looked_up, key=self._looked_up.__getitem__, reverse=True)
        recent = recent[:REFRESH_MAX]
        if not recent:
            return 0
        generation = self._generation
        found = await self._find_many(recent)
        if generation != self._generation:  # this replica wrote meanwhile: not kept
            return len(recent)
        for cache_key, service in zip(recent, found, strict=True):
            if service is None:
                self._cache.pop(cache_key, None)
                self._looked_up.pop(cache_key, None)
            else:
                self._cache[cache_key] = (now + CACHE_TTL_MS, service)
        return len(recent)

    async def _find_many(
        self, lookups: list[tuple[str, str]]
    ) -> list[incidents_pb2.Service | None]:
        """`find` for each (id, integration key), as service_lookup.lua does (the id
        when given, else the key's), in at most two round trips: the keys' ids, then the
        services (both hashes share a Cluster slot, but a refresh need not be atomic)."""
        by_key = sorted({key for service_id, key in lookups if not service_id and key})
        ids_of_keys: dict[str, str] = {}
        if by_key:
            found_ids = await self.redis.hmget(keys.SERVICES_BY_KEY, by_key)
            ids_of_keys = {
                key: keys.as_bytes(found).decode()
                for key, found in zip(by_key, found_ids, strict=True)
                if found is not None
            }
        wanted = [service_id or ids_of_keys.get(key, "") for service_id, key in lookups]
        ids = sorted({service_id for service_id in wanted if service_id})
        raw = (
            dict(zip(ids, await self.redis.hmget(keys.SERVICES_BY_ID, ids), strict=True))
            if ids
            else {}
        )
        return [
            incidents_pb2.Service.FromString(keys.as_bytes(raw[service_id]))
            if service_id and raw.get(service_id) is not None
            else None
            for service_id in wanted
        ]

    def _forget(self) -> None:
        """This replica changed a service: every cached lookup is read again."""
        self._generation += 1
        self._cache.clear()
        self._looked_up.clear()

    async def find(
        self, *, service_id: str = "", integration_key: str = ""
    ) -> incidents_pb2.Service | None:
        """The service with this id, or else with this integration key; None if none."""
        raw = await self._lookup(self._keys, id=service_id, key=integration_key)
        return incidents_pb2.Service.FromString(raw) if raw is not None else None

    async def get(self, service_id: str, field: str = "id") -> incidents_pb2.Service:
        check(service_id_violations(field, service_id))
        service = await self.find(service_id=service_id)
        if service is None:
            raise NotFound(f"service {service_id!r} does not exist")
        return service

    async def list(
        self, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[incidents_pb2.Service], str]:
        if page_size < 0:
            raise InvalidArgument.one("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(page_token)
        raw = await self.redis.hgetall(keys.SERVICES_BY_ID)
        by_id = {keys.as_bytes(i).decode(): keys.as_bytes(blob) for i, blob in raw.items()}
        ids = sorted(i for i in by_id if i > after)
        page = ids[:size]
        services = [incidents_pb2.Service.FromString(by_id[i]) for i in page]
        more = len(ids) > size
        return services, _encode_token(page[-1]) if more else ""

    async def update(
        self, service: incidents_pb2.Service, *, validate_only: bool = False
    ) -> incidents_pb2.Service:
        """Replace name, integration key (kept when empty) and escalation policy.
        `validate_only`: every check, no write."""
        check(service_id_violations("service.id", service.id))
        for _ in range(_RETRIES):
            current, raw = await self._read(service.id)
            stored = incidents_pb2.Service()
            stored.CopyFrom(service)
            stored.integration_key = stored.integration_key or current.integration_key
            stored.name = stored.name or stored.id
            check(service_violations(stored))
            if validate_only:
                await self._key_free(stored)
                return stored
            result = await self._replace(
                self._keys,
                id=stored.id,
                read=raw,
                key=current.integration_key,
                service=stored.SerializeToString(),
                new_key=stored.integration_key,
            )
            if self._settled(result, stored.id):
                self._forget()
                return stored
        raise Conflict(f"service {service.id!r} kept changing; try again")

    async def delete(self, service_id: str) -> None:
        check(service_id_violations("id", service_id))
        for _ in range(_RETRIES):
            current, raw = await self._read(service_id)
            result = await self._replace(
                self._keys,
                id=service_id,
                read=raw,
                key=current.integration_key,
                service=b"",
                new_key=b"",
            )
            if self._settled(result, service_id):
                self._forget()
                return
        raise Conflict(f"service {service_id!r} kept changing; try again")

    async def _key_free(self, service: incidents_pb2.Service) -> None:
        """AlreadyExists if another service has `service`'s integration key."""
        holder = await self.find(integration_key=service.integration_key)
        if holder is not None and holder.id != service.id:
            raise AlreadyExists("the integration key is already used by another service")

    async def _read(self, service_id: str) -> tuple[incidents_pb2.Service, bytes]:
        raw = await self.redis.hget(keys.SERVICES_BY_ID, service_id)
        if raw is None:
            raise NotFound(f"service {service_id!r} does not exist")
        return incidents_pb2.Service.FromString(keys.as_bytes(raw)), keys.as_bytes(raw)

    @staticmethod
    def _settled(result: bytes, service_id: str) -> bool:
        """True when written; False to retry after a concurrent change."""
        if result == b"missing":
            raise NotFound(f"service {service_id!r} does not exist")
        if result == b"key":
            raise AlreadyExists("the integration key is already used by another service")
        return result == b"ok"


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidArgument.one("page_token", "is not a token from a previous page") from error
