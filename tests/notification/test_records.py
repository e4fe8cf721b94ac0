"""Each record that notification's Lua scripts and Python share, round-tripped through the
real scripts on a real Redis: what Lua writes decodes to the expected record in Python,
and what Python writes is read back by Lua field by field. A key renamed on one side only
fails here instead of losing a page."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tocsin.notification import domain, keys
from tocsin.notification.records import AttemptRecord, CycleRule, TimerPayload, decode_rules
from tocsin.notification.store import CycleRequest, PagingStore
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.events import incident_shard
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.timers import ClaimedTimer
from tocsin.v1 import incidents_pb2, notification_pb2

INCIDENT = "41"
SHARD = incident_shard(INCIDENT)
LEASE_MS = 30_000
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RULES = [
    CycleRule("phone-sms", 0, domain.SMS),
    CycleRule("phone-sms", 60_000, domain.SMS),
    CycleRule("desk-voice", 300_000, domain.VOICE),
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(redis: RedisClient, clock: ManualClock) -> PagingStore:
    return PagingStore(redis, clock, retention_ms=86_400_000)


async def _start(store: PagingStore) -> tuple[str, ClaimedTimer]:
    started = await store.start_cycle(
        CycleRequest(INCIDENT, "zoe", "k", TRACEPARENT, LEASE_MS, rules=RULES), "12"
    )
    assert started.started
    [first] = started.claimed
    return started.cycle_id, first


async def test_rules_python_writes_are_read_by_notify_and_cycle_advance(
    store: PagingStore, redis: RedisClient, clock: ManualClock
) -> None:
    now = clock.now_ms()
    cycle_id, first = await _start(store)

    stored = await redis.hget(keys.cycle(cycle_id, INCIDENT), "rules")
    assert stored is not None and decode_rules(stored) == RULES
    # notify.lua read each rule's delay, contact method and channel into its timer.
    for index, rule in enumerate(RULES):
        timer_id = f"{cycle_id}-{index}"
        due = await redis.zscore(keys.timer_keys(SHARD)[0], timer_id)
        if rule.delay_ms == 0:
            assert first.timer_id == timer_id and first.due_ms == now
            continue
        assert due == now + rule.delay_ms
    # cycle_lib.lua reads `cm`: the rule after an unreachable one is the next rule using
    # another contact method (rule 2), not rule 1, which uses the same phone.
    payload = TimerPayload.decode(first.payload)
    fired = await store.fire(first, payload, payload.channel, "unreachable", "disabled")
    assert (fired.outcome, fired.next_rule) == ("unreachable", 2)


async def test_timer_payload_lua_writes_python_reads_and_back(
    store: PagingStore, clock: ManualClock
) -> None:
    cycle_id, first = await _start(store)

    payload = TimerPayload.decode(first.payload)

    assert payload == TimerPayload(
        cycle_id, 0, "zoe", "phone-sms", domain.SMS, TRACEPARENT, awaited_key=""
    )  # no level waits: the Notify named no next level
    assert (payload.incident_id, payload.attempt_id) == (INCIDENT, f"{cycle_id}-0")
    # Python writes it back with a slot (rearm.lua stores it as it is); a claim reads it.
    slot = clock.now_ms() + 1_500
    assert await store.rearm(first, slot, payload.with_slot(slot))
    clock.advance(seconds=2)
    again = await store.timers.claim(first.timer_id, SHARD, LEASE_MS)
    assert again is not None and again.due_ms == slot
    assert TimerPayload.decode(again.payload) == replace(payload, slot_ms=slot)


async def test_the_first_rules_timer_names_the_key_a_waiting_level_gets_reported(
    store: PagingStore,
) -> None:
    key = f"{INCIDENT}/1/0/0/zoe"
    started = await store.start_cycle(
        CycleRequest(INCIDENT, "zoe", key, TRACEPARENT, LEASE_MS, 123_000, rules=RULES), "12"
    )
    [first] = started.claimed
    assert TimerPayload.decode(first.payload).awaited_key == key
    # A payload armed by the version before says nothing: the cycle is read instead.
    old = b'{"c":"9-1","r":0,"u":"zoe","cm":"phone-sms","t":1,"tp":""}'
    assert TimerPayload.decode(old).awaited_key is None
    with_key = TimerPayload("9-1", 0, "zoe", "phone-sms", 1, "", awaited_key=key)
    assert TimerPayload.decode(with_key.with_slot(5).encode()) == replace(with_key, slot_ms=5)


async def test_attempt_record_lua_writes_python_reads(
    store: PagingStore, redis: RedisClient, clock: ManualClock
) -> None:
    now = clock.now_ms()
    cycle_id, first = await _start(store)
    await store.apply_incident(_triggered())
    payload = TimerPayload.decode(first.payload)
    assert (await store.fire(first, payload, payload.channel, "mirror")).outcome == "send"
    attempts = keys.incident_attempts(INCIDENT)
    attempt_id = f"{cycle_id}-0"

    sending = AttemptRecord.decode(await redis.hget(attempts, attempt_id) or b"")

    assert sending == AttemptRecord(
        id=attempt_id,
        incident_id=INCIDENT,
        user_id="zoe",
        contact_method_id="phone-sms",
        channel=domain.SMS,
        rule_index=0,
        status=domain.SENDING,
        created_ms=now,
        updated_ms=now,
        reply_code="12",
        position=1,
    )
    clock.advance(seconds=3)
    location = domain.locate_attempt(attempt_id)
    assert location is not None
    await store.update_attempt(
        location, domain.FAILED, provider_id="SM1", error_code=30003, provider_status="failed"
    )
    failed = AttemptRecord.decode(await redis.hget(attempts, attempt_id) or b"")
    assert failed == replace(
        sending,
        status=domain.FAILED,
        provider_id="SM1",
        error_code=30003,
        provider_status="failed",
        updated_ms=now + 3_000,
    )
    assert failed.to_proto() == domain.attempt_from_record(failed.encode())


async def test_attempt_record_python_writes_lua_reads(
    store: PagingStore, redis: RedisClient, clock: ManualClock
) -> None:
    now = clock.now_ms()
    written = AttemptRecord(
        id=f"{INCIDENT}-1-2",
        incident_id=INCIDENT,
        user_id="zoe",
        contact_method_id="desk-voice",
        channel=domain.VOICE,
        rule_index=2,
        status=domain.SENT,
        created_ms=now - 5_000,
        updated_ms=now - 4_000,
        provider_id="CA9",
        error_code=0,
        provider_status="ringing",
        reply_code="12",
        position=3,
    )
    await redis.hset(keys.incident_attempts(INCIDENT), written.id, written.encode())
    location = domain.locate_attempt(written.id)
    assert location is not None

    # attempt_lib.lua decodes it, ranks its status, keeps the provider id, re-encodes it.
    result = await store.update_attempt(location, domain.DELIVERED, provider_id="CA-other")

    assert result is not None and result[1]
    read_back = AttemptRecord.decode(
        await redis.hget(keys.incident_attempts(INCIDENT), written.id) or b""
    )
    assert read_back == replace(written, status=domain.DELIVERED, updated_ms=now)
    # A late "sent" must not undo "delivered": Lua read the status Python wrote.
    await store.update_attempt(location, domain.SENT)
    assert (await store.attempt(location)) == read_back.to_proto()


async def test_test_page_record_python_writes_attempt_begin_numbers(
    store: PagingStore, clock: ManualClock
) -> None:
    method = notification_pb2.ContactMethod(id="phone-sms", type=domain.SMS, address="+15005550006")

    first = await store.begin_test_attempt("zoe", method)
    second = await store.begin_test_attempt("zoe", method)

    assert (first.id, second.id) == ("test-zoe-1", "test-zoe-2")
    assert (first.user_id, first.contact_method_id, first.type, first.rule_index) == (
        "zoe",
        "phone-sms",
        domain.SMS,
        -1,
    )
    assert first.status == domain.SENDING and not first.incident_id
    assert first.created_at.ToMilliseconds() == clock.now_ms()


async def test_notice_records_python_writes_notice_begin_keeps_and_lua_updates(
    store: PagingStore, redis: RedisClient, clock: ManualClock
) -> None:
    """notice_begin.lua stores the records once per key; the notice fields survive Lua's
    updates and the sweep; the ids locate them under their user."""
    now = clock.now_ms()
    records = [
        AttemptRecord(
            id=domain.notice_attempt_id("handoff/p/zoe/1/start", i, "zoe"),
            incident_id="",
            user_id="zoe",
            contact_method_id=method,
            channel=channel,
            rule_index=-1,
            status=domain.SENDING,
            created_ms=now,
            updated_ms=now,
            notice=True,
            notice_key="handoff/p/zoe/1/start",
        )
        for i, (method, channel) in enumerate(
            (("phone-sms", domain.SMS), ("mail", notification_pb2.CONTACT_METHOD_TYPE_EMAIL))
        )
    ]
    begun = await store.begin_notice("handoff/p/zoe/1/start", "zoe", records, 60_000)
    assert begun is not None
    assert [(a.kind, a.notice_key, a.status) for a in begun] == [
        (notification_pb2.ATTEMPT_KIND_NOTICE, "handoff/p/zoe/1/start", domain.SENDING)
    ] * 2
    assert await store.begin_notice("handoff/p/zoe/1/start", "zoe", records, 60_000) is None
    assert len(await store.list_user_attempts("zoe")) == 2  # nothing written the second time

    sms = domain.locate_attempt(records[0].id)
    assert sms == domain.AttemptLocation(records[0].id, None, "zoe")
    await store.update_attempt(sms, domain.SENT, provider_id="SM1")
    clock.advance(minutes=10)
    [swept] = await store.sweep(None, clock.now_ms())  # the email's sender died
    assert (swept.id, swept.status) == (records[1].id, domain.UNKNOWN)
    stored = {
        r.id: r for r in map(AttemptRecord.decode, await redis.hvals(keys.test_attempts("zoe")))
    }
    assert stored[records[0].id] == replace(
        records[0], status=domain.SENT, provider_id="SM1", position=1
    )
    assert stored[records[1].id] == replace(
        records[1], status=domain.UNKNOWN, updated_ms=clock.now_ms(), position=2
    )


def test_optional_fields_are_left_out_as_lua_leaves_them_out() -> None:
    record = AttemptRecord("1-1-0", "1", "u", "cm", domain.SMS, 0, domain.SENDING, 5, 6)
    assert set(record.to_json()) == {"id", "inc", "user", "cm", "type", "rule", "st", "c", "u"}
    assert AttemptRecord.decode(record.encode()) == record


def _triggered() -> incidents_pb2.Incident:
    return incidents_pb2.Incident(
        id=INCIDENT,
        status=incidents_pb2.INCIDENT_STATUS_TRIGGERED,
        version=1,
        summary="disk full",
        service_id="payments",
    )
