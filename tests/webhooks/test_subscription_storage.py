"""Where stakeholder subscriptions are kept (tocsin.webhooks.store): an incident's in a
hash under the incident's own hash tag that expires with the incident, a service's in its
own hash, an index by id whose entries lapse with them; subscriptions an earlier version
kept in one hash are moved at start and still get their updates. Real servers on a
standalone Redis and a 3-master Cluster, a ManualClock."""

from __future__ import annotations

from tests.notification.smtp_server import SmtpRecorder
from tests.notification.stack import PagingStack
from tests.webhooks.test_subscriptions import pump
from tocsin.incidents.keys import incident_key
from tocsin.v1 import incidents_pb2 as ipb
from tocsin.v1 import webhooks_pb2 as pb
from tocsin.webhooks.store import (
    LEGACY_SUBSCRIPTIONS_KEY,
    SUBSCRIPTION_INDEX_KEY,
    incident_subscriptions_key,
    service_subscriptions_key,
)

EMAIL = pb.SUBSCRIBER_TYPE_EMAIL


def by_email(sub_id: str, address: str, **where: str) -> pb.Subscription:
    return pb.Subscription(id=sub_id, subscriber_type=EMAIL, address=address, **where)


async def subscribe(stack: PagingStack, sub: pb.Subscription) -> None:
    await stack.client.webhooks.Subscribe(pb.SubscribeRequest(subscription=sub))


async def listed(stack: PagingStack, **where: str) -> list[str]:
    reply = await stack.client.webhooks.ListSubscriptions(pb.ListSubscriptionsRequest(**where))
    return [s.id for s in reply.subscriptions]


async def test_an_incidents_subscriptions_live_with_it_and_lapse_with_it(
    stack: PagingStack,
) -> None:
    redis = stack.redis
    incident_id = await stack.trigger(mirror=False)
    await subscribe(stack, by_email("cfo", "cfo@example.org", incident_id=incident_id))
    await subscribe(stack, by_email("desk", "desk@example.org", service_id="payments-api"))
    mine = incident_subscriptions_key(incident_id)
    assert mine.startswith(incident_key(incident_id))  # the incident's hash tag: its slot
    assert await redis.hkeys(mine) == [b"cfo"]
    assert await redis.hkeys(service_subscriptions_key("payments-api")) == [b"desk"]
    assert not await redis.exists(LEGACY_SUBSCRIPTIONS_KEY)
    assert await redis.pttl(mine) == -1  # open: kept
    assert await listed(stack) == ["cfo", "desk"]

    await stack.client.incidents.Resolve(ipb.ResolveRequest(incident_id=incident_id))
    await pump(stack)  # the RESOLVED event
    retention_ms = int(stack.config.retention.total_seconds() * 1000)
    assert 0 < await redis.pttl(mine) <= retention_ms
    await subscribe(stack, by_email("late", "late@example.org", incident_id=incident_id))
    assert 0 < await redis.pttl(mine) <= retention_ms  # written after: expires with it
    assert await listed(stack, incident_id=incident_id) == ["cfo", "late"]

    # Past the incident's retention its subscriptions' index entries lapse (the next write
    # prunes them), and a lookup of one whose hash is gone drops it.
    stack.clock.advance(seconds=stack.config.retention.total_seconds() + 60)
    await subscribe(stack, by_email("next", "next@example.org", service_id="payments-api"))
    assert await redis.hget(SUBSCRIPTION_INDEX_KEY, "cfo") is None
    assert await redis.hget(SUBSCRIPTION_INDEX_KEY, "late") is None
    assert await listed(stack) == ["desk", "next"]
    await redis.delete(mine)  # what Redis does when the hash's time is up
    assert await listed(stack, incident_id=incident_id) == []


async def test_subscriptions_kept_in_the_old_single_hash_are_moved_and_still_get_updates(
    stack: PagingStack, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, _ = smtp
    redis = stack.redis
    incident_id = await stack.trigger(mirror=False)
    old = [
        by_email("cfo", "cfo@example.org", incident_id=incident_id),
        by_email("desk", "desk@example.org", service_id="payments-api"),
        by_email("elsewhere", "search@example.org", service_id="search"),
    ]
    for sub in old:  # as the former version stored them
        await redis.hset(LEGACY_SUBSCRIPTIONS_KEY, sub.id, sub.SerializeToString())
    store = stack.parts.webhooks.store
    assert await store.migrate_subscriptions(stack.clock.now_ms()) == 3
    assert not await redis.exists(LEGACY_SUBSCRIPTIONS_KEY)
    assert await store.migrate_subscriptions(stack.clock.now_ms()) == 0  # once
    assert await listed(stack) == ["cfo", "desk", "elsewhere"]
    assert await listed(stack, incident_id=incident_id) == ["cfo"]
    assert await listed(stack, service_id="payments-api") == ["desk"]

    await stack.client.incidents.PostStatusUpdate(
        ipb.PostStatusUpdateRequest(incident_id=incident_id, text="ETA 10:30")
    )
    await pump(stack)
    assert sorted(m.rcpt_tos[0] for m in recorder.received) == [
        "cfo@example.org",
        "desk@example.org",
    ]
    await stack.client.webhooks.Unsubscribe(pb.UnsubscribeRequest(id="cfo"))
    assert await redis.hkeys(incident_subscriptions_key(incident_id)) == []
    assert await listed(stack) == ["desk", "elsewhere"]
