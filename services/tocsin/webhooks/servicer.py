"""The WebhookService gRPC adapter (hosted by the notification process).

Every input is checked (violations named by request field) before anything is written; a
`validate_only` request writes nothing. Configuration changes are audited with the
secret left out (only its fingerprint), and no response carries a secret but the one a
new subscription was given (PutWebhookResponse.generated_secret, once).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tocsin.notification.channels import ChannelRegistry
from tocsin.notification.providers import ProviderError
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from tocsin.runtime.ids import id_violations
from tocsin.v1 import notification_pb2, webhooks_pb2, webhooks_pb2_grpc
from tocsin.webhooks import domain
from tocsin.webhooks.delivery import Deliverer
from tocsin.webhooks.store import WebhookStore, subscription_dest, webhook_dest

pb = webhooks_pb2
SERVICE_NAME = "tocsin.v1.WebhookService"
DEFAULT_DELIVERIES = 50
MAX_DELIVERIES = 500


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(
        self, store: WebhookStore, deliverer: Deliverer, channels: ChannelRegistry
    ) -> None:
        self.store = store
        self.deliverer = deliverer
        self.channels = channels
        self.audit: AuditLog | None = None

    async def _record(
        self, action: str, kind: str, object_id: str, before: Any, after: Any
    ) -> None:
        if self.audit is not None:
            await self.audit.record(action, kind, object_id, before, after)

    # -- webhook subscriptions -----------------------------------------------------------

    async def PutWebhook(
        self, request: pb.PutWebhookRequest, context: Any
    ) -> pb.PutWebhookResponse:
        current = (
            await self.store.webhook(request.webhook.id)
            if not id_violations(request.webhook.id, "webhook.id")
            else None
        )
        webhook = domain.validated_webhook(request.webhook, current)
        generated = ""
        if not webhook.secret:
            generated = domain.new_secret()
            webhook.secret = generated
        shown = domain.without_secret(webhook)
        if request.validate_only:
            return pb.PutWebhookResponse(webhook=shown)
        await self.store.put_webhook(webhook)
        before = domain.without_secret(current) if current is not None else None
        await self._record("webhook.put", "webhook", webhook.id, before, shown)
        return pb.PutWebhookResponse(webhook=shown, generated_secret=generated)

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Any
    ) -> pb.ListWebhooksResponse:
        hooks = await self.store.webhooks()
        return pb.ListWebhooksResponse(
            webhooks=[domain.without_secret(hooks[i]) for i in sorted(hooks)]
        )

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Any
    ) -> pb.DeleteWebhookResponse:
        current = await self._webhook(request.id)
        await self.store.delete_webhook(request.id)
        await self._record(
            "webhook.delete", "webhook", request.id, domain.without_secret(current), None
        )
        return pb.DeleteWebhookResponse()

    async def TestWebhook(
        self, request: pb.TestWebhookRequest, context: Any
    ) -> pb.TestWebhookResponse:
        webhook = await self._webhook(request.id)
        test_id = f"test-{uuid.uuid4().hex[:16]}"
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = domain.render_test(webhook.id, at, test_id)
        try:
            status = await self.deliverer.post_signed(webhook, test_id, body)
        except ProviderError as error:
            return pb.TestWebhookResponse(
                ok=False, http_status=error.http_status or 0, error=str(error), event_id=test_id
            )
        return pb.TestWebhookResponse(ok=True, http_status=status, event_id=test_id)

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Any
    ) -> pb.ListWebhookDeliveriesResponse:
        if request.limit < 0 or request.limit > MAX_DELIVERIES:
            raise InvalidArgument.one("limit", f"must be between 0 and {MAX_DELIVERIES}")
        limit = request.limit or DEFAULT_DELIVERIES
        if await self.store.webhook(request.id) is not None:
            dest = webhook_dest(request.id)
        elif await self.store.subscription(request.id) is not None:
            dest = subscription_dest(request.id)
        else:
            raise NotFound(f"no webhook or subscription {request.id!r}")
        return pb.ListWebhookDeliveriesResponse(
            deliveries=await self.store.deliveries(dest, limit),
            pending=await self.store.pending(dest),
        )

    async def _webhook(self, webhook_id: str) -> pb.Webhook:
        if violations := id_violations(webhook_id, "id"):
            raise InvalidArgument(violations)
        webhook = await self.store.webhook(webhook_id)
        if webhook is None:
            raise NotFound(f"no webhook {webhook_id!r}")
        return webhook

    # -- stakeholder subscriptions -------------------------------------------------------

    async def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> pb.SubscribeResponse:
        sub = domain.validated_subscription(request.subscription)
        kind = sub.subscriber_type
        if kind == pb.SUBSCRIBER_TYPE_EMAIL:
            email = self.channels.find(notification_pb2.CONTACT_METHOD_TYPE_EMAIL)
            assert email is not None  # the registry always has email (SMTP or console)
            sub.address = email.normalize_address(sub.address, "subscription.address")
        elif kind == pb.SUBSCRIBER_TYPE_SLACK_CHANNEL:
            self._require(notification_pb2.CONTACT_METHOD_TYPE_SLACK, "TOCSIN_SLACK_BOT_TOKEN")
        elif kind == pb.SUBSCRIBER_TYPE_WEBHOOK:
            self._require(notification_pb2.CONTACT_METHOD_TYPE_WEBHOOK, "TOCSIN_WEBHOOK_SECRET")
        if request.validate_only:
            return pb.SubscribeResponse(subscription=sub)
        current = await self.store.subscription(sub.id)
        await self.store.put_subscription(sub, self.deliverer.clock.now_ms())
        await self._record("subscription.put", "subscription", sub.id, current, sub)
        return pb.SubscribeResponse(subscription=sub)

    def _require(self, channel_type: int, variable: str) -> None:
        if self.channels.find(channel_type) is None:
            raise FailedPrecondition(
                f"subscription.subscriber_type: this channel is off (set {variable})"
            )

    async def Unsubscribe(
        self, request: pb.UnsubscribeRequest, context: Any
    ) -> pb.UnsubscribeResponse:
        if violations := id_violations(request.id, "id"):
            raise InvalidArgument(violations)
        current = await self.store.subscription(request.id)
        if current is None:
            raise NotFound(f"no subscription {request.id!r}")
        await self.store.delete_subscription(request.id, self.deliverer.clock.now_ms())
        await self._record("subscription.delete", "subscription", request.id, current, None)
        return pb.UnsubscribeResponse()

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Any
    ) -> pb.ListSubscriptionsResponse:
        subs = await self.store.subscriptions(request.service_id, request.incident_id)
        return pb.ListSubscriptionsResponse(subscriptions=[subs[i] for i in sorted(subs)])
