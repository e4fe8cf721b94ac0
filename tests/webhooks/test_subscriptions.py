"""Outgoing webhook subscriptions and stakeholder status updates, in process: real
incidents and notification servers, real Redis (standalone and a 3-master Cluster), a real
HTTP receiver and a real SMTP server (aiosmtpd); a ManualClock, so retries come due when
the test moves time, and the test drives the consumer and the deliverer itself."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from tests.metrics import sample
from tests.notification.smtp_server import SmtpRecorder
from tests.notification.stack import ALICE, SMS, PagingStack
from tests.webhooks.conftest import CHANNEL_SECRET, SECRET
from tests.webhooks.receiver import Receiver
from tocsin.notification.server import delivery_options
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.metrics import render, setup_metrics
from tocsin.v1 import incidents_pb2 as ipb
from tocsin.v1 import notification_pb2 as npb
from tocsin.v1 import webhooks_pb2 as pb
from tocsin.webhooks.store import BUSY_KEY, webhook_dest


async def pump(stack: PagingStack) -> int:
    """Queue what the stream holds for the subscriptions, then deliver what is due."""
    webhooks = stack.parts.webhooks
    await webhooks.consumer.drain_once()
    return await webhooks.deliverer.deliver_due()


async def put_webhook(stack: PagingStack, url: str, **fields: Any) -> pb.PutWebhookResponse:
    return await stack.client.webhooks.PutWebhook(
        pb.PutWebhookRequest(
            webhook=pb.Webhook(url=url, **{"id": "ops", "secret": SECRET, **fields})
        )
    )


async def incident_lifecycle(stack: PagingStack, summary: str = "disk full on db1") -> str:
    """Every kind of event on one incident: triggered, alert added, acknowledged, note,
    status update, reassigned, resolved."""
    await stack.add_user("bob", "+15005550099", [(SMS, 600)])
    incident_id = await stack.trigger(summary, mirror=False)
    await stack.client.incidents.Trigger(
        ipb.TriggerRequest(service_id="payments-api", summary=summary, dedup_key=summary)
    )
    await stack.client.incidents.AppendTimeline(  # what escalation writes when a level pages
        ipb.AppendTimelineRequest(
            incident_id=incident_id,
            entry=ipb.TimelineEntry(
                kind=ipb.TIMELINE_KIND_ESCALATED, message="Level 1 paged: alice"
            ),
            idempotency_key=f"{incident_id}/0/0",
        )
    )
    await stack.client.incidents.Acknowledge(ipb.AcknowledgeRequest(incident_id=incident_id))
    await stack.client.incidents.AddNote(
        ipb.AddNoteRequest(incident_id=incident_id, text="looking")
    )
    await stack.client.incidents.PostStatusUpdate(
        ipb.PostStatusUpdateRequest(
            incident_id=incident_id, text="payments degraded, fix in 10 min"
        )
    )
    await stack.client.incidents.Reassign(
        ipb.ReassignRequest(incident_id=incident_id, assignment=ipb.Assignment(user_id="bob"))
    )
    await stack.client.incidents.Resolve(ipb.ResolveRequest(incident_id=incident_id))
    return incident_id


LIFECYCLE = [
    "incident.triggered",
    "incident.alert_added",
    "incident.escalated",
    "incident.acknowledged",
    "incident.note_added",
    "incident.status_update",
    "incident.reassigned",
    "incident.resolved",
]


async def test_every_event_arrives_once_in_order_signed_after_two_500s(
    stack: PagingStack, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    setup_metrics("test")

    def counted(outcome: str) -> float:
        labels = {"kind": "wh", "outcome": outcome}
        return sample(render().decode(), "tocsin_webhook_deliveries_total", labels)

    before = {outcome: counted(outcome) for outcome in ("retrying", "delivered")}
    created = await put_webhook(stack, receiver.url)
    assert created.webhook.secret == "" and created.generated_secret == ""
    assert len(created.webhook.secret_fingerprint) == 12
    incident_id = await incident_lifecycle(stack)
    receiver.answers += [500, 500]

    await pump(stack)  # the first attempt: 500
    assert [r["status"] for r in receiver.requests] == [500]
    await pump(stack)  # not due yet: nothing sent
    assert len(receiver.requests) == 1
    stack.clock.advance(seconds=10)
    await pump(stack)  # the second: 500 again
    assert [r["status"] for r in receiver.requests] == [500, 500]
    stack.clock.advance(seconds=30)
    await pump(stack)  # then everything, in order

    bodies = receiver.accepted()
    assert [b["type"] for b in bodies] == LIFECYCLE
    assert all(r["verified"] for r in receiver.requests)
    assert all(r["webhook_id"] == "ops" for r in receiver.requests)
    assert {b["incident"]["id"] for b in bodies} == {incident_id}
    assert bodies[2]["text"] == "Level 1 paged: alice"
    assert bodies[5]["text"] == "payments degraded, fix in 10 min"
    assert bodies[-1]["incident"]["status"] == "resolved"
    # The event id is the same in the header and the body, on every attempt.
    assert all(r["event_id"] == r["body"]["event_id"] for r in receiver.requests)
    assert receiver.requests[0]["event_id"] == receiver.requests[2]["event_id"]

    log = await stack.client.webhooks.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(id="ops")
    )
    outcomes = [
        (d.event_type, d.outcome, d.attempt, d.http_status) for d in reversed(log.deliveries)
    ]
    assert outcomes[:3] == [
        ("triggered", pb.DELIVERY_OUTCOME_RETRYING, 1, 500),
        ("triggered", pb.DELIVERY_OUTCOME_RETRYING, 2, 500),
        ("triggered", pb.DELIVERY_OUTCOME_DELIVERED, 3, 200),
    ]
    assert [o[1] for o in outcomes[2:]] == [pb.DELIVERY_OUTCOME_DELIVERED] * len(LIFECYCLE)
    assert log.pending == 0
    assert counted("retrying") - before["retrying"] == 2
    assert counted("delivered") - before["delivered"] == len(LIFECYCLE)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tocsin"))
    assert SECRET not in logged and "tok-5678" not in logged


async def test_a_stream_entry_read_again_is_queued_once(
    stack: PagingStack, receiver: Receiver
) -> None:
    await put_webhook(stack, receiver.url)
    incident_id = await stack.trigger(mirror=False)
    webhooks = stack.parts.webhooks
    events: list[ipb.IncidentEvent] = []
    handle = webhooks.router.handle

    async def recording(event: ipb.IncidentEvent) -> None:
        events.append(event)
        await handle(event)

    webhooks.consumer.handler = recording
    await webhooks.consumer.drain_once()
    for event in events:  # as after a crash before XACK: the same entries again
        await webhooks.router.handle(event)
    await webhooks.deliverer.deliver_due()
    assert [r["body"]["type"] for r in receiver.requests] == ["incident.triggered"]
    assert receiver.requests[0]["body"]["incident"]["id"] == incident_id


async def test_a_failing_incident_holds_back_only_itself_and_a_dead_receiver_only_its_subscription(
    stack: PagingStack, receiver: Receiver
) -> None:
    await put_webhook(stack, receiver.url)
    await stack.client.webhooks.PutWebhook(
        pb.PutWebhookRequest(
            webhook=pb.Webhook(id="dead", url="http://127.0.0.1:9/nobody", secret=SECRET)
        )
    )
    first = await stack.trigger("disk full on db1", mirror=False)
    second = await stack.trigger("disk full on db2", mirror=False)
    receiver.fail_when = lambda body: 503 if body["incident"]["id"] == first else None
    await stack.client.incidents.Acknowledge(ipb.AcknowledgeRequest(incident_id=second))
    await pump(stack)
    delivered = [(b["incident"]["id"], b["type"]) for b in receiver.accepted()]
    assert delivered == [(second, "incident.triggered"), (second, "incident.acknowledged")]
    dead = await stack.client.webhooks.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(id="dead")
    )
    assert {d.outcome for d in dead.deliveries} == {pb.DELIVERY_OUTCOME_RETRYING}
    assert dead.pending == 3
    assert "127.0.0.1" in dead.deliveries[0].error and "nobody" not in dead.deliveries[0].error
    # The failing incident's events wait in order and go once the receiver recovers.
    await stack.client.incidents.Resolve(ipb.ResolveRequest(incident_id=first))
    receiver.fail_when = lambda body: None
    stack.clock.advance(seconds=10)
    await pump(stack)
    assert [(b["incident"]["id"], b["type"]) for b in receiver.accepted()][2:] == [
        (first, "incident.triggered"),
        (first, "incident.resolved"),
    ]


async def test_an_event_failing_for_a_day_is_given_up_and_the_next_goes(
    stack: PagingStack, receiver: Receiver
) -> None:
    await put_webhook(stack, receiver.url, event_types=["triggered", "resolved"])
    incident_id = await stack.trigger(mirror=False)
    await stack.client.incidents.Acknowledge(ipb.AcknowledgeRequest(incident_id=incident_id))
    await stack.client.incidents.Resolve(ipb.ResolveRequest(incident_id=incident_id))
    receiver.fail_when = lambda body: 500 if body["type"] == "incident.triggered" else None
    attempts = 0
    for _ in range(100):
        await pump(stack)
        attempts = len(receiver.requests)
        if receiver.accepted():
            break
        stack.clock.advance(minutes=30)
    assert [b["type"] for b in receiver.accepted()] == ["incident.resolved"]  # ack filtered out
    assert attempts > 10  # retried for hours, every half hour in the end
    log = await stack.client.webhooks.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(id="ops")
    )
    assert log.deliveries[1].outcome == pb.DELIVERY_OUTCOME_GAVE_UP


async def test_webhooks_are_checked_listed_tested_and_removed(
    stack: PagingStack, receiver: Receiver
) -> None:
    bad = [
        (pb.Webhook(id="x", url="http://example.com/hook", secret=SECRET), "webhook.url"),
        (pb.Webhook(id="x", url=receiver.url, secret="short"), "webhook.secret"),
        (pb.Webhook(id="x", url=receiver.url, event_types=["paged"]), "webhook.event_types[0]"),
        (pb.Webhook(id="bad id", url=receiver.url), "webhook.id"),
    ]
    for webhook, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.client.webhooks.PutWebhook(pb.PutWebhookRequest(webhook=webhook))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (refused.value.details() or "")
    # http beyond loopback only when explicitly allowed
    allowed = await stack.client.webhooks.PutWebhook(
        pb.PutWebhookRequest(
            webhook=pb.Webhook(id="lan", url="http://10.1.2.3/hook", allow_insecure_http=True),
            validate_only=True,
        )
    )
    assert allowed.webhook.url == "http://10.1.2.3/hook"
    generated = await stack.client.webhooks.PutWebhook(
        pb.PutWebhookRequest(webhook=pb.Webhook(id="gen", url=receiver.url))
    )
    assert generated.generated_secret.startswith("whsec_")
    receiver.secret = generated.generated_secret
    test = await stack.client.webhooks.TestWebhook(pb.TestWebhookRequest(id="gen"))
    assert test.ok and test.http_status == 200
    assert receiver.requests[-1]["verified"] and receiver.requests[-1]["body"]["type"] == "test"
    # Replacing without a secret keeps the secret.
    await stack.client.webhooks.PutWebhook(
        pb.PutWebhookRequest(
            webhook=pb.Webhook(id="gen", url=receiver.url, service_ids=["payments-api"])
        )
    )
    listed = await stack.client.webhooks.ListWebhooks(pb.ListWebhooksRequest())
    assert [(w.id, list(w.service_ids), w.secret) for w in listed.webhooks] == [
        ("gen", ["payments-api"], "")
    ]
    assert listed.webhooks[0].secret_fingerprint == generated.webhook.secret_fingerprint
    await stack.client.incidents.Trigger(
        ipb.TriggerRequest(service_id="payments-api", summary="s", dedup_key="s")
    )
    await stack.parts.webhooks.consumer.drain_once()
    await stack.client.webhooks.DeleteWebhook(pb.DeleteWebhookRequest(id="gen"))
    assert not await stack.redis.exists(f"tocsin:{{{webhook_dest('gen')}}}:due")
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stack.client.webhooks.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(id="gen"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_status_update_reaches_email_user_and_webhook_subscribers_and_the_timeline(
    stack: PagingStack, receiver: Receiver, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, _ = smtp
    await stack.add_user("carol", ALICE, [(SMS, 600)])
    await stack.client.notification.CreateContactMethod(
        npb.CreateContactMethodRequest(
            contact_method=npb.ContactMethod(
                id="carol-mail",
                user_id="carol",
                type=npb.CONTACT_METHOD_TYPE_EMAIL,
                address="carol@example.org",
            )
        )
    )
    receiver.secret = CHANNEL_SECRET  # stakeholder webhooks are signed like webhook pages
    incident_id = await stack.trigger(mirror=False)
    subscriptions = [
        pb.Subscription(
            service_id="payments-api",
            subscriber_type=pb.SUBSCRIBER_TYPE_EMAIL,
            address="CFO@Example.org",
        ),
        pb.Subscription(
            id="carol",
            incident_id=incident_id,
            subscriber_type=pb.SUBSCRIBER_TYPE_USER,
            address="carol",
        ),
        pb.Subscription(
            id="statuspage",
            incident_id=incident_id,
            subscriber_type=pb.SUBSCRIBER_TYPE_WEBHOOK,
            address=receiver.url,
        ),
        pb.Subscription(
            id="other",
            service_id="search",
            subscriber_type=pb.SUBSCRIBER_TYPE_EMAIL,
            address="search@example.org",
        ),
    ]
    for sub in subscriptions:
        await stack.client.webhooks.Subscribe(pb.SubscribeRequest(subscription=sub))
    await stack.client.incidents.AddNote(
        ipb.AddNoteRequest(incident_id=incident_id, text="not this")
    )
    number = (await stack.incident(incident_id)).number
    assert number > 0
    await stack.client.incidents.PostStatusUpdate(  # by the number people use
        ipb.PostStatusUpdateRequest(
            incident_id=f"#{number}", text="Card payments are failing; ETA 10:30"
        )
    )
    await pump(stack)
    await asyncio.sleep(0)
    got = sorted((m.rcpt_tos[0], m.message["Subject"]) for m in recorder.received)
    subject = f"[tocsin] status update: #{number} disk full on db1"
    assert got == [("CFO@example.org", subject), ("carol@example.org", subject)]
    assert all("Card payments are failing; ETA 10:30" in m.part("plain") for m in recorder.received)
    [hook] = receiver.accepted()
    assert hook["type"] == "incident.status_update" and hook["text"].startswith("Card payments")
    assert hook["incident"]["id"] == incident_id and hook["incident"]["number"] == number
    assert receiver.requests[0]["verified"]
    incident = await stack.incident(incident_id)
    [entry] = [e for e in incident.timeline if e.kind == ipb.TIMELINE_KIND_STATUS_UPDATE]
    assert entry.message == "Card payments are failing; ETA 10:30"
    listed = await stack.client.webhooks.ListSubscriptions(
        pb.ListSubscriptionsRequest(incident_id=incident_id)
    )
    assert [s.id for s in listed.subscriptions] == ["carol", "statuspage"]
    await stack.client.webhooks.Unsubscribe(pb.UnsubscribeRequest(id="statuspage"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.client.webhooks.Subscribe(
            pb.SubscribeRequest(
                subscription=pb.Subscription(
                    subscriber_type=pb.SUBSCRIBER_TYPE_EMAIL, address="x@example.org"
                )
            )
        )
    assert "subscription.service_id" in (refused.value.details() or "")


def test_the_delivery_lease_must_outlast_the_http_timeout() -> None:
    with pytest.raises(ConfigError, match="TOCSIN_WEBHOOK_LEASE must be longer"):
        load_config({"TOCSIN_WEBHOOK_LEASE": "5s", "TOCSIN_WEBHOOK_TIMEOUT": "10s"})
    config = load_config({"TOCSIN_WEBHOOK_LEASE": "2m", "TOCSIN_WEBHOOK_TIMEOUT": "30s"})
    assert delivery_options(config).lease_ms == 120_000
    assert delivery_options(config).http_timeout_s == 30.0


async def test_a_hanging_receiver_does_not_delay_a_page(
    stack: PagingStack, receiver: Receiver
) -> None:
    await put_webhook(stack, receiver.url)
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    receiver.hold = asyncio.Event()
    incident_id = await stack.trigger(mirror=False)
    webhooks = stack.parts.webhooks
    await webhooks.consumer.drain_once()
    assert await webhooks.deliverer.start_due() == 1
    await asyncio.wait_for(receiver.arrived.wait(), 10)  # the delivery hangs there
    await stack.drain_events()  # notification's own consumer group
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")
    assert not receiver.requests  # still hanging
    receiver.hold.set()
    await webhooks.deliverer.idle()
    assert [b["type"] for b in receiver.accepted()] == ["incident.triggered"]
    # Nothing left to do: the subscription is no longer looked at.
    assert await webhooks.deliverer.start_due() == 0
    assert await stack.redis.smembers(BUSY_KEY) == set()
