"""Who is calling: credentials, the principal they stand for, and the actor it records.

Guarantee: a servicer never trusts a name the caller sends. The authorization interceptor
(runtime/authz.py) turns the one `authorization: Bearer <credential>` of a call into a
`Principal` before the servicer runs, and `actor_for` makes that principal the actor of
whatever the call changes. Only the service credential, which no person holds, may speak
for someone else (the phone owner of an SMS reply, an integration of the Events API).

Credentials, from cheapest to check:

- the **service credential** (`TOCSIN_SERVICE_TOKEN`, or the file `service-token` that
  `tocsin up` writes into its data directory, mode 0600): compared in memory, so calls
  between services cost no Redis round trip;
- the **bootstrap admin** token `TOCSIN_API_TOKEN`: compared in memory;
- **personal tokens** (`tocsin login`) and **API keys** (`tocsin apikey create`):
  `tcn_<id>_<secret>`; Redis keeps only a SHA-256 of the secret (the secret is 256 random
  bits, so a slow hash adds nothing), beside the user it acts as. One read-only script
  reads the credential and its user in one round trip, on every call, so a revoked key or
  a changed role counts at once.

Without `TOCSIN_API_TOKEN` (a laptop: everything binds loopback only) a call without any
credential is the **local admin**. With it, such a call is UNAUTHENTICATED.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import functools
import getpass
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Config, ConfigError
from tocsin.runtime.errors import TocsinError
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.scripts import LuaScript
from tocsin.v1 import common_pb2, scheduling_pb2

SERVICE_TOKEN_FILE = "service-token"
"""In the data directory: the service credential `tocsin up` generates (mode 0600)."""
SERVICE_TOKEN_VARIABLE = "TOCSIN_SERVICE_TOKEN"

IDENTITY_PREFIX = "tocsin:{sched}:"
"""Credentials live in scheduling's slot, beside the users they act as, so one script reads
a credential and its user together (and scheduling's scripts can revoke a deleted user's)."""
CREDENTIAL_PREFIX = IDENTITY_PREFIX + "cred:"
USER_PREFIX = IDENTITY_PREFIX + "user:"

_TOKEN = re.compile(r"tcn_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})")


class Role(enum.Enum):
    ADMIN = "admin"
    RESPONDER = "responder"
    OBSERVER = "observer"

    @classmethod
    def from_proto(cls, value: int) -> Role:
        return _FROM_PROTO.get(common_pb2.Role.ValueType(value), Role.RESPONDER)

    @property
    def proto(self) -> common_pb2.Role.ValueType:
        return {
            Role.ADMIN: common_pb2.ROLE_ADMIN,
            Role.RESPONDER: common_pb2.ROLE_RESPONDER,
            Role.OBSERVER: common_pb2.ROLE_OBSERVER,
        }[self]

    @property
    def rank(self) -> int:
        return {Role.OBSERVER: 0, Role.RESPONDER: 1, Role.ADMIN: 2}[self]


_FROM_PROTO = {
    common_pb2.ROLE_ADMIN: Role.ADMIN,
    common_pb2.ROLE_RESPONDER: Role.RESPONDER,
    common_pb2.ROLE_OBSERVER: Role.OBSERVER,
}


class CredentialKind(enum.Enum):
    SERVICE = "service"
    BOOTSTRAP_ADMIN = "bootstrap_admin"
    LOCAL_ADMIN = "local_admin"
    SESSION = "session"
    API_KEY = "api_key"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one RPC."""

    kind: CredentialKind
    role: Role | None
    """None for the service credential, which is no person and has every right."""
    user_id: str = ""
    """The tocsin user, for a personal token or an API key."""
    credential_id: str = ""
    """The token's or key's id (never its secret)."""
    name: str = ""
    """An API key's name."""
    via: str = "api"
    """What the call came through, as the client says ("cli", "console", "api"): shown in
    the audit log, never trusted for anything else."""

    @property
    def is_service(self) -> bool:
        return self.kind is CredentialKind.SERVICE

    @property
    def display(self) -> str:
        if self.kind is CredentialKind.API_KEY:
            return f"api key {self.name or self.credential_id} of {self.user_id}"
        if self.user_id:
            return self.user_id
        if self.kind is CredentialKind.SERVICE:  # every call between services: no lookup
            return "tocsin service"
        if self.kind is CredentialKind.BOOTSTRAP_ADMIN:
            return "admin (TOCSIN_API_TOKEN)"
        if self.kind is CredentialKind.LOCAL_ADMIN:
            return f"local admin ({_os_user()})"
        return self.kind.value

    @property
    def role_name(self) -> str:
        return self.role.value if self.role else "service"


SERVICE = Principal(CredentialKind.SERVICE, None)
"""The principal of tocsin's own background work (no RPC behind it)."""

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "tocsin_principal", default=None
)


def current_principal() -> Principal | None:
    """The principal of the RPC being handled (set by the authorization interceptor)."""
    return _current.get()


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


_PERSON_CHANNELS = (common_pb2.CHANNEL_CLI, common_pb2.CHANNEL_API, common_pb2.CHANNEL_CONSOLE)
_VIA_CHANNELS = {"cli": common_pb2.CHANNEL_CLI, "console": common_pb2.CHANNEL_CONSOLE}


def actor_for(sent: common_pb2.Actor | None = None) -> common_pb2.Actor:
    """The actor to record for a change made by the current call.

    The service credential speaks for others, so what it sends stands (an SMS reply names
    the phone's owner). Anyone else is who their credential says: the sent user id and
    display are ignored; of the channel only CLI or API is kept (default API).
    """
    principal = current_principal()
    if principal is None or principal.is_service:
        result = common_pb2.Actor()
        if sent is not None:
            result.CopyFrom(sent)
        if result.channel == common_pb2.CHANNEL_UNSPECIFIED:
            result.channel = common_pb2.CHANNEL_API
        return result
    channel = _VIA_CHANNELS.get(principal.via, common_pb2.CHANNEL_API)
    if sent is not None and sent.channel in _PERSON_CHANNELS:
        channel = sent.channel
    actor = common_pb2.Actor(channel=channel)
    actor.user_id = principal.user_id
    if principal.kind is not CredentialKind.SESSION:
        actor.display = principal.display
    return actor


class Unauthenticated(TocsinError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TocsinError):
    code = grpc.StatusCode.PERMISSION_DENIED


# credentials: format, hashing, files


def new_token() -> tuple[str, str, str]:
    """A new personal token or API key: (token, id, stored hash)."""
    credential_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return f"tcn_{credential_id}_{secret}", credential_id, secret_hash(secret)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a `tcn_` token, or None for anything else."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def credential_key(credential_id: str) -> str:
    return CREDENTIAL_PREFIX + credential_id


def load_or_create_secret_file(path: Path) -> str:
    """The secret in `path`, or a new random one written there with mode 0600.

    The new file is written in full under a private name (mode 0600 from the start) and
    then linked into place, so processes starting together all read the same, complete
    secret (a link fails if another won the race; its secret is read then).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return read_secret_file(path)
    value = secrets.token_urlsafe(32)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(value + "\n")
        os.link(draft, path)
    except FileExistsError:
        return read_secret_file(path)
    finally:
        draft.unlink(missing_ok=True)
    return value


def read_secret_file(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by other users; make it mode 0600")
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"{path} is empty; delete it to generate a new one")
    return value


_PROCESS_SERVICE_TOKEN = secrets.token_urlsafe(32)
"""For services created inside one process (tests) with no service credential configured
and none in the data directory: they share this one."""


def service_token(config: Config) -> str:
    """The service credential: TOCSIN_SERVICE_TOKEN (which `with_service_token` settles
    from the data directory for a serving process), else one private to this process
    (services created in one process, as tests do)."""
    return config.service_token or _PROCESS_SERVICE_TOKEN


def with_service_token(config: Config) -> Config:
    """`config` with its service credential settled, for a process that serves: the
    configured one, else the data directory's file, created (0600) if missing, so every
    process of one host (`tocsin up`, `tocsin serve`) shares it. Hosts that share no data
    directory need TOCSIN_SERVICE_TOKEN."""
    if config.service_token:
        return config
    token = load_or_create_secret_file(config.data_dir / SERVICE_TOKEN_FILE)
    return dataclasses.replace(config, service_token=token)


def process_service_token() -> str:
    """The service credential of services started in this process without one (tests)."""
    return _PROCESS_SERVICE_TOKEN


@functools.cache
def _os_user() -> str:
    """The process's OS user, looked up once (with none of LOGNAME, USER, LNAME and
    USERNAME set, getpass reads /etc/passwd: it did so on every call of a local admin,
    a lone alert's Trigger included)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


_LOOKUP = """
-- Read a credential and the user it acts as, in one round trip (read only).
-- KEYS: the credential's hash (in the {sched} slot)
-- ARGV:
--   user_prefix   where users are kept, e.g. tocsin:{sched}:user:
local fields = redis.call("HMGET", KEYS[1], "hash", "user", "kind", "role", "name", "expires_ms")
if not fields[1] then
  return false
end
local user = redis.call("GET", ARGV[1] .. fields[2])
return {fields[1], fields[2], fields[3], fields[4] or "", fields[5] or "", fields[6] or "0",
        user or false}
"""


class Authenticator:
    """Turns a call's bearer credential into a Principal (see the module docstring)."""

    def __init__(
        self, config: Config, redis: RedisClient | None, clock: Clock | None = None
    ) -> None:
        self._service = service_token(config).encode()
        self._admin = config.api_token.encode() if config.api_token else None
        self.laptop = config.api_token is None
        self._redis = redis
        self._lookup = LuaScript(redis, "credential lookup", body=_LOOKUP) if redis else None
        self._clock = clock

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal for `credential` (None: none was sent); raises Unauthenticated."""
        if credential is None:
            if self.laptop:
                return Principal(CredentialKind.LOCAL_ADMIN, Role.ADMIN)
            raise Unauthenticated("no credential: send authorization: Bearer <token>")
        given = credential.encode()
        if hmac.compare_digest(given, self._service):
            return SERVICE
        if self._admin is not None and hmac.compare_digest(given, self._admin):
            return Principal(CredentialKind.BOOTSTRAP_ADMIN, Role.ADMIN)
        parsed = parse_token(credential)
        if parsed is None or self._lookup is None:
            raise Unauthenticated("unknown credential")
        credential_id, secret = parsed
        reply = await self._lookup([credential_key(credential_id)], user_prefix=USER_PREFIX)
        if not reply or not hmac.compare_digest(bytes(reply[0]), secret_hash(secret).encode()):
            raise Unauthenticated("unknown, expired or revoked credential")
        user_id, kind, cap, name, expires_ms = (bytes(v).decode() for v in reply[1:6])
        user_raw = reply[6]
        expires = int(expires_ms or 0)
        if expires and self._clock is not None and self._clock.now_ms() >= expires:
            raise Unauthenticated("unknown, expired or revoked credential")
        if not user_raw:
            raise Unauthenticated("unknown, expired or revoked credential")
        role = Role.from_proto(scheduling_pb2.User.FromString(bytes(user_raw)).role)
        if cap:
            capped = Role(cap)
            role = capped if capped.rank < role.rank else role
        kinds = {"session": CredentialKind.SESSION, "api_key": CredentialKind.API_KEY}
        return Principal(
            kinds.get(kind, CredentialKind.SESSION), role, user_id, credential_id, name
        )
