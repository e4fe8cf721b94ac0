"""Incoming alerts made storable: an alert that can be understood pages.

Senders format alerts every which way (multi-line templates, labels longer than anyone
planned, severities in capitals, links left empty by a template), and a sender treats a
refusal as final: the alert is dropped and nobody is paged. So Trigger and each
TriggerBatch item are normalised here, on the server, before they are checked, and every
sender benefits (gRPC, the Events API, the Alertmanager webhook):

- summary, source, component, group, class: a text holding control characters (newline,
  tab, ESC, U+2028, ...) has each run of whitespace and control characters folded into
  one space, and is stripped. A text over its limit (summary 1,024 characters, the others
  1,024) is cut to the limit, ending in "…", and the full text is kept in the alert's
  details under `<field>_full` (`summary_full`, `source_full`, ...; at most
  MAX_KEPT_CHARS characters; it replaces a details key of that name).
- dedup_key: control characters become spaces one for one (so keys stay distinct); a key
  over 255 characters becomes its first 238 characters, "…" and 16 hex digits of its
  SHA-256, so the same long key always finds the same incident (Acknowledge and Resolve
  by key apply the same rule); the full key is kept as `dedup_key_full`.
- severity: a number this version does not know is critical (an alert routed to paging
  pages); the number is kept as `severity_original`.
- occurred_at before 1970 or after 9999: dropped (received_at remains); its seconds are
  kept as `occurred_at_original`.
- links: control characters are removed from an href and spaces escaped; an href without
  a scheme gets `https://` when it starts with a host name; an href that is still not an
  http(s) URL with a host, or is over 2,048 characters, is dropped, as are links past the
  50th; their hrefs are listed in `links_dropped`. Link texts are folded and cut like the
  fields above.
- actor: the display name is folded and cut at 255 characters; an unknown channel is API.

What remains refused (INVALID_ARGUMENT naming the field, nothing written) is what cannot
be processed: a blank summary, details over MAX_DETAILS_BYTES encoded or nested deeper
than MAX_DETAILS_DEPTH (tocsin.client.limits), a malformed actor user id, an unknown
service or integration key.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

from google.protobuf.struct_pb2 import Struct

from tocsin.incidents.validation import (
    MAX_DEDUP_KEY,
    MAX_DISPLAY,
    MAX_LABEL,
    MAX_LINKS,
    MAX_SUMMARY,
    MAX_TIMESTAMP_S,
    MAX_URL,
)
from tocsin.v1 import common_pb2, incidents_pb2

MAX_KEPT_CHARS = 32 * 1024
"""The most of an original text kept in details when its field was cut."""
MAX_DROPPED_LINKS = 10
_DROPPED_HREF_CHARS = 256
_SEVERITIES = frozenset(common_pb2.Severity.values())
_CHANNELS = frozenset(common_pb2.Channel.values())

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FOLD = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_HOST_START = re.compile(r"(localhost|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)(:[0-9]+)?([/?#]|$)")
_HASH_CHARS = 16


def one_line(text: str) -> str:
    """`text` with runs of whitespace and control characters folded into one space, if it
    holds any control character; unchanged otherwise (deliberate double spaces stay)."""
    if _CONTROL.search(text) is None:
        return text
    return _FOLD.sub(" ", text).strip()


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and "…"."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dedup_key(key: str) -> str:
    """The dedup key an incident is filed under (see the module docstring)."""
    if _CONTROL.search(key) is not None:
        key = _CONTROL.sub(" ", key)
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:_HASH_CHARS]
    return f"{key[: MAX_DEDUP_KEY - _HASH_CHARS - 1]}…{digest}"


def actor(actor: common_pb2.Actor) -> common_pb2.Actor:
    """`actor` (a copy) with its display name on one line and an unknown channel as API."""
    result = common_pb2.Actor()
    result.CopyFrom(actor)
    result.display = cut(one_line(result.display), MAX_DISPLAY)
    if result.channel not in _CHANNELS or result.channel == common_pb2.CHANNEL_UNSPECIFIED:
        result.channel = common_pb2.CHANNEL_API
    return result


def alert(alert: incidents_pb2.Alert, key: str) -> str:
    """Normalise `alert` in place (its details already checked); the dedup key to use."""
    kept = alert.details
    _text(alert, "summary", MAX_SUMMARY, kept)
    for name in ("source", "component", "group", "class"):
        _text(alert, name, MAX_LABEL, kept)
    normalized_key = dedup_key(key)
    if len(key) > MAX_DEDUP_KEY:
        kept["dedup_key_full"] = cut(key, MAX_KEPT_CHARS)
    if alert.severity not in _SEVERITIES:
        kept["severity_original"] = alert.severity
        alert.severity = common_pb2.SEVERITY_CRITICAL
    if alert.HasField("occurred_at") and not (
        0 <= alert.occurred_at.seconds <= MAX_TIMESTAMP_S
        and 0 <= alert.occurred_at.nanos < 1_000_000_000
    ):
        kept["occurred_at_original"] = alert.occurred_at.seconds
        alert.ClearField("occurred_at")
    _links(alert, kept)
    return normalized_key


def _text(alert: incidents_pb2.Alert, name: str, limit: int, kept: Struct) -> None:
    original: str = getattr(alert, name)
    value = cut(one_line(original), limit)
    if value is original:
        return
    setattr(alert, name, value)
    if len(original) > limit:
        kept[f"{name}_full"] = cut(original, MAX_KEPT_CHARS)


def href(text: str) -> str | None:
    """`text` as an http(s) link, or None when it cannot be one."""
    if _CONTROL.search(text) is not None:
        text = _CONTROL.sub("", text)
    text = text.strip().replace(" ", "%20")
    if not text or len(text) > MAX_URL:
        return None
    if text.startswith("//"):
        text = "https:" + text
    elif "://" not in text and _HOST_START.match(text):
        text = "https://" + text
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return text if len(text) <= MAX_URL else None


def _links(alert: incidents_pb2.Alert, kept: Struct) -> None:
    if not alert.links:
        return
    links: list[tuple[str, str]] = []
    dropped: list[str] = []
    changed = False
    for link in alert.links:
        target = href(link.href)
        if target is None or len(links) == MAX_LINKS:
            dropped.append(cut(link.href, _DROPPED_HREF_CHARS))
            continue
        text = cut(one_line(link.text), MAX_LABEL)
        changed = changed or target != link.href or text != link.text
        links.append((target, text))
    if dropped or changed:
        del alert.links[:]
        for target, text in links:
            alert.links.add(href=target, text=text)
    if dropped:
        kept.get_or_create_list("links_dropped").extend(dropped[:MAX_DROPPED_LINKS])
