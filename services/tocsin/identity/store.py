"""Credentials and passwords in Redis, in scheduling's `{sched}` slot (runtime/auth.py
reads them there).

Keys:
- `tocsin:{sched}:cred:<id>`: hash of one personal token or API key: `hash` (SHA-256 of
  its secret), `user`, `kind` (session, api_key), `role` (an API key's cap, or ""),
  `name`, `created_ms`, `expires_ms` (0 = never); Redis expires it too;
- `tocsin:{sched}:api-keys`: sorted set (lexical) of API key ids, for listing;
- `tocsin:{sched}:user-credentials:<user>`: sorted set of the user's credential ids by
  expiry (+inf = never), so deleting the user deletes every credential it had: a user
  created again under the same id inherits no token, key or password;
- `tocsin:{sched}:password:<user>`: the argon2 hash of a user's password;
- `tocsin:{sched}:login-failures:<user>`: wrong passwords in a row, expiring after the
  lock-out time.

Revoking deletes the hash, so the next call with the key is UNAUTHENTICATED.
"""

from __future__ import annotations

from typing import Any

from tocsin.identity import domain
from tocsin.runtime.auth import IDENTITY_PREFIX, credential_key, new_token
from tocsin.runtime.errors import NotFound
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.scripts import LuaScript
from tocsin.v1 import common_pb2, identity_pb2

API_KEYS = IDENTITY_PREFIX + "api-keys"


def user_credentials_key(user_id: str) -> str:
    return f"{IDENTITY_PREFIX}user-credentials:{user_id}"


_ISSUE = """
-- Store a new credential (and index it when it is an API key).
-- KEYS: the credential's hash, the API key index, the user's credential ids
-- ARGV:
--   id           credential id
--   hash         SHA-256 of the secret
--   user         the user it acts as
--   kind         session or api_key
--   role         an API key's cap, or ""
--   name         an API key's name
--   created_ms   now
--   expires_ms   when it stops working; 0 = never
--   ttl_ms       how long Redis keeps it; 0 = for ever
redis.call("HSET", KEYS[1], "hash", ARGV[2], "user", ARGV[3], "kind", ARGV[4], "role", ARGV[5],
           "name", ARGV[6], "created_ms", ARGV[7], "expires_ms", ARGV[8])
if tonumber(ARGV[9]) > 0 then
  redis.call("PEXPIRE", KEYS[1], ARGV[9])
end
if ARGV[4] == "api_key" then
  redis.call("ZADD", KEYS[2], 0, ARGV[1])
end
-- Indexed by expiry so that deleting the user finds them; expired ids are dropped here.
redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", "(" .. ARGV[7])
local expires = tonumber(ARGV[8])
redis.call("ZADD", KEYS[3], expires > 0 and expires or "+inf", ARGV[1])
return 1
"""

_REVOKE = """
-- Revoke an API key: its hash goes at once. Returns the stored fields, or false.
-- KEYS: the credential's hash, the API key index
-- ARGV:
--   id   credential id
local kind = redis.call("HGET", KEYS[1], "kind")
redis.call("ZREM", KEYS[2], ARGV[1])
if kind ~= "api_key" then
  return false
end
local fields = redis.call("HGETALL", KEYS[1])
redis.call("DEL", KEYS[1])
return fields
"""

_ROLE_NAMES = {
    "admin": common_pb2.ROLE_ADMIN,
    "responder": common_pb2.ROLE_RESPONDER,
    "observer": common_pb2.ROLE_OBSERVER,
}


def password_key(user_id: str) -> str:
    return f"{IDENTITY_PREFIX}password:{user_id}"


def failures_key(user_id: str) -> str:
    return f"{IDENTITY_PREFIX}login-failures:{user_id}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def api_key_message(credential_id: str, fields: dict[str, str]) -> identity_pb2.ApiKey:
    key = identity_pb2.ApiKey(
        id=credential_id,
        user_id=fields.get("user", ""),
        name=fields.get("name", ""),
        role=_ROLE_NAMES.get(fields.get("role", ""), common_pb2.ROLE_UNSPECIFIED),
    )
    key.created_at.FromMilliseconds(int(fields.get("created_ms") or 0))
    expires = int(fields.get("expires_ms") or 0)
    if expires:
        key.expires_at.FromMilliseconds(expires)
    return key


class IdentityStore:
    def __init__(self, redis: RedisClient) -> None:
        self.redis: Any = redis
        self._issue = LuaScript(redis, "credential issue", body=_ISSUE)
        self._revoke = LuaScript(redis, "credential revoke", body=_REVOKE)

    async def issue(
        self,
        user_id: str,
        kind: str,
        now_ms: int,
        lifetime_ms: int,
        role: str = "",
        name: str = "",
    ) -> tuple[str, str]:
        """A new credential for `user_id`: (token, id). `lifetime_ms` 0 = until revoked."""
        token, credential_id, hashed = new_token()
        await self._issue(
            [credential_key(credential_id), API_KEYS, user_credentials_key(user_id)],
            id=credential_id,
            hash=hashed,
            user=user_id,
            kind=kind,
            role=role,
            name=name,
            created_ms=now_ms,
            expires_ms=now_ms + lifetime_ms if lifetime_ms else 0,
            ttl_ms=lifetime_ms,
        )
        return token, credential_id

    async def credential(self, credential_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(credential_key(credential_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def forget(self, credential_id: str) -> None:
        await self.redis.delete(credential_key(credential_id))

    async def revoke_api_key(self, credential_id: str) -> identity_pb2.ApiKey:
        reply = await self._revoke([credential_key(credential_id), API_KEYS], id=credential_id)
        if not reply:
            raise NotFound(f"API key {credential_id!r} does not exist")
        fields = {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply), 2)}
        return api_key_message(credential_id, fields)

    async def api_keys(self, user_id: str) -> list[identity_pb2.ApiKey]:
        ids = [_text(i) for i in await self.redis.zrange(API_KEYS, 0, -1)]
        keys = []
        for credential_id in ids:
            fields = await self.credential(credential_id)
            if fields and (not user_id or fields.get("user") == user_id):
                keys.append(api_key_message(credential_id, fields))
        return keys

    async def set_password(self, user_id: str, hashed: str) -> None:
        await self.redis.set(password_key(user_id), hashed)
        await self.redis.delete(failures_key(user_id))

    async def password(self, user_id: str) -> str | None:
        raw = await self.redis.get(password_key(user_id))
        return _text(raw) if raw is not None else None

    async def failures(self, user_id: str) -> int:
        raw = await self.redis.get(failures_key(user_id))
        return int(raw) if raw is not None else 0

    async def add_failure(self, user_id: str) -> int:
        key = failures_key(user_id)
        count = int(await self.redis.incr(key))
        await self.redis.pexpire(key, int(domain.LOCKOUT.total_seconds() * 1000))
        return count

    async def clear_failures(self, user_id: str) -> None:
        await self.redis.delete(failures_key(user_id))
