"""A user's next page starts in one round trip: the process's copy of their settings.

Notification keeps a copy of the settings of the users it paged lately
(`ContactStore.known_settings`). With it, the script that holds the page's reply code
(page_prepare.lua) and the one that starts the cycle (notify.lua) go to Redis in one
pipeline; notify.lua starts the cycle only if the stored settings still are the copy's
and the code was held just before it. These stories check the round trip and that a copy
gone stale (another replica changed the settings), or a Redis that lost its scripts,
still pages the way the stored settings say, once, with a code that answers.
"""

from __future__ import annotations

import re

import pytest
from google.protobuf.duration_pb2 import Duration
from redis.asyncio import RedisCluster

from tests.harness import FROM_NUMBER
from tests.notification.stack import ALICE, BOB, SMS, VOICE, PagingStack, paging_stack
from tests.redis_wire import recording_writes
from tocsin.faketwilio import RecordedRequest
from tocsin.notification import contacts as contacts_module
from tocsin.notification.contacts import ContactStore
from tocsin.notification.domain import with_rules
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import incidents_pb2, notification_pb2

ACKNOWLEDGED = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED


def reply_code(sms: RecordedRequest) -> str:
    match = re.search(r"reply '(\d+)a' to ack", sms.body or "")
    assert match, f"no reply code in {sms.body!r}"
    return match[1]


async def another_replica_sets_rules(
    stack: PagingStack, user_id: str, rules: list[tuple[str, int]]
) -> None:
    """The user's rules, (contact method, delay s), written as another notification
    process would: this one's copy of the settings is not dropped."""
    wanted = [
        notification_pb2.NotificationRule(contact_method_id=m, delay=Duration(seconds=d))
        for m, d in rules
    ]
    await ContactStore(stack.redis, stack.clock).change(user_id, lambda s: with_rules(s, wanted))


def scripts(write: list[list[bytes]]) -> list[bytes]:
    return [c[0].upper() for c in write]


async def test_a_users_second_page_is_prepared_and_started_in_one_round_trip(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    first = await stack.trigger("disk full on db1")
    with recording_writes(lambda c: c[0].upper() == b"EVALSHA") as unknown:
        await stack.notify(first, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")
    second = await stack.trigger("db2 is down")

    with recording_writes(lambda c: c[0].upper() == b"EVALSHA") as known:
        await stack.notify(second, "alice")
    sms = await stack.pager.expect_sms("alice", "db2 is down")

    # before the copy: page_prepare.lua, then notify.lua; with it, both in one write
    assert [scripts(w) for w in unknown[:2]] == [[b"EVALSHA"], [b"EVALSHA"]]
    assert scripts(known[0]) == [b"EVALSHA", b"EVALSHA"]
    answer = await stack.pager.reply_sms("alice", f"{reply_code(sms)}a")
    assert answer.startswith("Acknowledged")
    assert (await stack.incident(second)).status == ACKNOWLEDGED
    assert (await stack.incident(first)).status != ACKNOWLEDGED
    await stack.tick(minutes=1)  # the first incident's call; the second's was cancelled
    await stack.pager.expect_voice("alice")
    await stack.pager.expect_no_more_pages()


async def test_settings_changed_by_another_replica_page_as_they_are_stored_now(
    stack: PagingStack,
) -> None:
    """The copy says "text at once"; another replica changed the rules to "call at once":
    the call comes, no text, one cycle, and the code held for the page answers."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    await stack.notify(first, "alice")
    await stack.pager.expect_sms("alice")
    await another_replica_sets_rules(stack, "alice", [("alice-voice", 0)])
    assert stack.parts.contacts.known_settings("alice") is not None  # the stale copy
    second = await stack.trigger("db2 is down")

    started = await stack.notify(second, "alice")

    assert (started.started, started.rules_scheduled) == (True, 1)
    await stack.pager.expect_voice("alice", "db2 is down")
    await stack.pager.expect_no_more_pages()
    attempts = await stack.attempts(second)
    assert [(a.rule_index, a.contact_method_id) for a in attempts] == [(0, "alice-voice")]
    copy = stack.parts.contacts.known_settings("alice")
    assert copy is not None and [r.contact_method_id for r in copy.settings.rules] == [
        "alice-voice"
    ]
    # the code held for the page names the incident: a text reply with it acknowledges
    codes = await stack.parts.contacts.live_codes("alice")
    code = next(c.code for c in codes if c.incident_id == second)
    answer = await stack.pager.reply_sms("alice", f"{code}a")
    assert answer.startswith("Acknowledged")
    assert (await stack.incident(second)).status == ACKNOWLEDGED


async def test_a_stale_copy_does_not_put_the_page_behind_its_own_rate_limit_slot(
    redis: RedisClient,
) -> None:
    """With the default rate limits the page reserves its number's slot before the
    cycle's script; when the script refuses a stale copy, the second try uses that slot
    instead of reserving the next one (two seconds later): the text still goes at once."""
    limits = {"TOCSIN_TWILIO_SENDS_PER_SECOND": "1", "TOCSIN_NUMBER_SEND_INTERVAL": "2s"}
    async with paging_stack(redis, limits) as stack:
        await stack.add_user("alice", ALICE, [(SMS, 0)])
        first = await stack.trigger("disk full on db1")
        await stack.notify(first, "alice", service_id="payments-api")
        await stack.pager.expect_sms("alice", "disk full on db1")
        stack.clock.advance(seconds=5)  # past the first page's slots
        await another_replica_sets_rules(stack, "alice", [("alice-sms", 0), ("alice-voice", 600)])
        second = await stack.trigger("db2 is down")

        started = await stack.notify(second, "alice", service_id="payments-api")

        assert (started.started, started.rules_scheduled) == (True, 2)
        await stack.pager.expect_sms("alice", "db2 is down")  # no clock moved: at once
        await stack.pager.expect_no_more_pages()


async def test_a_repeated_notify_with_a_known_copy_does_nothing(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    await stack.notify(first, "alice")
    await stack.pager.expect_sms("alice")
    second = await stack.trigger("db2 is down")
    once = await stack.notify(second, "alice", key="k")
    await stack.pager.expect_sms("alice", "db2 is down")

    again = await stack.notify(second, "alice", key="k")

    assert (once.started, again.started) == (True, False)
    await stack.pager.expect_no_more_pages()


async def test_a_redis_that_lost_its_scripts_still_pages_once_with_a_code_that_answers(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    await stack.notify(first, "alice")
    await stack.pager.expect_sms("alice")
    second = await stack.trigger("db2 is down")
    await stack.redis.script_flush()

    await stack.notify(second, "alice")

    sms = await stack.pager.expect_sms("alice", "db2 is down")
    await stack.pager.expect_no_more_pages()
    assert len(await stack.attempts(second)) == 1
    answer = await stack.pager.reply_sms("alice", f"{reply_code(sms)}a")
    assert answer.startswith("Acknowledged")
    assert (await stack.incident(second)).status == ACKNOWLEDGED


async def test_a_cycle_never_starts_without_its_code_held_first(stack: PagingStack) -> None:
    """Redis lost page_prepare.lua but has notify.lua (loaded again by another replica):
    in the pipeline page_prepare fails and notify runs; it finds no code held for the
    incident at this moment, starts nothing, and the page is prepared and started again,
    one after the other."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    await stack.notify(first, "alice")
    await stack.pager.expect_sms("alice")
    second = await stack.trigger("db2 is down")
    await stack.redis.script_flush()
    await stack.redis.script_load(stack.parts.store._notify.script.script)

    with recording_writes(lambda c: c[0].upper() == b"EVALSHA") as writes:
        await stack.notify(second, "alice")

    sms = await stack.pager.expect_sms("alice", "db2 is down")
    await stack.pager.expect_no_more_pages()
    assert scripts(writes[0]) == [b"EVALSHA", b"EVALSHA"]  # the pipeline, then alone
    assert len(await stack.attempts(second)) == 1
    answer = await stack.pager.reply_sms("alice", f"{reply_code(sms)}a")
    assert answer.startswith("Acknowledged")
    assert (await stack.incident(second)).status == ACKNOWLEDGED


async def test_a_change_in_this_process_drops_its_copy(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")
    assert stack.parts.contacts.known_settings("alice") is not None

    await stack.set_rules("alice", [(VOICE, 0)])

    assert stack.parts.contacts.known_settings("alice") is None


async def test_the_copies_are_bounded_oldest_page_first(
    redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contacts_module, "SETTINGS_COPIES", 2)
    async with paging_stack(redis) as stack:
        numbers = {"alice": ALICE, "bob": BOB, "carol": "+15005550012"}
        for user, number in numbers.items():
            await stack.add_user(user, number, [(SMS, 0)])
        incident_id = await stack.trigger()
        for user in ("alice", "bob", "carol"):
            await stack.notify(incident_id, user)
            await stack.pager.expect_sms(user)

        known = stack.parts.contacts.known_settings
        assert (known("alice"), known("bob") is not None, known("carol") is not None) == (
            None,
            True,
            True,
        )
        await stack.pager.expect_no_more_pages()


async def test_two_pages_in_a_row_on_either_redis(any_redis: RedisClient) -> None:
    """On a Cluster the settings and the incident are in different slots: no copy is
    kept and every page takes the two steps; on one server the second page uses it."""
    async with paging_stack(any_redis) as stack:
        await stack.add_user("alice", ALICE, [(SMS, 0)])
        for summary in ("disk full on db1", "db2 is down"):
            incident_id = await stack.trigger(summary)
            await stack.notify(incident_id, "alice")
            sms = await stack.pager.expect_sms("alice", summary)
            assert (sms.to, sms.from_) == (ALICE, FROM_NUMBER)
        copy = stack.parts.contacts.known_settings("alice")
        assert (copy is None) == isinstance(any_redis, RedisCluster)
        await stack.pager.expect_no_more_pages()
