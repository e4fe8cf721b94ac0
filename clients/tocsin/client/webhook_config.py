"""The `webhooks` and `status_subscriptions` sections of a configuration file: parsing
(with `file:line` problems), comparing with what runs, and writing them back (export).

    webhooks:
      - id: ops-events
        url: https://hooks.example.com/tocsin
        secret_env: OPS_WEBHOOK_SECRET   # apply reads the signing secret from here
        event_types: [triggered, acknowledged, resolved]   # default: every type
        services: [payments-api]                           # default: every service
    status_subscriptions:
      - id: cfo-payments
        service: payments-api
        type: email            # user | email | slack_channel | webhook
        address: cfo@example.com

A file never holds a secret: `secret_env` names the environment variable `tocsin apply`
reads it from (absent: the running secret is kept, or one is generated for a new
webhook), and export writes the name back, never the value.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tocsin.v1 import webhooks_pb2

if TYPE_CHECKING:
    import yaml

    from tocsin.client.configfile import _Reader

EVENT_TYPE_NAMES = (
    "triggered",
    "alert_added",
    "acknowledged",
    "resolved",
    "snoozed",
    "unsnoozed",
    "reassigned",
    "note_added",
    "status_update",
    "escalated",
)
SUBSCRIBER_TYPES = {
    "user": webhooks_pb2.SUBSCRIBER_TYPE_USER,
    "email": webhooks_pb2.SUBSCRIBER_TYPE_EMAIL,
    "slack_channel": webhooks_pb2.SUBSCRIBER_TYPE_SLACK_CHANNEL,
    "webhook": webhooks_pb2.SUBSCRIBER_TYPE_WEBHOOK,
}
_SUBSCRIBER_NAMES = {v: k for k, v in SUBSCRIBER_TYPES.items()}


def secret_fingerprint(secret: str) -> str:
    """The first 12 hex digits of SHA-256(secret): how the servers show a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def _texts(r: _Reader, node: yaml.Node | None, path: str) -> list[str]:
    return [r.text(item, f"{path}[{i}]") for i, item in enumerate(r.sequence(node, path))]


def webhook(
    r: _Reader, node: yaml.Node, path: str, env: Mapping[str, str] | None = None
) -> webhooks_pb2.Webhook:
    env = os.environ if env is None else env
    m = r.mapping(
        node,
        path,
        {"id", "url", "secret_env", "event_types", "services", "allow_insecure_http"},
        {"id", "url"},
    )
    hook = webhooks_pb2.Webhook(
        id=r.text(m.get("id"), f"{path}.id"),
        url=r.text(m.get("url"), f"{path}.url"),
        secret_env=r.text(m.get("secret_env"), f"{path}.secret_env"),
        allow_insecure_http=r.boolean(m.get("allow_insecure_http"), f"{path}.allow_insecure_http"),
    )
    if hook.secret_env:
        hook.secret = env.get(hook.secret_env, "")
        if not hook.secret:
            r.problem(
                m.get("secret_env"),
                f"{path}.secret_env",
                f"${hook.secret_env} is not set (the webhook's signing secret)",
            )
    types = _texts(r, m.get("event_types"), f"{path}.event_types")
    for i, name in enumerate(types):
        if name not in EVENT_TYPE_NAMES:
            r.problem(
                r.sequence(m.get("event_types"), f"{path}.event_types")[i],
                f"{path}.event_types[{i}]",
                f"unknown event type {name!r}; expected one of {', '.join(EVENT_TYPE_NAMES)}",
            )
    hook.event_types.extend(sorted(set(types)))
    hook.service_ids.extend(sorted(set(_texts(r, m.get("services"), f"{path}.services"))))
    return hook


def status_subscription(r: _Reader, node: yaml.Node, path: str) -> webhooks_pb2.Subscription:
    m = r.mapping(
        node, path, {"id", "service", "type", "address"}, {"id", "service", "type", "address"}
    )
    kind = r.text(m.get("type"), f"{path}.type")
    if "type" in m and kind not in SUBSCRIBER_TYPES:
        r.problem(
            m["type"],
            f"{path}.type",
            f"expected one of {', '.join(SUBSCRIBER_TYPES)}, got {kind!r}",
        )
    return webhooks_pb2.Subscription(
        id=r.text(m.get("id"), f"{path}.id"),
        service_id=r.text(m.get("service"), f"{path}.service"),
        subscriber_type=SUBSCRIBER_TYPES.get(kind, webhooks_pb2.SUBSCRIBER_TYPE_UNSPECIFIED),
        address=r.text(m.get("address"), f"{path}.address"),
    )


def same_webhook(desired: webhooks_pb2.Webhook, current: webhooks_pb2.Webhook) -> bool:
    """Whether applying `desired` would change `current` (which has no secret, only its
    fingerprint; a desired webhook without a secret keeps the running one)."""
    shown = webhooks_pb2.Webhook()
    shown.CopyFrom(desired)
    shown.secret = ""
    shown.secret_fingerprint = (
        secret_fingerprint(desired.secret) if desired.secret else current.secret_fingerprint
    )
    return shown == current


def webhook_config(hook: webhooks_pb2.Webhook) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": hook.id, "url": hook.url}
    if hook.secret_env:
        entry["secret_env"] = hook.secret_env
    if hook.event_types:
        entry["event_types"] = list(hook.event_types)
    if hook.service_ids:
        entry["services"] = list(hook.service_ids)
    if hook.allow_insecure_http:
        entry["allow_insecure_http"] = True
    return entry


def subscription_config(sub: webhooks_pb2.Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "service": sub.service_id,
        "type": _SUBSCRIBER_NAMES.get(sub.subscriber_type, "unknown"),
        "address": sub.address,
    }
