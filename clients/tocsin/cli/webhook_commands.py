"""`tocsin webhooks ...` (outgoing webhook subscriptions), `tocsin status-update`,
`tocsin subscribe` / `unsubscribe` / `subscriptions` (stakeholders of status updates).

A webhook's URL is shown as scheme and host only (its path or query may carry a token),
and its secret never: `webhooks add` prints a generated secret once, and `list` shows a
fingerprint (the first 12 hex digits of its SHA-256) to tell secrets apart.
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import urlsplit

from tocsin.cli.common import add_json_flag, incident_id, incident_number, run_with_client
from tocsin.cli.output import print_json, print_table
from tocsin.client.client import TocsinClient
from tocsin.v1 import incidents_pb2, webhooks_pb2

pb = webhooks_pb2
OUTCOMES = {
    pb.DELIVERY_OUTCOME_DELIVERED: "delivered",
    pb.DELIVERY_OUTCOME_RETRYING: "retrying",
    pb.DELIVERY_OUTCOME_GAVE_UP: "gave_up",
}
SUBSCRIBERS = {
    "user": pb.SUBSCRIBER_TYPE_USER,
    "email": pb.SUBSCRIBER_TYPE_EMAIL,
    "slack-channel": pb.SUBSCRIBER_TYPE_SLACK_CHANNEL,
    "webhook": pb.SUBSCRIBER_TYPE_WEBHOOK,
}
SUBSCRIBER_NAMES = {v: k for k, v in SUBSCRIBERS.items()}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks = commands.add_parser("webhooks", help="outgoing webhook subscriptions")
    sub = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="every subscription (no secrets)")
    add_json_flag(listing)
    listing.set_defaults(run=_list)
    add = sub.add_parser("add", help="create or replace a subscription")
    add.add_argument("id")
    add.add_argument("url", help="https:// (http:// to loopback, or with --allow-insecure-http)")
    add.add_argument(
        "--event",
        action="append",
        default=[],
        dest="events",
        help="an event type to send (repeatable; default every type)",
    )
    add.add_argument(
        "--service", action="append", default=[], dest="services", help="repeatable; default all"
    )
    add.add_argument(
        "--secret-env",
        default="",
        help="read the signing secret from this environment variable (default: keep the "
        "current secret, or generate one and print it once)",
    )
    add.add_argument("--allow-insecure-http", action="store_true")
    add_json_flag(add)
    add.set_defaults(run=_add)
    remove = sub.add_parser("remove", help="remove a subscription and what it still had to send")
    remove.add_argument("id")
    remove.set_defaults(run=_remove)
    test = sub.add_parser("test", help="send one signed test event now")
    test.add_argument("id")
    add_json_flag(test)
    test.set_defaults(run=_test)
    deliveries = sub.add_parser("deliveries", help="a subscription's delivery log, newest first")
    deliveries.add_argument("id", help="webhook (or stakeholder subscription) id")
    deliveries.add_argument("--limit", type=int, default=50)
    add_json_flag(deliveries)
    deliveries.set_defaults(run=_deliveries)

    update = commands.add_parser(
        "status-update", help="post a status update to an incident's stakeholders"
    )
    update.add_argument("id", type=incident_number, help="incident number (18 or #18)")
    update.add_argument("text")
    update.set_defaults(run=_status_update)

    subscribe = commands.add_parser(
        "subscribe", help="send a service's or an incident's status updates to someone"
    )
    target = subscribe.add_mutually_exclusive_group(required=True)
    target.add_argument("--service", default="", help="every incident of this service")
    target.add_argument("--incident", type=incident_number, default=None, help="one incident")
    subscribe.add_argument("type", choices=sorted(SUBSCRIBERS))
    subscribe.add_argument("address", help="user id, email address, Slack channel id or URL")
    subscribe.add_argument("--id", default="", help="the subscription's id (default generated)")
    add_json_flag(subscribe)
    subscribe.set_defaults(run=_subscribe)
    unsubscribe = commands.add_parser("unsubscribe", help="remove a stakeholder subscription")
    unsubscribe.add_argument("id")
    unsubscribe.set_defaults(run=_unsubscribe)
    subscriptions = commands.add_parser("subscriptions", help="list stakeholder subscriptions")
    subscriptions.add_argument("--service", default="")
    subscriptions.add_argument("--incident", type=incident_number, default=None)
    add_json_flag(subscriptions)
    subscriptions.set_defaults(run=_subscriptions)


def shown_url(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/..."


def webhook_json(webhook: webhooks_pb2.Webhook) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "url": shown_url(webhook.url),
        "event_types": list(webhook.event_types),
        "service_ids": list(webhook.service_ids),
        "secret_fingerprint": webhook.secret_fingerprint,
        "allow_insecure_http": webhook.allow_insecure_http,
    }


def delivery_json(delivery: webhooks_pb2.Delivery) -> dict[str, Any]:
    out: dict[str, Any] = {
        "at": delivery.at.ToJsonString(),
        "event_id": delivery.event_id,
        "incident_id": delivery.incident_id,
        "event_type": delivery.event_type,
        "outcome": OUTCOMES.get(delivery.outcome, "unknown"),
        "attempt": delivery.attempt,
        "http_status": delivery.http_status,
        "error": delivery.error,
    }
    if delivery.HasField("next_attempt_at"):
        out["next_attempt_at"] = delivery.next_attempt_at.ToJsonString()
    return out


def subscription_json(sub: webhooks_pb2.Subscription) -> dict[str, Any]:
    address = sub.address
    if sub.subscriber_type == pb.SUBSCRIBER_TYPE_WEBHOOK:
        address = shown_url(address)
    return {
        "id": sub.id,
        "service_id": sub.service_id,
        "incident_id": sub.incident_id,
        "type": SUBSCRIBER_NAMES.get(sub.subscriber_type, "unknown"),
        "address": address,
    }


def _list(args: argparse.Namespace) -> int:
    reply = run_with_client(lambda c: c.webhooks.ListWebhooks(pb.ListWebhooksRequest()))
    rows = [webhook_json(w) for w in reply.webhooks]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ["ID", "URL", "EVENTS", "SERVICES", "SECRET"],
        [
            [
                r["id"],
                r["url"],
                ",".join(r["event_types"]) or "all",
                ",".join(r["service_ids"]) or "all",
                r["secret_fingerprint"],
            ]
            for r in rows
        ],
    )
    return 0


def _add(args: argparse.Namespace) -> int:
    secret = ""
    if args.secret_env:
        secret = os.environ.get(args.secret_env, "")
        if not secret:
            raise SystemExit(f"tocsin webhooks add: ${args.secret_env} is not set")
    webhook = pb.Webhook(
        id=args.id,
        url=args.url,
        secret=secret,
        event_types=args.events,
        service_ids=args.services,
        allow_insecure_http=args.allow_insecure_http,
        secret_env=args.secret_env,
    )

    async def put(client: TocsinClient) -> webhooks_pb2.PutWebhookResponse:
        return await client.webhooks.PutWebhook(pb.PutWebhookRequest(webhook=webhook))

    reply = run_with_client(put)
    if args.json:
        print_json({**webhook_json(reply.webhook), "generated_secret": reply.generated_secret})
        return 0
    print(f"Webhook {reply.webhook.id} -> {shown_url(reply.webhook.url)}")
    if reply.generated_secret:
        print(f"Signing secret (shown once, keep it): {reply.generated_secret}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    run_with_client(lambda c: c.webhooks.DeleteWebhook(pb.DeleteWebhookRequest(id=args.id)))
    print(f"Removed webhook {args.id}")
    return 0


def _test(args: argparse.Namespace) -> int:
    reply = run_with_client(lambda c: c.webhooks.TestWebhook(pb.TestWebhookRequest(id=args.id)))
    if args.json:
        print_json(
            {
                "ok": reply.ok,
                "http_status": reply.http_status,
                "error": reply.error,
                "event_id": reply.event_id,
            }
        )
    elif reply.ok:
        print(f"Delivered test event {reply.event_id} (HTTP {reply.http_status})")
    else:
        print(f"Test event {reply.event_id} failed: {reply.error}")
    return 0 if reply.ok else 1


def _deliveries(args: argparse.Namespace) -> int:
    request = pb.ListWebhookDeliveriesRequest(id=args.id, limit=args.limit)
    reply = run_with_client(lambda c: c.webhooks.ListWebhookDeliveries(request))
    rows = [delivery_json(d) for d in reply.deliveries]
    if args.json:
        print_json({"pending": reply.pending, "deliveries": rows})
        return 0
    print_table(
        ["AT", "INCIDENT", "EVENT", "OUTCOME", "TRY", "HTTP", "EVENT ID", "ERROR"],
        [
            [
                r["at"],
                r["incident_id"],
                r["event_type"],
                r["outcome"],
                r["attempt"],
                r["http_status"] or "-",
                r["event_id"],
                r["error"],
            ]
            for r in rows
        ],
    )
    print(f"{reply.pending} event(s) waiting")
    return 0


def _status_update(args: argparse.Namespace) -> int:
    async def post(client: TocsinClient) -> None:
        request = incidents_pb2.PostStatusUpdateRequest(
            incident_id=await incident_id(client, args.id), text=args.text
        )
        await client.incidents.PostStatusUpdate(request)

    run_with_client(post)
    print(f"Status update posted on {args.id}")
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    sub = pb.Subscription(
        id=args.id,
        service_id=args.service,
        subscriber_type=SUBSCRIBERS[args.type],
        address=args.address,
    )

    async def subscribe(client: TocsinClient) -> pb.SubscribeResponse:
        if args.incident:
            sub.incident_id = await incident_id(client, args.incident)
        return await client.webhooks.Subscribe(pb.SubscribeRequest(subscription=sub))

    reply = run_with_client(subscribe)
    if args.json:
        print_json(subscription_json(reply.subscription))
    else:
        where = args.incident or args.service
        print(f"Subscribed {args.type} {args.address} to {where} ({reply.subscription.id})")
    return 0


def _unsubscribe(args: argparse.Namespace) -> int:
    run_with_client(lambda c: c.webhooks.Unsubscribe(pb.UnsubscribeRequest(id=args.id)))
    print(f"Removed subscription {args.id}")
    return 0


def _subscriptions(args: argparse.Namespace) -> int:
    async def listing(client: TocsinClient) -> pb.ListSubscriptionsResponse:
        wanted = await incident_id(client, args.incident) if args.incident else ""
        request = pb.ListSubscriptionsRequest(service_id=args.service, incident_id=wanted)
        return await client.webhooks.ListSubscriptions(request)

    reply = run_with_client(listing)
    rows = [subscription_json(s) for s in reply.subscriptions]
    if args.json:
        print_json(rows)
        return 0
    print_table(
        ["ID", "OF", "TYPE", "ADDRESS"],
        [
            [
                r["id"],
                f"#{r['incident_id']}" if r["incident_id"] else r["service_id"],
                r["type"],
                r["address"],
            ]
            for r in rows
        ],
    )
    return 0
