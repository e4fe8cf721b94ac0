"""The Redis side of paging, on a standalone server and on a 3-master Cluster.

Each decision is one Lua script in one slot; these tests pin down what the scripts decide
when claims go stale, cycles are replaced, incidents stop and processes die.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from redis.asyncio import RedisCluster

from tests.redis_wire import recording_writes
from tocsin.notification import domain, pagemetrics
from tocsin.notification import keys as nkeys
from tocsin.notification.contacts import (
    REPLY_CODE_QUARANTINE_MS,
    REPLY_CODE_TTL_MS,
    REPLY_CODES,
    ContactStore,
    LiveCode,
)
from tocsin.notification.domain import AttemptLocation, Settings, TimerPayload
from tocsin.notification.ratelimit import RateLimiter
from tocsin.notification.records import CycleRule
from tocsin.notification.store import CycleRequest, PagingStore
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.errors import AlreadyExists
from tocsin.runtime.events import incident_shard
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.timers import ClaimedTimer
from tocsin.v1 import incidents_pb2, notification_pb2

SMS, VOICE = domain.SMS, domain.VOICE
INCIDENT = "33"
SHARD = incident_shard(INCIDENT)
RULES = [
    CycleRule("alice-sms", 0, SMS),
    CycleRule("alice-voice", 60_000, VOICE),
    CycleRule("alice-sms", 300_000, SMS),
]
LEASE_MS = 30_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(any_redis: RedisClient, clock: ManualClock) -> PagingStore:
    return PagingStore(any_redis, clock, retention_ms=86_400_000)


async def start(
    store: PagingStore, key: str = "k", user: str = "alice", lease_ms: int = LEASE_MS
) -> tuple[str, ClaimedTimer]:
    """A new cycle's id and the claim on its first rule (due now) that Notify hands over."""
    started = await store.start_cycle(
        CycleRequest(INCIDENT, user, key, "", lease_ms, rules=RULES), "7"
    )
    assert started.started
    [first] = started.claimed
    return started.cycle_id, first


async def claim(store: PagingStore, cycle_id: str, rule: int) -> ClaimedTimer:
    claimed = await store.timers.claim(domain.rule_attempt_id(cycle_id, rule), SHARD, LEASE_MS)
    assert claimed is not None
    return claimed


async def fire(store: PagingStore, timer: ClaimedTimer, mode: str = "mirror") -> str:
    payload = TimerPayload.decode(timer.payload)
    return (await store.fire(timer, payload, payload.channel, mode)).outcome


def incident(
    status: incidents_pb2.IncidentStatus.ValueType, version: int
) -> incidents_pb2.Incident:
    return incidents_pb2.Incident(
        id=INCIDENT, status=status, version=version, summary="disk full", service_id="payments"
    )


async def test_a_cycle_arms_one_timer_per_rule_and_claims_those_due_now_once(
    store: PagingStore, clock: ManualClock
) -> None:
    cycle_id, timer = await start(store)

    again = await store.start_cycle(
        CycleRequest(INCIDENT, "alice", "k", "", LEASE_MS, rules=RULES), "7"
    )

    assert cycle_id == f"{INCIDENT}-1" and not again.started and not again.claimed
    assert await store.timers.pending_count(SHARD) == 3
    assert timer.timer_id == f"{cycle_id}-0"
    assert await store.timers.claim_due(SHARD, 10, LEASE_MS) == []  # no worker races for it
    payload = TimerPayload.decode(timer.payload)
    assert (payload.user_id, payload.contact_method_id, payload.channel) == (
        "alice",
        "alice-sms",
        SMS,
    )
    assert await store.timers.claim(f"{cycle_id}-1", SHARD, LEASE_MS) is None  # not due
    clock.advance(seconds=31)  # the claimer died before sending: its lease runs out
    [again_due] = await store.timers.claim_due(SHARD, 10, LEASE_MS)
    assert again_due.timer_id == timer.timer_id and again_due.fence > timer.fence


async def test_a_rule_sends_once_even_when_its_claim_is_taken_over(
    store: PagingStore, clock: ManualClock
) -> None:
    cycle_id, slow = await start(store, lease_ms=1_000)
    clock.advance(seconds=2)  # the lease ran out: another worker takes the timer
    [taken_over] = await store.timers.claim_due(SHARD, 10, LEASE_MS)

    assert await fire(store, slow) == "stale"
    assert await fire(store, taken_over) == "send"
    assert await fire(store, taken_over) == "stale"  # completed with the attempt
    [attempt] = await store.list_attempts(INCIDENT)
    assert (attempt.id, attempt.status, attempt.reply_code) == (
        f"{cycle_id}-0",
        domain.SENDING,
        "7",
    )


async def test_a_rule_whose_attempt_exists_never_sends_again(store: PagingStore) -> None:
    cycle_id, first = await start(store)
    assert await fire(store, first) == "send"
    await store.timers.arm(f"{cycle_id}-0", 0, b"", SHARD)  # a stray re-arm
    stray = await store.timers.claim(f"{cycle_id}-0", SHARD, LEASE_MS)
    assert stray is not None

    payload = TimerPayload(cycle_id, 0, "alice", "alice-sms", SMS, "")
    assert (await store.fire(stray, payload, SMS, "send")).outcome == "duplicate"
    assert len(await store.list_attempts(INCIDENT)) == 1


async def test_a_new_cycle_for_the_same_user_replaces_the_running_one(
    store: PagingStore, clock: ManualClock
) -> None:
    _, in_flight = await start(store, key="loop-0")

    second = await store.start_cycle(
        CycleRequest(INCIDENT, "alice", "loop-1", "", LEASE_MS, rules=RULES), "7"
    )

    assert second.replaced_timers == 3
    assert await fire(store, in_flight) == "stale"
    clock.advance(minutes=10)
    due = await store.timers.claim_due(SHARD, 10, LEASE_MS)
    assert sorted(t.timer_id for t in due) == [f"{second.cycle_id}-{i}" for i in range(3)]
    _, bobs_first = await start(store, key="bob", user="bob")
    assert await fire(store, bobs_first) == "send"  # bob untouched


async def test_stopping_an_incident_cancels_every_cycle_and_the_mirror_keeps_the_newest(
    store: PagingStore,
) -> None:
    _, in_flight = await start(store, key="a")
    await start(store, key="b", user="bob")
    acked = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED

    assert await store.apply_incident(incident(acked, 3)) == (True, 6)
    assert await store.apply_incident(incident(incidents_pb2.INCIDENT_STATUS_TRIGGERED, 2)) == (
        False,
        0,
    )

    assert await store.incident_status(INCIDENT) == acked
    assert await fire(store, in_flight) == "stale"
    assert await store.timers.pending_count(SHARD) == 0
    assert await store.cancel(INCIDENT) == 0


async def test_a_stopped_mirror_asks_before_skipping(store: PagingStore) -> None:
    await store.apply_incident(incident(incidents_pb2.INCIDENT_STATUS_RESOLVED, 5))
    _, timer = await start(store)

    assert await fire(store, timer) == "check"  # nothing recorded, timer still ours
    assert await fire(store, timer, "skip") == "skip"

    [attempt] = await store.list_attempts(INCIDENT)
    assert attempt.status == domain.SKIPPED


async def test_the_mirror_hands_the_page_its_text(store: PagingStore) -> None:
    await store.apply_incident(incident(incidents_pb2.INCIDENT_STATUS_TRIGGERED, 1))
    _, timer = await start(store)

    fired = await store.fire(timer, TimerPayload.decode(timer.payload), SMS, "mirror")

    assert (fired.outcome, fired.summary, fired.service_id, fired.reply_code) == (
        "send",
        "disk full",
        "payments",
        "7",
    )
    assert (fired.incident_id, fired.user_id) == (INCIDENT, "alice")


async def test_an_unreachable_rule_moves_on_to_the_next_other_contact_method(
    store: PagingStore,
) -> None:
    cycle_id, timer = await start(store)

    fired = await store.fire(
        timer, TimerPayload.decode(timer.payload), SMS, "unreachable", "disabled"
    )

    assert (fired.outcome, fired.next_rule) == ("unreachable", 1)
    call = await claim(store, cycle_id, 1)  # due now, not in a minute
    payload = TimerPayload.decode(call.payload)
    assert await store.advance(payload, "alice-voice") == 2  # the later SMS, not the call
    await claim(store, cycle_id, 2)  # due now as well
    assert await store.advance(payload, "alice-voice") == -1  # nothing left waiting
    [attempt] = await store.list_attempts(INCIDENT)
    assert (attempt.status, attempt.provider_status) == (domain.FAILED, "disabled")


async def test_the_sweep_marks_only_attempts_stuck_in_sending_as_unknown(
    store: PagingStore, clock: ManualClock
) -> None:
    cycle_id, first = await start(store)
    assert await fire(store, first) == "send"
    clock.advance(minutes=1)
    assert await fire(store, await claim(store, cycle_id, 1)) == "send"
    answered = AttemptLocation(f"{cycle_id}-1", INCIDENT, None)
    await store.update_attempt(answered, domain.SENT, provider_id="CA1")
    bound = clock.now_ms() - 30_000

    [marked] = await store.sweep(SHARD, bound)

    assert marked.id == f"{cycle_id}-0" and marked.status == domain.UNKNOWN
    assert await store.sweep(SHARD, clock.now_ms()) == []
    statuses = {a.id: a.status for a in await store.list_attempts(INCIDENT)}
    assert statuses == {f"{cycle_id}-0": domain.UNKNOWN, f"{cycle_id}-1": domain.SENT}


async def test_attempt_status_only_moves_forward(store: PagingStore) -> None:
    cycle_id, first = await start(store)
    await fire(store, first)
    location = AttemptLocation(f"{cycle_id}-0", INCIDENT, None)

    delivered = await store.update_attempt(location, domain.DELIVERED, provider_id="SM1")
    late = await store.update_attempt(
        location, domain.SENT, provider_id="SM2", provider_status="queued"
    )

    assert delivered is not None and delivered[1]
    assert late is not None and not late[1]
    attempt = late[0]
    assert (attempt.status, attempt.provider_id, attempt.provider_status) == (
        domain.DELIVERED,
        "SM1",
        "queued",
    )
    assert await store.update_attempt(AttemptLocation("33-9-9", INCIDENT, None)) is None


async def test_test_pages_are_recorded_under_the_user_and_swept_too(
    store: PagingStore, clock: ManualClock
) -> None:
    phone = notification_pb2.ContactMethod(id="alice-sms", user_id="alice", type=SMS)
    first = await store.begin_test_attempt("alice", phone)
    second = await store.begin_test_attempt("alice", phone)

    assert (first.id, second.id, first.rule_index) == ("test-alice-1", "test-alice-2", -1)
    location = domain.locate_attempt(first.id)
    assert location == AttemptLocation("test-alice-1", None, "alice")
    await store.update_attempt(location, domain.SENT)
    clock.advance(minutes=5)
    [unknown] = await store.sweep(None, clock.now_ms())
    assert unknown.id == "test-alice-2"


async def test_reply_codes_stay_with_their_incident_and_are_not_reused_at_once(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    contacts = ContactStore(any_redis, clock)
    first = (await contacts.prepare_page("alice", "16")).reply_code
    second = (await contacts.prepare_page("alice", "32")).reply_code

    assert (await contacts.prepare_page("alice", "16")).reply_code == first
    assert first != second
    assert await contacts.incident_of_code("alice", first) == "16"
    assert await contacts.incident_of_code("bob", first) is None
    clock.advance(days=2)  # both codes expired
    assert await contacts.incident_of_code("alice", first) is None
    third = (await contacts.prepare_page("alice", "48")).reply_code
    assert third not in (first, second)  # round robin: an old reply cannot hit it


async def test_when_every_code_is_live_codes_grow_a_digit_and_none_is_taken_over(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    contacts = ContactStore(any_redis, clock)
    for n in range(REPLY_CODES):
        await contacts.prepare_page("alice", str(16 * (n + 1)))
        clock.advance(seconds=1)

    code = (await contacts.prepare_page("alice", "999984")).reply_code

    assert code == "100"
    assert await contacts.incident_of_code("alice", "100") == "999984"
    assert await contacts.incident_of_code("alice", "1") == "16"
    assert await contacts.incident_of_code("alice", "2") == "32"
    assert len(await contacts.live_codes("alice")) == REPLY_CODES + 1


async def test_a_code_is_free_again_only_after_its_window_and_quarantine(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    contacts = ContactStore(any_redis, clock)
    for n in range(REPLY_CODES):
        await contacts.prepare_page("alice", str(16 * (n + 1)))
    clock.advance(seconds=1)
    await contacts.prepare_page("alice", "16")  # code 1's incident paged again, later
    clock.advance(seconds=REPLY_CODE_TTL_MS / 1000 - 1)
    # Codes 2-99 are past their answer window: they answer nothing, and none is reused yet.
    assert await contacts.incident_of_code("alice", "2") is None
    assert await contacts.live_codes("alice") == [LiveCode("1", "16", "alice")]
    assert (await contacts.prepare_page("alice", "1600")).reply_code == "100"

    clock.advance(seconds=REPLY_CODE_QUARANTINE_MS / 1000)  # code 1 has a second to go
    reused = (await contacts.prepare_page("alice", "3200")).reply_code
    assert reused in {str(c) for c in range(2, REPLY_CODES + 1)}
    assert await contacts.incident_of_code("alice", reused) == "3200"
    assert await contacts.live_codes("alice") == [LiveCode(reused, "3200", "alice")]
    clock.advance(seconds=1)  # now code 1 is free too, but has been for less long
    assert (await contacts.prepare_page("alice", "4800")).reply_code not in ("1", reused)


async def test_codes_held_before_the_tiers_keep_their_incident(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    """Codes handed out round robin by the previous version (no tier keys) stay theirs."""
    expires = clock.now_ms() + REPLY_CODE_TTL_MS
    await any_redis.hset(nkeys.reply_codes("alice"), mapping={"1": f"16|{expires}"})
    await any_redis.hset(nkeys.reply_codes("alice"), mapping={"3": f"48|{expires}"})
    await any_redis.hset(nkeys.code_of("alice"), mapping={"16": "1", "48": "3"})
    contacts = ContactStore(any_redis, clock)

    handed = [(await contacts.prepare_page("alice", str(i))).reply_code for i in (64, 80, 48)]

    assert handed == ["2", "4", "3"]
    assert await contacts.incident_of_code("alice", "1") == "16"


async def test_concurrent_settings_changes_are_all_kept(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    contacts = ContactStore(any_redis, clock)
    methods = [
        notification_pb2.ContactMethod(
            id=f"alice-{n}", user_id="alice", type=SMS, address=f"+1500555001{n}"
        )
        for n in range(8)
    ]

    def adding(method: notification_pb2.ContactMethod) -> Callable[[Settings], Settings]:
        return lambda settings: domain.with_contact_method(settings, method)

    await asyncio.gather(*(contacts.change("alice", adding(m)) for m in methods))

    stored = await contacts.settings("alice")
    assert stored is not None and len(stored.contact_methods) == 8
    assert [o.contact_method_id for o in await contacts.owners_of_number("+15005550013")] == [
        "alice-3"
    ]
    with pytest.raises(AlreadyExists):
        await contacts.change("bob", lambda s: domain.with_contact_method(s, methods[0]))


async def test_rate_limit_slots_queue_pages_instead_of_dropping_them(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    limiter = RateLimiter(
        any_redis, clock, "+15005550006", sends_per_second=1, number_interval_ms=10_000
    )
    now = clock.now_ms()

    to_alice = [await limiter.reserve(SMS, "+15005550010") for _ in range(3)]
    to_bob = await limiter.reserve(SMS, "+15005550011")
    call_alice = await limiter.reserve(VOICE, "+15005550010")

    assert [slot - now for slot in to_alice] == [0, 10_000, 20_000]
    # The sender's first free second: bob's page takes a slot between alice's, it does
    # not queue behind all of them (it used to get 21 s).
    assert to_bob - now == 1_000
    assert call_alice == now  # calls are counted apart from texts


async def test_a_storm_to_one_person_does_not_hold_back_a_page_to_another(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    """Fair sender slots: 200 storm pages to one person (2 s apart, as the default
    per-number interval spaces them) leave the Twilio number's other slots free, so
    another service's first page, to someone else, goes within a second; the slots
    stay a second apart, and pages reserved later go in the gaps, in order."""
    limiter = RateLimiter(
        any_redis, clock, "+15005550006", sends_per_second=1, number_interval_ms=2_000
    )
    now = clock.now_ms()
    storm = [await limiter.reserve(SMS, "+15005550010") for _ in range(200)]
    assert [slot - now for slot in storm] == [2_000 * n for n in range(200)]
    clock.advance(seconds=5)
    canary = await limiter.reserve(SMS, "+15005550011")
    assert canary - now == 5_000  # now: between the storm's slots at 4 s and 6 s
    more = [await limiter.reserve(SMS, f"+1500555002{n}") for n in range(3)]
    assert [slot - now for slot in more] == [7_000, 9_000, 11_000]
    slots = sorted([*storm, canary, *more])
    assert all(b - a >= 1_000 for a, b in itertools.pairwise(slots))
    # A slot taken in a gap does not shorten how long the later reservations are kept.
    ttl_ms = await any_redis.pttl(nkeys.rate_slots("sms:from:+15005550006"))
    assert ttl_ms > max(storm) - clock.now_ms()


async def test_both_rate_limits_are_reserved_in_one_round_trip_on_one_server(
    any_redis: RedisClient, clock: ManualClock
) -> None:
    """The destination's slot, then the sender's no earlier than it: one script on one
    Redis server, two on a Cluster (the keys' hash tags differ), the same slots."""
    limiter = RateLimiter(
        any_redis, clock, "+15005550006", sends_per_second=2, number_interval_ms=3_000
    )
    now = clock.now_ms()

    first = await limiter.reserve(SMS, "+15005550010")  # loads the scripts where they run
    with recording_writes(lambda args: args[0].upper() == b"EVALSHA") as writes:
        second = await limiter.reserve(SMS, "+15005550010")
    other = await limiter.reserve(SMS, "+15005550011")
    clock.advance(seconds=1)
    later = await limiter.reserve(SMS, "+15005550012")

    assert [first - now, second - now, other - now, later - now] == [0, 3_000, 500, 1_000]
    assert len(writes) == (2 if isinstance(any_redis, RedisCluster) else 1)
    number_only = RateLimiter(
        any_redis, clock, "+15005550006", sends_per_second=0, number_interval_ms=3_000
    )
    assert await number_only.reserve(SMS, "+15005550013") == clock.now_ms()
    assert await number_only.reserve(SMS, "+15005550013") == clock.now_ms() + 3_000


async def test_a_sent_page_is_findable_by_provider_id_and_by_number(
    store: PagingStore, any_redis: RedisClient, clock: ManualClock
) -> None:
    contacts = ContactStore(any_redis, clock)

    await store.remember_page(
        "SM123", "33-1-0", contacts.latest_page_write("+15005550010", INCIDENT, "alice")
    )

    assert await store.attempt_of_provider_id("SM123") == "33-1-0"
    latest = await contacts.latest_page("+15005550010")
    assert latest is not None and (latest.incident_id, latest.user_id) == (INCIDENT, "alice")
    clock.advance(days=2)
    assert await contacts.latest_page("+15005550010") is None


async def test_a_sent_attempt_and_its_index_are_recorded_together(
    store: PagingStore, any_redis: RedisClient, clock: ManualClock
) -> None:
    """SENT, the provider id, the number's latest page and the incident's first page: one
    round trip on one server (a pipeline: the script, then the SETs), one after the other
    on a Cluster; the answer says whether this was the incident's first page accepted."""
    contacts = ContactStore(any_redis, clock)
    cycle_id, first = await start(store)
    await fire(store, first)
    location = AttemptLocation(f"{cycle_id}-0", INCIDENT, None)
    first_page = pagemetrics.first_page_write(INCIDENT, clock.now_ms(), 86_400_000)

    with recording_writes(lambda args: args[0].upper() in (b"EVALSHA", b"SET")) as writes:
        was_first = await store.record_sent(
            location,
            "SM9",
            "queued",
            contacts.latest_page_write("+15005550010", INCIDENT, "alice"),
            first_page,
        )
    again = await store.record_sent(location, "SM9", "queued", None, first_page)

    assert was_first and not again
    attempt = await store.attempt(location)
    assert attempt is not None
    assert (attempt.status, attempt.provider_id, attempt.provider_status) == (
        domain.SENT,
        "SM9",
        "queued",
    )
    assert await store.attempt_of_provider_id("SM9") == location.attempt_id
    latest = await contacts.latest_page("+15005550010")
    assert latest is not None and latest.incident_id == INCIDENT
    sent = [[c[0].upper() for c in write] for write in writes]
    if isinstance(any_redis, RedisCluster):  # redis-py sends no script in a pipeline
        assert sent[0] == [b"EVALSHA"] and [n for w in sent[1:] for n in w] == [b"SET"] * 3
    else:
        assert sent == [[b"EVALSHA", b"SET", b"SET", b"SET"]]


async def test_a_sent_attempt_is_recorded_after_redis_lost_its_scripts(
    store: PagingStore, redis: RedisClient
) -> None:
    cycle_id, first = await start(store)
    await fire(store, first)
    location = AttemptLocation(f"{cycle_id}-0", INCIDENT, None)
    await redis.script_flush()

    assert not await store.record_sent(location, "SM7", "queued")

    attempt = await store.attempt(location)
    assert attempt is not None and (attempt.status, attempt.provider_id) == (domain.SENT, "SM7")
    assert await store.attempt_of_provider_id("SM7") == location.attempt_id
