"""Configuration from environment variables, validated once at start.

Every bad value raises `ConfigError` naming the variable, so a misconfigured process
stops before it binds anything. See the README's configuration table.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import formataddr, parseaddr
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tocsin.client.targets import (
    TargetError,
    addresses,
    grpc_target,
    is_loopback_host,
    is_single_address,
)
from tocsin.client.tls import TlsError, TlsSettings, allow_insecure_tokens, tls_from_env
from tocsin.runtime.durations import parse_duration

SERVICE_NAMES = ("scheduling", "incidents", "escalation", "notification", "history")
DEFAULT_GRPC_PORTS = {
    "scheduling": 50051,
    "incidents": 50052,
    "escalation": 50053,
    "notification": 50054,
    "history": 50055,
}
HISTORY_DATABASE_FILE = "history.sqlite3"

DEFAULT_METRICS_PORTS = {
    "gateway": 9460,
    "scheduling": 9461,
    "incidents": 9462,
    "escalation": 9463,
    "notification": 9464,
    "history": 9465,
}
"""Where each process serves /metrics when TOCSIN_METRICS_ADDR is unset (on 127.0.0.1);
`tocsin up` given TOCSIN_METRICS_ADDR=HOST:P gives its processes P, P+1, ... in this order."""


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str
    base_url: str


@dataclass(frozen=True)
class BreakerConfig:
    """When a phone provider counts as down (notification/providers.py CircuitBreaker)."""

    failures: int = 3
    """TOCSIN_SMS_FAILOVER_AFTER: consecutive provider failures (5xx, no connection, a
    timeout, refused credentials; not 429) after which pages go to the next provider."""
    open_for: timedelta = timedelta(seconds=60)
    """TOCSIN_SMS_FAILOVER_COOLDOWN: how long a provider that keeps failing is skipped;
    then one page tries it again (a success closes the breaker, a failure reopens it)."""


@dataclass(frozen=True)
class SmsFallbackConfig:
    """A second SMS/voice provider speaking Twilio's 2010-04-01 API elsewhere (SignalWire's
    compatible "LaML" API, or another Twilio account) that pages fail over to."""

    name: str
    """TOCSIN_SMS_FALLBACK_NAME (default `signalwire`): the provider's name on attempts,
    the timeline and metrics (letters, digits, `-`, `_`; not `twilio`)."""
    account_sid: str
    """TOCSIN_SMS_FALLBACK_ACCOUNT_SID: the account (SignalWire: the project id)."""
    auth_token: str = field(repr=False)
    """TOCSIN_SMS_FALLBACK_AUTH_TOKEN: its API token; also checks the signatures of its
    webhooks at the gateway. Never logged."""
    from_number: str
    """TOCSIN_SMS_FALLBACK_FROM_NUMBER: the E.164 number pages come from through it."""
    base_url: str
    """TOCSIN_SMS_FALLBACK_BASE_URL: where `/2010-04-01/Accounts/...` lives, e.g.
    `https://example.signalwire.com/api/laml` (required: there is no default host)."""


@dataclass(frozen=True)
class SmtpConfig:
    """Where email pages go (TOCSIN_SMTP_URL) and who they come from (TOCSIN_EMAIL_FROM)."""

    host: str
    port: int
    implicit_tls: bool
    """`smtps://`: TLS from the first byte (port 465)."""
    starttls: str
    """`smtp://` only: `auto` (upgrade when the server offers STARTTLS), `require` (fail
    without it; the default when credentials are given) or `off`."""
    username: str | None
    password: str | None = field(repr=False)
    sender: str
    """The From address, e.g. `tocsin <pages@example.com>`."""
    ca_file: str | None = None
    """TOCSIN_SMTP_CA: the CA (PEM) the server's certificate must chain to; None = the
    system's roots."""
    timeout_s: float = 15.0
    """Connecting, and each SMTP command's answer."""


@dataclass(frozen=True)
class OidcConfig:
    """OpenID Connect sign-in at the gateway (TOCSIN_OIDC_*); see gateway/oidc.py."""

    issuer: str
    """The provider's issuer URL (https://, or http:// on loopback only); its
    /.well-known/openid-configuration is read on the first sign-in."""
    client_id: str
    """tocsin's client id at the provider."""
    client_secret: str = field(repr=False)
    """tocsin's client secret at the provider: never logged."""
    claim: str = "email"
    """The ID token claim naming the tocsin user: matched with users' email, then ids."""


@dataclass(frozen=True)
class SlackConfig:
    """The Slack app tocsin pages through."""

    bot_token: str = field(repr=False)
    """TOCSIN_SLACK_BOT_TOKEN: the bot's `xoxb-` token (scopes chat:write, im:write)."""
    signing_secret: str = field(repr=False)
    """TOCSIN_SLACK_SIGNING_SECRET: verifies button presses (`/slack/interactions`)."""
    base_url: str = "https://slack.com"
    """TOCSIN_SLACK_BASE_URL: where Web API calls go (`<base>/api/chat.postMessage`)."""


@dataclass(frozen=True)
class Config:
    redis_url: str | None = field(repr=False)
    """May carry a password (the embedded Redis's does): never log it."""
    data_dir: Path
    http_addr: Address
    public_url: str
    api_token: str | None = field(repr=False)
    """The bootstrap admin credential (TOCSIN_API_TOKEN); None on a laptop (loopback only,
    where a call without a credential is the local admin)."""
    twilio: TwilioConfig | None
    """Twilio for SMS and voice; None = the console notifier."""
    grpc_addrs: Mapping[str, Address]
    """The first address of each service as configured (where it listens by default)."""
    retention: timedelta
    listen_addr: Address | None = None
    public_url_set: bool = False
    """TOCSIN_PUBLIC_URL was given (not the default from TOCSIN_HTTP_ADDR): pages then
    carry a short signed link to the incident's page (tocsin.client.links)."""
    twilio_sends_per_second: float = 1.0
    """Pages per second per channel from our Twilio number; 0 = unlimited (load tests)."""
    number_send_interval: timedelta = timedelta(seconds=2)
    """Least time between two pages (per channel) to one phone number; 0 = no limit."""
    twilio_status_callbacks: bool = True
    events_api_rate_per_minute: int = 600
    """Events API v2 / Alertmanager events per minute per routing key per gateway; 0 = off."""
    """Ask Twilio for delivery callbacks; off where Twilio cannot reach TOCSIN_PUBLIC_URL."""
    grpc_targets: Mapping[str, str] = field(default_factory=dict)
    """gRPC channel target per service: one address, a DNS name, or a list of replicas."""
    grpc_max_connection_age: timedelta = timedelta(seconds=60)
    """Servers close each client connection after this long (0 = never), so clients
    resolve the peer's name again and replicas added since get their share of calls."""
    grpc_max_connection_age_grace: timedelta = timedelta(minutes=10)
    """How long calls still running on such a connection (a watch stream) may go on."""
    http_header_timeout: timedelta = timedelta(seconds=10)
    """A request's line and headers must arrive within this (else 408, connection closed)."""
    http_body_timeout: timedelta = timedelta(seconds=30)
    """A request's whole body must arrive within this of its headers (else 408)."""
    http_keepalive_timeout: timedelta = timedelta(seconds=5)
    """An idle kept-alive connection is closed after this."""
    http_max_connections: int = 1000
    """Open client connections; one more evicts the one waiting longest for headers."""
    grpc_max_concurrent_streams: int = 1000
    """Calls in flight per client connection to a gRPC server; more wait at the client."""
    max_watch_streams: int = 16
    webhook_timeout: timedelta = timedelta(seconds=10)
    """TOCSIN_WEBHOOK_TIMEOUT: how long one delivery to a webhook subscription may take."""
    webhook_lease: timedelta = timedelta(seconds=60)
    """TOCSIN_WEBHOOK_LEASE: how long a deliverer holds an incident's queue of a webhook
    subscription; longer than TOCSIN_WEBHOOK_TIMEOUT (a delivery ends before another
    process may send the same event), and how soon a killed process's delivery is retried."""
    sms_fallback: SmsFallbackConfig | None = None
    """TOCSIN_SMS_FALLBACK_*: the provider SMS and voice pages fail over to (None: none)."""
    failover: BreakerConfig = field(default_factory=BreakerConfig)
    """TOCSIN_SMS_FAILOVER_*: when a phone provider counts as down."""
    smtp: SmtpConfig | None = None
    """SMTP for email pages; None = email pages are printed by the console notifier."""
    slack: SlackConfig | None = None
    """Slack DMs with buttons; None = no `slack` channel."""
    webhook_secret: str | None = field(default=None, repr=False)
    """TOCSIN_WEBHOOK_SECRET: the HMAC-SHA256 key of outgoing webhooks; None = no
    webhook channel (a `webhook` contact method is refused)."""
    backlog_max_age: timedelta = timedelta(seconds=60)
    """Past this age of the oldest unhandled incident event, new incidents are refused
    (503 with Retry-After); 0 = never."""
    backlog_max_events: int = 3000
    """Past this many unhandled incident events in a service's lane (every shard), its new
    incidents are refused (503 with Retry-After); 0 = never."""
    """WatchIncidents streams per incidents process (each holds 16 blocking Redis reads)."""
    database_url: str | None = field(default=None, repr=False)
    """The incident archive (TOCSIN_DATABASE_URL): postgresql://... or sqlite:///...; None
    means the SQLite file `history.sqlite3` in data_dir. May carry a password."""
    archive_retention: timedelta | None = None
    """TOCSIN_ARCHIVE_RETENTION: the archive deletes incidents resolved longer ago than
    this (hourly); None (`forever`, the default) = it keeps every incident."""
    report_time_zone: str = "UTC"
    """Zone in which reports count a person's pages by hour when scheduling knows none."""
    tls: TlsSettings | None = None
    """TOCSIN_TLS_CERT/KEY/CA: TLS for every gRPC server and client of this process
    (mutual TLS with a CA); None = plaintext. The key is never logged."""
    allow_insecure_tokens: bool = False
    """TOCSIN_ALLOW_INSECURE_TOKENS=1: send the bearer token in plaintext beyond loopback."""
    log_level: str = "INFO"
    """TOCSIN_LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    oidc: OidcConfig | None = None
    """OpenID Connect sign-in (TOCSIN_OIDC_ISSUER, _CLIENT_ID, _CLIENT_SECRET, _CLAIM);
    None = only local passwords."""
    instance: str | None = None
    """TOCSIN_INSTANCE: this process's name in consumer groups and leases (None = host
    name); printable ASCII without spaces or `|`."""
    processes: tuple[tuple[str, ...], ...] = ()
    """TOCSIN_PROCESSES: how `tocsin up` puts the stack's services into processes, e.g.
    `scheduling+escalation+notification,incidents+history,gateway` (`small`: that one,
    for a host of two cores); each service once, `+` joining services sharing a process,
    the gateway alone; () (`each`, the default) = a process per service."""

    @property
    def history_database_url(self) -> str:
        """The archive's SQLAlchemy URL (the embedded SQLite file unless configured)."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.data_dir / HISTORY_DATABASE_FILE}"

    service_token: str | None = field(default=None, repr=False)
    """The service credential (TOCSIN_SERVICE_TOKEN) services call each other with; None:
    the data directory's `service-token` file (see runtime/auth.py)."""
    metrics_addr: Address | None = None
    """Where this process serves Prometheus metrics (GET /metrics); None: its default
    port on 127.0.0.1 (DEFAULT_METRICS_PORTS)."""
    metrics_enabled: bool = True
    """False when TOCSIN_METRICS_ADDR=off: no metrics endpoint."""
    metrics_token: str | None = field(default=None, repr=False)
    """Bearer token a scrape must send; required to serve metrics beyond loopback."""

    def metrics_listen_addr(self, process: str) -> Address | None:
        """Where `process` serves /metrics, or None when metrics are off; refuses an
        address beyond loopback without TOCSIN_METRICS_TOKEN, and without TLS unless the
        operator consented to plaintext tokens (TOCSIN_ALLOW_INSECURE_TOKENS=1)."""
        if not self.metrics_enabled:
            return None
        addr = self.metrics_addr or Address("127.0.0.1", DEFAULT_METRICS_PORTS[process])
        if not addr.is_loopback and not self.metrics_token:
            raise ConfigError(
                f"TOCSIN_METRICS_ADDR={addr}: refusing to serve metrics beyond loopback "
                "without TOCSIN_METRICS_TOKEN; set a token or bind 127.0.0.1"
            )
        if not addr.is_loopback and self.tls is None and not self.allow_insecure_tokens:
            raise ConfigError(
                f"TOCSIN_METRICS_ADDR={addr}: TOCSIN_METRICS_TOKEN would cross the network "
                "in plaintext; set TOCSIN_TLS_CERT and TOCSIN_TLS_KEY (metrics over HTTPS) "
                "or TOCSIN_ALLOW_INSECURE_TOKENS=1 (a trusted private network)"
            )
        return addr

    def grpc_listen_addr(self, service: str) -> Address:
        if self.listen_addr is not None:
            return self.listen_addr
        target = self.grpc_targets.get(service)
        if target is not None and not is_single_address(target):
            variable = f"TOCSIN_{service.upper()}_ADDR"
            raise ConfigError(
                f"TOCSIN_LISTEN_ADDR must be set: {variable}={target!r} names how to reach "
                "the replicas, not one address to listen on"
            )
        return self.grpc_addrs[service]

    def check_bind(self, addr: Address, variable: str) -> None:
        """Refuse a non-loopback bind unless an API token protects it."""
        if not addr.is_loopback and not self.api_token:
            raise ConfigError(
                f"{variable}={addr}: refusing to listen beyond loopback without "
                "TOCSIN_API_TOKEN; set a token or bind 127.0.0.1"
            )


def parse_address(value: str, variable: str) -> Address:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{variable}={value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return Address(host, int(port_text))


def parse_grpc_target(value: str, variable: str) -> tuple[str, Address]:
    """A peer's gRPC target and its first address; see tocsin.client.targets."""
    try:
        target = grpc_target(value)
        host, port = addresses(value)[0]
    except TargetError as error:
        raise ConfigError(f"{variable}={value!r}: {error}") from None
    return target, Address(host, port)


def parse_duration_env(value: str, variable: str) -> timedelta:
    try:
        return parse_duration(value).as_timedelta()
    except ValueError as error:
        raise ConfigError(f"{variable}: {error}") from error


def _archive_retention(env: Mapping[str, str]) -> timedelta | None:
    """TOCSIN_ARCHIVE_RETENTION: `forever` (or unset) or a duration no shorter than
    TOCSIN_RETENTION (the archive is what outlives Redis: a shorter one would delete
    incidents Redis still serves, and the timeline copier would bring them back)."""
    variable = "TOCSIN_ARCHIVE_RETENTION"
    value = env.get(variable, "").strip()
    if value in ("", "forever"):
        return None
    kept = parse_duration_env(value, variable)
    redis_kept = parse_duration_env(env.get("TOCSIN_RETENTION", "90d"), "TOCSIN_RETENTION")
    if kept < redis_kept:
        raise ConfigError(
            f"{variable}={value!r}: expected `forever` or a duration at least "
            f"TOCSIN_RETENTION ({env.get('TOCSIN_RETENTION', '90d')}), e.g. 1095d"
        )
    return kept


def _parse_rate(value: str, variable: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1000:
        raise ConfigError(f"{variable}={value!r}: expected a number from 0 (unlimited) to 1000")
    return rate


def _parse_count(value: str, variable: str) -> int:
    if not value.strip().isdigit():
        raise ConfigError(f"{variable}={value!r}: expected a whole number, e.g. 600 (0 = off)")
    return int(value)


def _parse_positive_count(value: str, variable: str) -> int:
    if not value.strip().isdigit() or int(value) == 0:
        raise ConfigError(f"{variable}={value!r}: expected a whole number above 0, e.g. 1000")
    return int(value)


def _parse_timeout(value: str, variable: str) -> timedelta:
    timeout = parse_duration_env(value, variable)
    if timeout <= timedelta(0):
        raise ConfigError(f"{variable}={value!r}: expected a duration above 0, e.g. 10s")
    return timeout


def _parse_switch(value: str, variable: str) -> bool:
    switch = value.strip().lower()
    if switch not in ("on", "off"):
        raise ConfigError(f"{variable}={value!r}: expected on or off")
    return switch == "on"


def _parse_interval(value: str, variable: str) -> timedelta:
    return timedelta(0) if value.strip() == "0" else parse_duration_env(value, variable)


def _parse_url(value: str, variable: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ConfigError(
            f"{variable}={value!r}: expected a URL starting with {' or '.join(schemes)}://"
        )
    return value.rstrip("/")


def _parse_token(value: str, variable: str) -> str | None:
    """Unset or empty: no token. A value of spaces, or one with spaces or control
    characters in it (a gRPC metadata value cannot carry them), is a mistake: refused."""
    if not value:
        return None
    if not value.strip():
        raise ConfigError(f"{variable} is blank (only whitespace); set a real token or unset it")
    if not all(" " < char <= "~" for char in value):
        raise ConfigError(
            f"{variable} must be printable ASCII without spaces (e.g. openssl rand -hex 32)"
        )
    return value


def _parse_database_url(value: str, variable: str) -> str:
    scheme = urlsplit(value).scheme
    known = ("postgresql", "postgres", "postgresql+asyncpg", "sqlite", "sqlite+aiosqlite")
    if scheme not in known or (
        scheme.startswith("sqlite") and not value.startswith(scheme + ":///")
    ):
        raise ConfigError(
            f"{variable}: expected postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH "
            f"(got a URL starting with {scheme or 'no scheme'!r})"
        )
    return value


def _parse_zone(value: str, variable: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{variable}={value!r}: expected an IANA time zone, e.g. Europe/Paris"
        ) from None
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
INSTANCE_PATTERN = re.compile(r"[!-{}~]{1,128}")
"""Printable ASCII without spaces or `|` (shard leases store `instance|token`)."""


def parse_log_level(value: str, variable: str = "TOCSIN_LOG_LEVEL") -> str:
    level = value.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(f"{variable}={value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return level


SMALL_HOST_PROCESSES = "scheduling+escalation+notification,incidents+history,gateway"
"""A grouping for a host of two cores (README, "Processes"): the page path's two busiest
services share a process, and so do ingest and the archive."""


def parse_processes(value: str, variable: str = "TOCSIN_PROCESSES") -> tuple[tuple[str, ...], ...]:
    """Groups of services sharing a process: `a+b,c,...`, each of the stack's services
    exactly once, the gateway alone; `small` = SMALL_HOST_PROCESSES; `each` or empty = ()
    (a process per service)."""
    text = value.strip()
    if text in ("", "each"):
        return ()
    if text == "small":
        text = SMALL_HOST_PROCESSES
    stack = (*SERVICE_NAMES, "gateway")
    groups = tuple(tuple(n.strip() for n in group.split("+")) for group in text.split(","))
    named = [n for group in groups for n in group]
    unknown = sorted({n for n in named if n not in stack})
    twice = sorted({n for n in named if named.count(n) > 1})
    missing = [n for n in stack if n not in named]
    problems = (
        ([f"unknown service(s) {', '.join(map(repr, unknown))}"] if unknown else [])
        + ([f"{', '.join(twice)} named twice"] if twice else [])
        + ([f"missing {', '.join(missing)}"] if missing else [])
        + (
            ["the gateway must be alone in its process"]
            if any("gateway" in g and len(g) > 1 for g in groups)
            else []
        )
    )
    if problems:
        raise ConfigError(
            f"{variable}={value!r}: {'; '.join(problems)} (expected `each`, or every one of "
            f"{', '.join(stack)} once, `+` joining those sharing a process, e.g. "
            f"{SMALL_HOST_PROCESSES})"
        )
    return groups


def parse_instance(value: str, variable: str = "TOCSIN_INSTANCE") -> str | None:
    """Part of Redis consumer names and lease values (`instance|token`)."""
    if not value:
        return None
    if not INSTANCE_PATTERN.fullmatch(value):
        raise ConfigError(
            f"{variable}={value!r}: expected printable ASCII without spaces or '|' "
            "(at most 128 characters), e.g. scheduling-2"
        )
    return value


def _redis_url(value: str, variable: str) -> str:
    _parse_url(value, variable, ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"))
    parts = urlsplit(value)
    if parts.scheme == "unix":
        return value
    for seed in (parts.netloc.rpartition("@")[2] or "").split(","):
        host, sep, port = seed.rpartition(":")
        if sep and not host.endswith("]") and ":" in host:
            continue  # a bare IPv6 literal without a port
        if sep and (not port.isdigit() or not 0 < int(port) <= 65535):
            raise ConfigError(f"{variable}: {seed!r} has no valid port (expected HOST:PORT)")
    return value


def _tls(env: Mapping[str, str]) -> TlsSettings | None:
    try:
        tls = tls_from_env(env)
    except TlsError as error:
        raise ConfigError(str(error)) from None
    if tls is not None and tls.cert_chain is None:
        raise ConfigError(
            "TOCSIN_TLS_CA is set without TOCSIN_TLS_CERT and TOCSIN_TLS_KEY: a server needs "
            "its own certificate (a CLI needs only the CA)"
        )
    return tls


def _allow_insecure(env: Mapping[str, str]) -> bool:
    try:
        return allow_insecure_tokens(env)
    except TlsError as error:
        raise ConfigError(str(error)) from None


OIDC_VARIABLES = ("TOCSIN_OIDC_ISSUER", "TOCSIN_OIDC_CLIENT_ID", "TOCSIN_OIDC_CLIENT_SECRET")


def _set_together(env: Mapping[str, str], names: Sequence[str]) -> bool:
    """Whether the group of variables `names` is set: all of them (True) or none (False);
    some but not all is a ConfigError naming the missing ones."""
    present = [n for n in names if env.get(n)]
    if not present:
        return False
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set together with {', '.join(present)}")
    return True


def _oidc(env: Mapping[str, str]) -> OidcConfig | None:
    if not _set_together(env, OIDC_VARIABLES):
        if env.get("TOCSIN_OIDC_CLAIM"):
            raise ConfigError("TOCSIN_OIDC_CLAIM is set without TOCSIN_OIDC_ISSUER")
        return None
    issuer = env["TOCSIN_OIDC_ISSUER"].strip()
    parts = urlsplit(issuer)
    loopback = parts.hostname is not None and Address(parts.hostname, 0).is_loopback
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ConfigError(
            f"TOCSIN_OIDC_ISSUER={issuer!r}: expected an https:// URL (http:// only on "
            "loopback), e.g. https://accounts.google.com"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"TOCSIN_OIDC_ISSUER={issuer!r}: an issuer has no ? or # part")
    client_id = env["TOCSIN_OIDC_CLIENT_ID"]
    if not all(" " < char <= "~" for char in client_id):
        raise ConfigError("TOCSIN_OIDC_CLIENT_ID must be printable ASCII without spaces")
    secret = _parse_token(env["TOCSIN_OIDC_CLIENT_SECRET"], "TOCSIN_OIDC_CLIENT_SECRET")
    assert secret is not None
    claim = env.get("TOCSIN_OIDC_CLAIM", "email").strip() or "email"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}", claim):
        raise ConfigError(
            f"TOCSIN_OIDC_CLAIM={claim!r}: expected a claim name, e.g. email or preferred_username"
        )
    return OidcConfig(issuer.rstrip("/"), client_id, secret, claim)


def _parse_metrics_addr(value: str | None) -> tuple[bool, Address | None]:
    if value is None or not value.strip():
        return True, None
    if value.strip().lower() == "off":
        return False, None
    return True, parse_address(value.strip(), "TOCSIN_METRICS_ADDR")


def _twilio(env: Mapping[str, str]) -> TwilioConfig | None:
    names = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER")
    if not _set_together(env, names):
        return None
    sid = env["TWILIO_ACCOUNT_SID"]
    if not re.fullmatch(r"AC[0-9a-fA-F]{32}", sid):
        raise ConfigError("TWILIO_ACCOUNT_SID: expected AC followed by 32 hex digits")
    from_number = env["TWILIO_FROM_NUMBER"]
    if not re.fullmatch(r"\+[1-9]\d{6,14}", from_number):
        raise ConfigError("TWILIO_FROM_NUMBER: expected an E.164 number like +15005550006")
    base = _parse_url(
        env.get("TOCSIN_TWILIO_BASE_URL", "https://api.twilio.com"),
        "TOCSIN_TWILIO_BASE_URL",
        ("http", "https"),
    )
    return TwilioConfig(sid, env["TWILIO_AUTH_TOKEN"], from_number, base)


def _sms_fallback(env: Mapping[str, str], twilio: TwilioConfig | None) -> SmsFallbackConfig | None:
    sid_var, token_var = "TOCSIN_SMS_FALLBACK_ACCOUNT_SID", "TOCSIN_SMS_FALLBACK_AUTH_TOKEN"
    from_var, base_var = "TOCSIN_SMS_FALLBACK_FROM_NUMBER", "TOCSIN_SMS_FALLBACK_BASE_URL"
    names = [sid_var, token_var, from_var, base_var]
    if not _set_together(env, names):
        return None
    if twilio is None:
        raise ConfigError(
            "TOCSIN_SMS_FALLBACK_*: a fallback provider needs the first one "
            "(TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER)"
        )
    name = env.get("TOCSIN_SMS_FALLBACK_NAME", "signalwire").strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name) or name == "twilio":
        raise ConfigError(
            f"TOCSIN_SMS_FALLBACK_NAME={name!r}: expected a word of letters, digits, - or _ "
            "(not twilio)"
        )
    sid = env[sid_var]
    if not re.fullmatch(r"[A-Za-z0-9-]{8,64}", sid):
        raise ConfigError(f"{sid_var}: expected an account or project id")
    from_number = env[from_var]
    if not re.fullmatch(r"\+[1-9]\d{6,14}", from_number):
        raise ConfigError(f"{from_var}: expected an E.164 number like +15005550006")
    base = _parse_url(env[base_var], base_var, ("http", "https"))
    return SmsFallbackConfig(name, sid, env[token_var], from_number, base)


def _failover(env: Mapping[str, str]) -> BreakerConfig:
    failures = _parse_positive_count(
        env.get("TOCSIN_SMS_FAILOVER_AFTER", "3"), "TOCSIN_SMS_FAILOVER_AFTER"
    )
    return BreakerConfig(
        failures=failures,
        open_for=_parse_timeout(
            env.get("TOCSIN_SMS_FAILOVER_COOLDOWN", "60s"), "TOCSIN_SMS_FAILOVER_COOLDOWN"
        ),
    )


_STARTTLS = ("auto", "require", "off")


def _smtp(env: Mapping[str, str]) -> SmtpConfig | None:
    """TOCSIN_SMTP_URL (`smtp://[user:password@]host[:port][?starttls=auto|require|off]`
    or `smtps://...`) and TOCSIN_EMAIL_FROM, which must come together."""
    url, sender = env.get("TOCSIN_SMTP_URL", ""), env.get("TOCSIN_EMAIL_FROM", "")
    if not url and not sender:
        return None
    if not url:
        raise ConfigError("TOCSIN_EMAIL_FROM is set without TOCSIN_SMTP_URL")
    if not sender:
        raise ConfigError("TOCSIN_SMTP_URL is set without TOCSIN_EMAIL_FROM")
    parts = urlsplit(url)
    # Never the URL itself in an error: it may carry the password.
    if parts.scheme not in ("smtp", "smtps"):
        raise ConfigError("TOCSIN_SMTP_URL: expected smtp://host[:port] or smtps://host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("TOCSIN_SMTP_URL: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ConfigError("TOCSIN_SMTP_URL: a host is required")
    implicit = parts.scheme == "smtps"
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None):
        raise ConfigError("TOCSIN_SMTP_URL: give both a user name and a password, or neither")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"starttls"})
    if unknown:
        raise ConfigError(f"TOCSIN_SMTP_URL: unknown parameter {unknown[0]!r} (only starttls)")
    starttls = query.get("starttls", ["require" if username else "auto"])[-1]
    if starttls not in _STARTTLS:
        raise ConfigError(f"TOCSIN_SMTP_URL: starttls must be one of {', '.join(_STARTTLS)}")
    if implicit and "starttls" in query:
        raise ConfigError("TOCSIN_SMTP_URL: starttls applies to smtp://, not smtps://")
    display, address = parseaddr(sender)
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", address):
        raise ConfigError(
            "TOCSIN_EMAIL_FROM: expected an address, e.g. pages@example.com or "
            "'tocsin <pages@example.com>'"
        )
    ca_file = env.get("TOCSIN_SMTP_CA") or None
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"TOCSIN_SMTP_CA={ca_file!r}: not a readable PEM CA bundle ({type(error).__name__})"
            ) from None
    return SmtpConfig(
        ca_file=ca_file,
        host=parts.hostname,
        port=port or (465 if implicit else 587),
        implicit_tls=implicit,
        starttls="off" if implicit else starttls,
        username=username,
        password=password,
        sender=formataddr((display, address)),
    )


MIN_WEBHOOK_SECRET_CHARS = 16


def _slack(env: Mapping[str, str]) -> SlackConfig | None:
    names = ("TOCSIN_SLACK_BOT_TOKEN", "TOCSIN_SLACK_SIGNING_SECRET")
    if not _set_together(env, names):
        return None
    token = _parse_token(env["TOCSIN_SLACK_BOT_TOKEN"], "TOCSIN_SLACK_BOT_TOKEN")
    secret = _parse_token(env["TOCSIN_SLACK_SIGNING_SECRET"], "TOCSIN_SLACK_SIGNING_SECRET")
    assert token is not None and secret is not None
    if not token.startswith("xoxb-"):
        raise ConfigError("TOCSIN_SLACK_BOT_TOKEN: expected a bot token (xoxb-...)")
    base = _parse_url(
        env.get("TOCSIN_SLACK_BASE_URL", "https://slack.com"),
        "TOCSIN_SLACK_BASE_URL",
        ("http", "https"),
    )
    return SlackConfig(token, secret, base)


def _webhook_secret(value: str) -> str | None:
    secret = _parse_token(value, "TOCSIN_WEBHOOK_SECRET")
    if secret is not None and len(secret) < MIN_WEBHOOK_SECRET_CHARS:
        raise ConfigError(
            f"TOCSIN_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_CHARS} characters "
            "(e.g. openssl rand -hex 32)"
        )
    return secret


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration (from `os.environ` unless given)."""
    env = os.environ if env is None else env
    redis_url = env.get("TOCSIN_REDIS_URL") or None
    if redis_url is not None:
        _redis_url(redis_url, "TOCSIN_REDIS_URL")
    http_addr = parse_address(env.get("TOCSIN_HTTP_ADDR", "127.0.0.1:8080"), "TOCSIN_HTTP_ADDR")
    public_url = _parse_url(
        env.get("TOCSIN_PUBLIC_URL", f"http://{http_addr}"), "TOCSIN_PUBLIC_URL", ("http", "https")
    )
    peers = {
        name: parse_grpc_target(
            env.get(f"TOCSIN_{name.upper()}_ADDR", f"127.0.0.1:{DEFAULT_GRPC_PORTS[name]}"),
            f"TOCSIN_{name.upper()}_ADDR",
        )
        for name in SERVICE_NAMES
    }
    listen = env.get("TOCSIN_LISTEN_ADDR")
    metrics_enabled, metrics_addr = _parse_metrics_addr(env.get("TOCSIN_METRICS_ADDR"))
    metrics_token = _parse_token(env.get("TOCSIN_METRICS_TOKEN", ""), "TOCSIN_METRICS_TOKEN")
    twilio = _twilio(env)
    webhook_timeout = _parse_timeout(
        env.get("TOCSIN_WEBHOOK_TIMEOUT", "10s"), "TOCSIN_WEBHOOK_TIMEOUT"
    )
    webhook_lease = _parse_timeout(env.get("TOCSIN_WEBHOOK_LEASE", "60s"), "TOCSIN_WEBHOOK_LEASE")
    if webhook_lease <= webhook_timeout:
        raise ConfigError("TOCSIN_WEBHOOK_LEASE must be longer than TOCSIN_WEBHOOK_TIMEOUT")
    return Config(
        metrics_addr=metrics_addr,
        metrics_enabled=metrics_enabled,
        metrics_token=metrics_token,
        redis_url=redis_url,
        data_dir=Path(env.get("TOCSIN_DATA_DIR", ".tocsin")).absolute(),
        http_addr=http_addr,
        public_url=public_url,
        public_url_set="TOCSIN_PUBLIC_URL" in env,
        api_token=_parse_token(env.get("TOCSIN_API_TOKEN", ""), "TOCSIN_API_TOKEN"),
        service_token=_parse_token(env.get("TOCSIN_SERVICE_TOKEN", ""), "TOCSIN_SERVICE_TOKEN"),
        twilio=twilio,
        sms_fallback=_sms_fallback(env, twilio),
        failover=_failover(env),
        smtp=_smtp(env),
        slack=_slack(env),
        webhook_secret=_webhook_secret(env.get("TOCSIN_WEBHOOK_SECRET", "")),
        grpc_addrs={name: address for name, (_, address) in peers.items()},
        grpc_targets={name: target for name, (target, _) in peers.items()},
        grpc_max_connection_age=_parse_interval(
            env.get("TOCSIN_GRPC_MAX_CONNECTION_AGE", "60s"), "TOCSIN_GRPC_MAX_CONNECTION_AGE"
        ),
        grpc_max_connection_age_grace=_parse_interval(
            env.get("TOCSIN_GRPC_MAX_CONNECTION_AGE_GRACE", "10m"),
            "TOCSIN_GRPC_MAX_CONNECTION_AGE_GRACE",
        ),
        retention=parse_duration_env(env.get("TOCSIN_RETENTION", "90d"), "TOCSIN_RETENTION"),
        listen_addr=parse_address(listen, "TOCSIN_LISTEN_ADDR") if listen else None,
        twilio_sends_per_second=_parse_rate(
            env.get("TOCSIN_TWILIO_SENDS_PER_SECOND", "1"), "TOCSIN_TWILIO_SENDS_PER_SECOND"
        ),
        number_send_interval=_parse_interval(
            env.get("TOCSIN_NUMBER_SEND_INTERVAL", "2s"), "TOCSIN_NUMBER_SEND_INTERVAL"
        ),
        events_api_rate_per_minute=_parse_count(
            env.get("TOCSIN_EVENTS_API_RATE", "600"), "TOCSIN_EVENTS_API_RATE"
        ),
        http_header_timeout=_parse_timeout(
            env.get("TOCSIN_HTTP_HEADER_TIMEOUT", "10s"), "TOCSIN_HTTP_HEADER_TIMEOUT"
        ),
        http_body_timeout=_parse_timeout(
            env.get("TOCSIN_HTTP_BODY_TIMEOUT", "30s"), "TOCSIN_HTTP_BODY_TIMEOUT"
        ),
        http_keepalive_timeout=_parse_timeout(
            env.get("TOCSIN_HTTP_KEEPALIVE_TIMEOUT", "5s"), "TOCSIN_HTTP_KEEPALIVE_TIMEOUT"
        ),
        webhook_timeout=webhook_timeout,
        webhook_lease=webhook_lease,
        http_max_connections=_parse_positive_count(
            env.get("TOCSIN_HTTP_MAX_CONNECTIONS", "1000"), "TOCSIN_HTTP_MAX_CONNECTIONS"
        ),
        grpc_max_concurrent_streams=_parse_positive_count(
            env.get("TOCSIN_GRPC_MAX_CONCURRENT_STREAMS", "1000"),
            "TOCSIN_GRPC_MAX_CONCURRENT_STREAMS",
        ),
        max_watch_streams=_parse_positive_count(
            env.get("TOCSIN_MAX_WATCH_STREAMS", "16"), "TOCSIN_MAX_WATCH_STREAMS"
        ),
        backlog_max_age=_parse_interval(
            env.get("TOCSIN_BACKLOG_MAX_AGE", "60s"), "TOCSIN_BACKLOG_MAX_AGE"
        ),
        backlog_max_events=_parse_count(
            env.get("TOCSIN_BACKLOG_MAX_EVENTS", "3000"), "TOCSIN_BACKLOG_MAX_EVENTS"
        ),
        database_url=_parse_database_url(env["TOCSIN_DATABASE_URL"], "TOCSIN_DATABASE_URL")
        if env.get("TOCSIN_DATABASE_URL")
        else None,
        archive_retention=_archive_retention(env),
        report_time_zone=_parse_zone(
            env.get("TOCSIN_REPORT_TIME_ZONE", "UTC"), "TOCSIN_REPORT_TIME_ZONE"
        ),
        twilio_status_callbacks=_parse_switch(
            env.get("TOCSIN_TWILIO_STATUS_CALLBACKS", "on"), "TOCSIN_TWILIO_STATUS_CALLBACKS"
        ),
        tls=_tls(env),
        allow_insecure_tokens=_allow_insecure(env),
        log_level=parse_log_level(env.get("TOCSIN_LOG_LEVEL", "INFO")),
        instance=parse_instance(env.get("TOCSIN_INSTANCE", "")),
        processes=parse_processes(env.get("TOCSIN_PROCESSES", "")),
        oidc=_oidc(env),
    )
