"""Chaos: two escalation processes share the timer shards, and one is killed -9 while it
fires a burst of levels. Its shards move to the other within the lease time, and every
level of every incident is paged exactly once.

The session's `tocsin up` runs escalation as instance replica-a; one more `tocsin serve
escalation` runs as replica-b on the same Redis. Shard leases split the 16 timer shards
between them. Forty incidents are triggered at once, so their second levels all fall due within a
moment of each other; as soon as replica-b's first second-level page reaches Twilio, it
is killed -9 with the rest of its levels due or in flight.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tests.e2e.pager import Page, minutes
from tests.e2e.paging_stack import ESCALATION_INSTANCE, PagingStack
from tests.e2e.stack import Service, free_port, wait_for
from tocsin.runtime.events import incident_shard
from tocsin.v1 import escalation_pb2, incidents_pb2

pytestmark = pytest.mark.slow

INCIDENTS = 40
BURST_KEY = "8" * 32
SURVIVOR, VICTIM = f"escalation-{ESCALATION_INSTANCE}", "escalation-replica-b"
OWNERS = "tocsin:{leases:escalation}:owners"


def owners(client: redis.Redis) -> dict[int, str]:
    """Shard -> the escalation instance holding its lease."""
    leases: dict[bytes, bytes] = client.hgetall(OWNERS)  # type: ignore[assignment]
    return {int(shard): value.decode().split("|")[0] for shard, value in leases.items()}


def test_a_killed_escalation_replica_hands_its_shards_over_and_no_level_is_lost_or_repeated(
    tocsin: PagingStack, tmp_path: Path
) -> None:
    replica = Service(
        "escalation",
        {
            **tocsin.stack.env,
            "TOCSIN_REDIS_URL": tocsin.stack.redis_url(),
            "TOCSIN_INSTANCE": "replica-b",
            "TOCSIN_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
            # Its own metrics port: the stack's are taken by its own processes.
            "TOCSIN_METRICS_ADDR": f"127.0.0.1:{free_port()}",
        },
        tmp_path / "replica-b.log",
    )
    with redis.Redis.from_url(tocsin.stack.redis_url()) as client:
        replica.start()
        try:
            wait_for(
                lambda: set(owners(client).values()) == {SURVIVOR, VICTIM}, 30, "a shard split"
            )
            run_the_burst(tocsin, client, replica)
        finally:
            replica.stop()


def run_the_burst(tocsin: PagingStack, client: redis.Redis, replica: Service) -> None:
    pager = tocsin.pager()
    pager.person("quinn", "+12025550141")  # level 1
    pager.person("rosa", "+12025550142")  # level 2, a minute later
    summaries = [f"disk full on node{k:02d}" for k in range(INCIDENTS)]

    triggered = tocsin.now()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: tocsin.enqueue(BURST_KEY, "trigger", s, s), summaries))
    listed = tocsin.client.incidents.ListIncidents(
        incidents_pb2.ListIncidentsRequest(service_ids=["burst-api"], page_size=500)
    ).incidents
    incident_of = {incident.summary: incident.id for incident in listed}
    assert sorted(incident_of) == summaries

    def level_2_pages(shards: set[int]) -> list[Page]:
        return [
            page
            for page in tocsin.log.pages()
            if page.to == pager.people["rosa"]
            and any(s in page.text and incident_shard(incident_of[s]) in shards for s in summaries)
        ]

    def victim_shards_once_it_pages() -> set[int] | None:
        shards = {s for s, owner in owners(client).items() if owner == VICTIM}
        return shards if level_2_pages(shards) else None

    victim_shards = wait_for(
        victim_shards_once_it_pages, 30, "replica-b's first level-2 page", interval_s=0.01
    )
    replica.kill()
    time.sleep(0.2)  # requests that had left before the kill still land at the fake
    victims = [s for s in summaries if incident_shard(incident_of[s]) in victim_shards]
    paged_before_the_kill = len(level_2_pages(victim_shards))
    assert 0 < paged_before_the_kill < len(victims), "the kill did not land mid-burst"

    pager.expect_sms_each("quinn", summaries, not_before=triggered)
    pager.expect_sms_each("rosa", summaries, not_before=triggered + minutes(1))
    wait_for(lambda: set(owners(client).values()) == {SURVIVOR}, 30, "replica-a owns all shards")
    # each policy is exhausted a minute after its second level, which pages nobody
    pager.expect_no_more_pages(until=tocsin.now() + minutes(1))

    for summary, incident_id in incident_of.items():
        # A level the survivor fired late (after the lease moved) is exhausted a virtual
        # minute after it fired: that timer may fall due at the very end of the wait above,
        # so give the survivor a few real seconds (minutes of virtual time) to run it.
        escalation = wait_for(
            lambda incident_id=incident_id: exhausted(tocsin, incident_id), 10, summary
        )
        assert escalation.status == escalation_pb2.ESCALATION_STATUS_EXHAUSTED, summary
        assert [(p.level, p.user_id) for p in escalation.pages] == [(0, "quinn"), (1, "rosa")]
        lines = tocsin.timeline(incident_id)
        assert lines.count("Escalation level 2 (loop 1) paged rosa") == 1, (summary, lines)
    pager.expect_no_more_pages(until=tocsin.now())  # exhausting the policies paged nobody


def exhausted(tocsin: PagingStack, incident_id: str) -> escalation_pb2.Escalation | None:
    escalation = tocsin.escalation(incident_id)
    done = escalation.status == escalation_pb2.ESCALATION_STATUS_EXHAUSTED
    return escalation if done else None
