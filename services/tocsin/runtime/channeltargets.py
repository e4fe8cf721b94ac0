"""Channels as escalation targets: the id a channel is paged under.

An escalation level may page a Slack channel (`slack_channel`) or a Teams channel
(`teams_channel`) besides users and schedules. Both services name such a target by one
id, made here, so escalation's idempotency keys, page-out reports and timeline and
notification's cycle and attempt records stay the same as for a person: `slack_channel:`
and the lower-cased channel id, or `teams_channel:` and a hash of the webhook URL (the URL
is a credential: it never appears in an id, a log line or the timeline). The `:` keeps
these ids apart from every user id (runtime/ids.py allows none).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from tocsin.client.targets import is_loopback_host
from tocsin.runtime.errors import FieldViolation

SLACK_CHANNEL = "slack_channel"
TEAMS_CHANNEL = "teams_channel"
KINDS = (SLACK_CHANNEL, TEAMS_CHANNEL)
_SLACK_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,20}")


def target_id(kind: str, address: str) -> str:
    """The id a channel target is paged under (see the module docstring)."""
    if kind == SLACK_CHANNEL:
        return f"{SLACK_CHANNEL}:{address.strip().lower()}"
    if kind == TEAMS_CHANNEL:
        digest = hashlib.sha256(address.strip().encode()).hexdigest()[:16]
        return f"{TEAMS_CHANNEL}:{digest}"
    raise ValueError(f"not a channel target kind: {kind!r}")


def is_target_id(user_id: str) -> bool:
    return user_id.partition(":")[0] in KINDS and ":" in user_id


def describe(user_id: str) -> str:
    """How the timeline names a target id: `Slack channel C024BE91L`, `Teams channel`."""
    kind, _, rest = user_id.partition(":")
    if kind == SLACK_CHANNEL:
        return f"Slack channel {rest.upper()}"
    if kind == TEAMS_CHANNEL:
        return f"Teams channel {rest[:6]}"
    return user_id


def violations(kind: str, address: str, field: str) -> list[FieldViolation]:
    """What is wrong with a channel target's address ([] if nothing)."""
    if kind == SLACK_CHANNEL:
        if not _SLACK_CHANNEL_ID.fullmatch(address.strip().upper()):
            return [FieldViolation(field, "must be a Slack channel id like C024BE91L")]
        return []
    try:
        parts = urlsplit(address.strip())
        host = parts.hostname or ""
    except ValueError:
        host, parts = "", urlsplit("")
    secure = parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host))
    if not host or not secure or len(address) > 2048 or any(c.isspace() for c in address.strip()):
        # (The URL is not repeated: it carries Teams' token.)
        return [FieldViolation(field, "must be a Teams webhook URL (https://)")]
    return []
