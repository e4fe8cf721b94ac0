"""Fair scheduling (issue 19): a storm of new incidents on one service does not hold back
another service's first page. Events go to lanes by service (runtime/events.py), and the
consumers take the lanes of a shard round robin, so the canary's event is handled after
about one storm event per shard, not after the storm's whole backlog.

The storm is in the streams before the canary (a backlog the canary arrives behind); the
escalation consumer then runs its real loop (every shard at once, as in production) until
the canary's first SMS reaches the fake Twilio, and the test counts the storm events it
handled before that. On the code before lanes (one FIFO stream per shard, read 100 at a
time) it handled the storm's whole backlog of the canary's shard in every shard first:
about all of it."""

from __future__ import annotations

import asyncio

from tests.escalation.stack import FullStack, schedule
from tests.notification.stack import ALICE, SMS
from tocsin.runtime.events import lane_of
from tocsin.v1 import incidents_pb2

STORM = 1_600
"""New incidents on the stormy service: 100 per shard, ahead of the canary in each."""
HANDLED_BOUND = STORM // 8
"""Storm events the escalation consumer may handle before the canary's first page: with
lanes, about one per shard per round (16 shards) and the rounds in flight."""


def stormy_service_id() -> str:
    """A service whose events go to another lane than payments-api's (the canary's)."""
    return next(
        name
        for name in (f"storm-{n}" for n in range(64))
        if lane_of(name) != lane_of("payments-api")
    )


async def test_a_storm_on_one_service_does_not_hold_back_another_services_first_page(
    any_stack: FullStack,
) -> None:
    stack = any_stack  # on the standalone server, then on the Redis Cluster
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.schedule("primary", ["alice"])
    await stack.policy(([schedule("primary")], 5))
    stormy = stormy_service_id()
    # No policy: each storm incident costs escalation a lookup and a timeline warning,
    # and pages nobody (the harness would fail on any page it did not expect).
    await stack.client.incidents.CreateService(
        incidents_pb2.CreateServiceRequest(service=incidents_pb2.Service(id=stormy, name="Storm"))
    )
    await asyncio.gather(
        *(
            stack.client.trigger(
                incidents_pb2.TriggerRequest(
                    service_id=stormy, summary=f"storm {n}", dedup_key=f"storm-{n}"
                ),
                timeout=30,
            )
            for n in range(STORM)
        )
    )
    canary = await stack.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api", summary="canary: disk full", dedup_key="canary"
        )
    )
    consumer, engine = stack.escalation.consumer, stack.escalation.engine
    assert consumer is not None and engine is not None
    started: list[str] = []
    handled: list[str] = []

    async def counting(event: incidents_pb2.IncidentEvent) -> None:
        started.append(event.incident.service_id)
        await engine.on_event(event)
        handled.append(event.incident.service_id)

    consumer.handler = counting
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    try:
        stack.pager.timeout_s = 60.0  # real time for the consumer's work, not escalation time
        async with stack.paging.pages_running():  # (its loops end within a read's block)
            await stack.pager.expect_sms("alice", "canary: disk full")
            storm_before_canary = handled.count(stormy)
    finally:
        stop.set()
        await running
    assert "payments-api" in started
    assert storm_before_canary < HANDLED_BOUND, (
        f"{storm_before_canary} of {STORM} storm events were handled before incident "
        f"{canary.incident.id}'s first page"
    )
