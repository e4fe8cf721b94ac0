"""Paging one person for an incident, as they live it: texts, calls, replies, keypresses.

Everything is real but Twilio (a fake over HTTP) and time (a ManualClock): scheduling,
incidents and notification over gRPC, the gateway receiving Twilio's signed webhooks,
Redis. The `stack` fixture fails a test on any page it did not expect.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest

from tests.harness import FROM_NUMBER, spoken_text
from tests.notification.stack import ALICE, BOB, SMS, VOICE, PagingStack
from tocsin.faketwilio import RecordedRequest
from tocsin.notification import domain
from tocsin.notification import keys as nkeys
from tocsin.notification.contacts import REPLY_CODES
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2

SENT = notification_pb2.ATTEMPT_STATUS_SENT
DELIVERED = notification_pb2.ATTEMPT_STATUS_DELIVERED
FAILED = notification_pb2.ATTEMPT_STATUS_FAILED
TRIGGERED = incidents_pb2.INCIDENT_STATUS_TRIGGERED
ACKNOWLEDGED = incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED
RESOLVED = incidents_pb2.INCIDENT_STATUS_RESOLVED


def reply_code(sms: RecordedRequest) -> str:
    match = re.search(r"reply '(\d+)a' to ack", sms.body or "")
    assert match, f"no reply code in {sms.body!r}"
    return match[1]


async def advance_until(stack: PagingStack, done: Callable[[], bool], step_s: float = 1) -> None:
    """Move the clock on in steps until `done()` (for a send sleeping between retries)."""
    for _ in range(200):
        if done():
            return
        stack.clock.advance(seconds=step_s)
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


async def label(stack: PagingStack, incident_id: str) -> str:
    """How pages and answers name the incident: its number, "#18"."""
    return f"#{(await stack.incident(incident_id)).number}"


async def test_sms_at_once_and_a_call_after_the_rules_delay(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    incident_id = await stack.trigger("disk full on db1")

    reply = await stack.notify(incident_id, "alice")

    assert (reply.started, reply.rules_scheduled) == (True, 2)
    sms = await stack.pager.expect_sms("alice", contains="disk full on db1")
    number = (await stack.incident(incident_id)).number
    body = sms.body or ""
    assert body.startswith(f"tocsin #{number}: [Payments API] disk full on db1")
    assert sms.from_ == FROM_NUMBER
    # The short signed link to the incident page (TOCSIN_PUBLIC_URL is set), last.
    link = body.rpartition(" ")[2]
    assert link.startswith(f"{stack.config.public_url}/i/{number}?s=")
    async with httpx.AsyncClient() as http:
        opened = await http.get(link)
    assert opened.status_code == 303
    assert opened.headers["location"] == f"/incidents/{incident_id}"
    await stack.pager.expect_no_more_pages()

    assert await stack.tick(seconds=59) == 0
    await stack.pager.expect_no_more_pages()
    assert await stack.tick(seconds=1) == 1
    call = await stack.pager.expect_voice("alice", contains="disk full on db1")
    spoken = " ".join(spoken_text(call.twiml or ""))
    assert "Press 4 to acknowledge" in spoken
    assert f"Incident {number}, for Payments API: disk full on db1" in spoken
    assert f"Its page is on 127.0.0.1, incident {number}." in spoken
    await stack.pager.expect_no_more_pages()
    attempts = await stack.attempts(incident_id)
    assert [(a.type, a.rule_index, a.status, a.user_id) for a in attempts] == [
        (SMS, 0, DELIVERED, "alice"),
        (VOICE, 1, DELIVERED, "alice"),
    ]
    assert attempts[0].provider_id == sms.sid and attempts[1].provider_id == call.sid


async def test_an_sms_reply_acknowledges_and_the_call_never_comes(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")
    sms = await stack.pager.expect_sms("alice")

    answer = await stack.pager.reply_sms("alice", f"{reply_code(sms)}a")

    assert answer == f"Acknowledged {await label(stack, incident_id)}: disk full on db1"
    incident = await stack.incident(incident_id)
    assert incident.status == ACKNOWLEDGED
    assert incident.acknowledged_by == common_pb2.Actor(
        user_id="alice", channel=common_pb2.CHANNEL_SMS
    )
    await stack.tick(minutes=10)  # the call was due after a minute
    await stack.pager.expect_no_more_pages()


async def test_a_plain_ack_acts_only_when_one_paged_incident_is_open(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    second = await stack.trigger("api latency high")
    await stack.notify(first, "alice")
    first_code = reply_code(await stack.pager.expect_sms("alice", contains="disk full"))
    await stack.notify(second, "alice")
    second_code = reply_code(await stack.pager.expect_sms("alice", contains="api latency"))

    # "ack" to the first text must not acknowledge the second: it asks which.
    assert await stack.pager.reply_sms("alice", "ack") == (
        f"Which incident? Reply with its code: '{first_code}a' {await label(stack, first)} "
        "disk full on db1; "
        f"'{second_code}a' {await label(stack, second)} api latency high"
    )
    assert [(await stack.incident(i)).status for i in (first, second)] == [TRIGGERED] * 2
    assert await stack.pager.reply_sms("alice", f"{first_code} resolve") == (
        f"Resolved {await label(stack, first)}: disk full on db1"
    )
    await stack.drain_events()
    assert await stack.pager.reply_sms("alice", "ack") == (
        f"Acknowledged {await label(stack, second)}: api latency high"
    )
    assert await stack.pager.reply_sms("alice", "ack") == (
        f"Already acknowledged {await label(stack, second)}: api latency high"
    )


async def test_a_reply_to_the_first_of_a_storm_of_pages_acts_on_the_first_incident(
    stack: PagingStack,
) -> None:
    """Codes 1-99 once meant the 100th page took over the code of the first."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incidents: list[str] = []
    codes: list[str] = []
    for n in range(REPLY_CODES + 5):
        incidents.append(await stack.trigger(f"disk {n} full", mirror=False))
        await stack.notify(incidents[-1], "alice")
        codes.append(reply_code(await stack.pager.expect_sms("alice", contains=f"disk {n} ")))
        stack.clock.advance(seconds=1)
    await stack.drain_events()

    assert len(set(codes)) == len(codes)
    assert codes[:3] == ["1", "2", "3"] and codes[REPLY_CODES] == "100"
    assert await stack.pager.reply_sms("alice", f"{codes[0]}a") == (
        f"Acknowledged {await label(stack, incidents[0])}: disk 0 full"
    )
    assert await stack.pager.reply_sms("alice", f"{codes[2]}r") == (
        f"Resolved {await label(stack, incidents[2])}: disk 2 full"
    )
    statuses = [(await stack.incident(i)).status for i in incidents]
    assert statuses[:3] == [ACKNOWLEDGED, TRIGGERED, RESOLVED]
    assert set(statuses[3:]) == {TRIGGERED}


async def test_an_expired_code_is_refused_and_not_reused_while_a_late_reply_may_come(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    old = await stack.trigger("disk full on db1")
    await stack.notify(old, "alice")
    old_code = reply_code(await stack.pager.expect_sms("alice"))
    stack.clock.advance(days=2)  # past the answer window
    new = await stack.trigger("api latency high")
    await stack.notify(new, "alice")
    new_code = reply_code(await stack.pager.expect_sms("alice"))

    assert new_code != old_code
    assert await stack.pager.reply_sms("alice", f"{old_code}a") == (
        f"Unknown code {old_code}. Reply with its code: '{new_code}a' "
        f"{await label(stack, new)} api latency high"
    )
    assert (await stack.incident(new)).status == TRIGGERED
    assert (await stack.incident(old)).status == TRIGGERED  # too late to act on


async def test_a_code_two_users_sharing_a_number_both_hold_asks_which(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    await stack.add_user("carol", ALICE, [(SMS, 0)])
    first = await stack.trigger("disk full on db1")
    second = await stack.trigger("api latency high")
    await stack.notify(first, "alice")
    alice_code = reply_code(await stack.pager.expect_sms("alice", contains="disk full"))
    await stack.notify(second, "carol")
    carol_code = reply_code(await stack.pager.expect_sms("carol", contains="api latency"))
    assert alice_code == carol_code  # codes are per user

    answer = await stack.pager.reply_sms("alice", f"{alice_code}a")

    assert answer.startswith(f"Code {alice_code} names more than one incident. Reply with")
    assert [(await stack.incident(i)).status for i in (first, second)] == [TRIGGERED] * 2


async def test_a_keypress_acts_on_the_incident_of_its_call_whatever_came_after(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(VOICE, 0)])
    first = await stack.trigger("disk full on db1")
    await stack.notify(first, "alice")
    call = await stack.pager.expect_voice("alice", contains="disk full")
    second = await stack.trigger("api latency high")
    await stack.notify(second, "alice")
    await stack.pager.expect_voice("alice", contains="api latency")

    answer = await stack.pager.press(call, "4")

    assert f"Acknowledged {await label(stack, first)}" in " ".join(spoken_text(answer))
    assert [(await stack.incident(i)).status for i in (first, second)] == [
        ACKNOWLEDGED,
        TRIGGERED,
    ]


async def test_replies_that_name_nothing_are_answered_plainly(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])

    assert await stack.pager.reply_sms("alice", "7a") == "Unknown code 7"
    assert "No recent page" in await stack.pager.reply_sms("alice", "ack")
    assert "reply '4a' to acknowledge" in await stack.pager.reply_sms("alice", "what is this?")
    stack.pager.person("stranger", "+15005550099")
    assert await stack.pager.reply_sms("stranger", "1a") == ""  # unknown numbers: no answer


async def test_a_reply_resolves(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")
    code = reply_code(await stack.pager.expect_sms("alice"))

    assert await stack.pager.reply_sms("alice", f"{code} resolve") == (
        f"Resolved {await label(stack, incident_id)}: disk full on db1"
    )
    assert (await stack.incident(incident_id)).status == RESOLVED
    assert (
        await stack.pager.reply_sms("alice", f"{code}a")
        == f"{await label(stack, incident_id)} is already resolved"
    )


async def test_keypress_6_resolves_and_other_keys_repeat_the_menu(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(VOICE, 0), (VOICE, 300)])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")
    call = await stack.pager.expect_voice("alice", contains="disk full on db1")

    again = await stack.pager.press(call, "9")
    assert "not an option" in " ".join(spoken_text(again))
    assert (await stack.incident(incident_id)).status == TRIGGERED

    answer = await stack.pager.press(call, "6")

    assert f"Resolved {await label(stack, incident_id)}" in " ".join(spoken_text(answer))
    incident = await stack.incident(incident_id)
    assert incident.status == RESOLVED
    assert incident.resolved_by == common_pb2.Actor(
        user_id="alice", channel=common_pb2.CHANNEL_VOICE
    )
    await stack.tick(minutes=10)
    await stack.pager.expect_no_more_pages()


async def test_keypress_4_acknowledges(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(VOICE, 0)])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")

    answer = await stack.pager.press(await stack.pager.expect_voice("alice"), "4")

    assert f"Acknowledged {await label(stack, incident_id)}" in " ".join(spoken_text(answer))
    assert (await stack.incident(incident_id)).status == ACKNOWLEDGED


async def test_an_acknowledgement_elsewhere_cancels_the_pending_rules(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60), (VOICE, 300)])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")

    await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(
            incident_id=incident_id,
            actor=common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display="bob"),
        )
    )
    assert await stack.drain_events() == 1  # the ACKNOWLEDGED event

    assert await stack.tick(minutes=10) == 0
    await stack.pager.expect_no_more_pages()


async def test_cancel_notifications_stops_every_pending_rule(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60), (VOICE, 300)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")

    reply = await stack.client.notification.CancelNotifications(
        notification_pb2.CancelNotificationsRequest(incident_id=incident_id)
    )

    assert reply.cancelled == 2
    assert await stack.tick(minutes=10) == 0
    await stack.pager.expect_no_more_pages()


async def test_a_rate_limited_send_is_retried_and_delivered_once(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    stack.fake.fail_next(2, status=429, code=20429)

    await stack.notify(incident_id, "alice")
    await advance_until(stack, lambda: bool(stack.fake.accepted()))

    await stack.pager.expect_sms("alice", contains="disk full")
    assert [r.http_status for r in stack.fake.requests] == [429, 429, 201]
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status == DELIVERED


async def test_a_permanent_error_moves_on_to_the_next_rule_at_once(stack: PagingStack) -> None:
    # Twilio's test number +15005550009 cannot receive SMS (21614) but can take a call.
    await stack.add_user("alice", "+15005550009", [(SMS, 0), (VOICE, 300)])
    incident_id = await stack.trigger("disk full on db1")

    await stack.notify(incident_id, "alice")

    await stack.pager.expect_voice("alice", contains="disk full")  # no waiting 5 minutes
    await stack.pager.expect_no_more_pages()
    sms, call = await stack.attempts(incident_id)
    assert (sms.status, sms.error_code) == (FAILED, 21614)
    assert call.rule_index == 1 and call.status == DELIVERED
    timeline = [e.message for e in (await stack.incident(incident_id)).timeline]
    assert any("SMS to alice (alice-sms) failed" in m and "21614" in m for m in timeline)
    assert await stack.tick(minutes=10) == 0
    await stack.pager.expect_no_more_pages()


async def test_a_repeated_notify_with_the_same_key_does_nothing(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    incident_id = await stack.trigger()
    first = await stack.notify(incident_id, "alice", key="k")
    await stack.pager.expect_sms("alice")

    again = await stack.notify(incident_id, "alice", key="k")

    assert (first.started, again.started, again.rules_scheduled) == (True, False, 0)
    await stack.pager.expect_no_more_pages()
    assert await stack.tick(minutes=1) == 1
    await stack.pager.expect_voice("alice")
    await stack.pager.expect_no_more_pages()


async def test_a_second_notify_replaces_the_users_cycle(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice", key="loop-0")
    await stack.pager.expect_sms("alice")
    stack.clock.advance(seconds=30)

    await stack.notify(incident_id, "alice", key="loop-1")

    await stack.pager.expect_sms("alice")  # the new cycle starts over
    assert await stack.tick(seconds=30) == 0  # the first cycle's call was cancelled
    await stack.pager.expect_no_more_pages()
    assert await stack.tick(seconds=30) == 1
    await stack.pager.expect_voice("alice")
    assert [a.rule_index for a in await stack.attempts(incident_id)] == [0, 0, 1]


async def test_stop_disables_text_pages_and_start_brings_them_back(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 300)])

    assert await stack.pager.reply_sms("alice", "STOP") == ""  # Twilio answers STOP itself

    settings = await stack.client.notification.GetUserNotificationSettings(
        notification_pb2.GetUserNotificationSettingsRequest(user_id="alice")
    )
    assert {m.id: m.disabled for m in settings.contact_methods} == {
        "alice-sms": True,
        "alice-voice": False,
    }
    incident_id = await stack.trigger()
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_voice("alice")  # the text rule is skipped: call at once
    await stack.pager.expect_no_more_pages()
    skipped = (await stack.attempts(incident_id))[0]
    assert (skipped.status, skipped.provider_status) == (FAILED, "contact method disabled (STOP)")

    assert await stack.pager.reply_sms("alice", "START") == ""
    later = await stack.trigger("another one")
    await stack.notify(later, "alice")
    await stack.pager.expect_sms("alice", contains="another one")


async def test_delivery_failures_are_recorded_on_the_attempt_and_the_timeline(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    stack.fake.set_sms_outcome(ALICE, "undelivered")
    incident_id = await stack.trigger()

    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")

    [attempt] = await stack.attempts(incident_id)
    assert (attempt.status, attempt.provider_status, attempt.error_code) == (
        FAILED,
        "undelivered",
        30003,
    )
    entries = (await stack.incident(incident_id)).timeline
    notes = [e for e in entries if e.kind == incidents_pb2.TIMELINE_KIND_NOTIFICATION]
    assert [e.attributes["status"] for e in notes] == ["undelivered"]
    assert all(ALICE not in e.message for e in entries)


# Notify naming the service (as escalation's does) takes the page's words from the script
# that records the attempt; without it, the page reads them first. Both must say the same.
NAMED_OR_NOT = pytest.mark.parametrize("service_id", ["", "payments-api"])


@NAMED_OR_NOT
async def test_the_page_reads_the_incident_even_before_its_event_arrives(
    stack: PagingStack, service_id: str
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger("queue backlog on kafka", mirror=False)

    await stack.notify(incident_id, "alice", service_id=service_id)

    sms = await stack.pager.expect_sms("alice", contains="[Payments API] queue backlog on kafka")
    assert sms.body is not None and sms.body.startswith(f"tocsin {await label(stack, incident_id)}")


@NAMED_OR_NOT
async def test_a_mirrored_incident_pages_with_its_number_summary_and_service_name(
    stack: PagingStack, service_id: str
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger("queue backlog on kafka")  # mirrored first
    number = (await stack.incident(incident_id)).number

    await stack.notify(incident_id, "alice", service_id=service_id)

    sms = await stack.pager.expect_sms("alice")
    assert sms.body is not None
    assert sms.body.startswith(f"tocsin #{number}: [Payments API] queue backlog on kafka - ")
    assert f"/i/{number}?s=" in sms.body
    attempts = await stack.attempts(incident_id)
    assert len(attempts) == 1 and attempts[0].status in (
        notification_pb2.ATTEMPT_STATUS_SENT,
        notification_pb2.ATTEMPT_STATUS_DELIVERED,
    )


@NAMED_OR_NOT
async def test_a_stale_mirror_does_not_stop_a_page_for_a_retriggered_incident(
    stack: PagingStack, service_id: str
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger()
    cli = common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display="bob")
    await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id, actor=cli)
    )
    await stack.drain_events()  # notification now believes: acknowledged
    await stack.client.incidents.Reassign(
        incidents_pb2.ReassignRequest(
            incident_id=incident_id,
            assignment=incidents_pb2.Assignment(user_id="alice"),
            actor=cli,
        )
    )  # triggered again; its event not yet seen

    await stack.notify(incident_id, "alice", service_id=service_id)

    await stack.pager.expect_sms("alice")


async def _lookups(stack: PagingStack, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The incidents the sender asks the incidents service for, from now on."""
    asked: list[str] = []
    peer = stack.parts.sender.incidents
    original = peer.get_incident

    async def spy(incident_id: str, **kwargs: Any) -> Any:
        asked.append(incident_id)
        return await original(incident_id, **kwargs)

    monkeypatch.setattr(peer, "get_incident", spy)
    return asked


async def test_a_young_incident_pages_with_the_words_notify_carried(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Escalation's Notify for the level its TRIGGERED event fired carries the incident's
    summary, number and creation: when the status mirror does not hold the incident yet,
    the page says those, without asking the incidents service (it did before, one
    GetIncident per such page; a third of first pages at 80 incidents/s)."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger("queue backlog on kafka", mirror=False)
    incident = await stack.incident(incident_id)
    asked = await _lookups(stack, monkeypatch)
    stack.clock.advance(seconds=2)

    await stack.notify(incident_id, "alice", service_id="payments-api", carry=incident)

    sms = await stack.pager.expect_sms("alice")
    assert sms.body is not None
    assert sms.body.startswith(f"tocsin #{incident.number}: [Payments API] queue backlog on kafka")
    assert f"/i/{incident.number}?s=" in sms.body
    await stack.settle()
    assert asked == []
    [attempt] = await stack.attempts(incident_id)
    assert attempt.status in (SENT, notification_pb2.ATTEMPT_STATUS_DELIVERED)


async def test_the_carried_words_of_an_older_incident_are_checked_first(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past CARRIED_WORDS_MAX_AGE_MS the carried words do not page by themselves while
    the mirror is empty: both consumers of the incident's events are behind, and a
    resolution may be queued behind its TRIGGERED event. The incidents service is asked,
    and a resolved incident pages nobody."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger("queue backlog on kafka", mirror=False)
    incident = await stack.incident(incident_id)
    await stack.client.incidents.Resolve(
        incidents_pb2.ResolveRequest(
            incident_id=incident_id,
            actor=common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display="bob"),
        )
    )  # its event not seen by notification either
    asked = await _lookups(stack, monkeypatch)
    stack.clock.advance(seconds=domain.CARRIED_WORDS_MAX_AGE_MS / 1000 + 0.001)

    await stack.notify(incident_id, "alice", service_id="payments-api", carry=incident)
    await stack.settle()

    await stack.pager.expect_no_more_pages()
    assert asked == [incident_id]
    # the answer (resolved) cancelled the user's cycle before its rule could be recorded
    assert await stack.attempts(incident_id) == []


async def test_carried_words_are_checked(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    incident_id = await stack.trigger(mirror=False)
    incident = await stack.incident(incident_id)
    incident.summary = "x" * (domain.MAX_INCIDENT_SUMMARY + 1)
    incident.number = -1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.notify(incident_id, "alice", service_id="payments-api", carry=incident)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "incident_summary" in details and "incident_number" in details
    await stack.settle()
    assert await stack.attempts(incident_id) == []  # nothing half-written
    await stack.pager.expect_no_more_pages()


async def test_notify_for_a_user_without_rules_warns_on_the_timeline(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [])
    incident_id = await stack.trigger()

    reply = await stack.notify(incident_id, "alice")
    await stack.settle()

    assert (reply.started, reply.rules_scheduled) == (True, 0)
    entries = (await stack.incident(incident_id)).timeline
    assert any(
        e.kind == incidents_pb2.TIMELINE_KIND_WARNING
        and "alice has no notification rules" in e.message
        for e in entries
    )


async def test_a_test_page_goes_through_each_contact_method(stack: PagingStack) -> None:
    await stack.add_user("bob", BOB, [], name="Bob Brown")

    reply = await stack.client.notification.SendTestPage(
        notification_pb2.SendTestPageRequest(user_id="bob")
    )

    await stack.pager.expect_sms("bob", contains="test page for Bob Brown")
    await stack.pager.expect_voice("bob", contains="test call for Bob Brown")
    assert sorted((a.contact_method_id, a.rule_index, a.status) for a in reply.attempts) == [
        ("bob-sms", -1, SENT),
        ("bob-voice", -1, SENT),
    ]


async def test_twilio_saying_the_person_opted_out_disables_texts_and_calls_at_once(
    stack: PagingStack,
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 300)])
    await stack.client.notification.UpdateContactMethod(  # Twilio's test number for 21610
        notification_pb2.UpdateContactMethodRequest(
            contact_method=notification_pb2.ContactMethod(
                id="alice-sms", user_id="alice", type=SMS, address="+15005550004"
            )
        )
    )
    incident_id = await stack.trigger()

    await stack.notify(incident_id, "alice")

    await stack.pager.expect_voice("alice")
    settings = await stack.client.notification.GetUserNotificationSettings(
        notification_pb2.GetUserNotificationSettingsRequest(user_id="alice")
    )
    assert {m.id: m.disabled for m in settings.contact_methods} == {
        "alice-sms": True,
        "alice-voice": False,
    }


async def test_a_storm_of_repeats_is_passed_over_and_an_ack_still_stops_the_page(
    stack: PagingStack,
) -> None:
    """ALERT_ADDED events leave the status mirror alone (no Redis call per repeat); the
    acknowledgement after them still cancels the pending call."""
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    incident_id = await stack.trigger("disk full on db1")
    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice")
    state = nkeys.incident_state(incident_id)
    mirrored = await stack.redis.hget(state, "v")
    assert mirrored is not None  # the TRIGGERED event was mirrored
    for _ in range(5):
        await stack.client.incidents.Trigger(
            incidents_pb2.TriggerRequest(
                service_id="payments-api", summary="disk full on db1", dedup_key="disk full on db1"
            )
        )
    assert await stack.drain_events() == 5
    assert await stack.redis.hget(state, "v") == mirrored
    await stack.client.incidents.Acknowledge(
        incidents_pb2.AcknowledgeRequest(incident_id=incident_id)
    )
    assert await stack.drain_events() == 1
    assert int(await stack.redis.hget(state, "v") or 0) > int(mirrored or 0)
    assert await stack.tick(seconds=60) == 0
    await stack.pager.expect_no_more_pages()


async def test_a_stale_service_name_pages_at_once_and_is_looked_up_for_the_next_pages(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's name is cached a few minutes. Past that, a page does not wait for
    the GetService call: it says the name it had, and the name is looked up in the
    background for the pages after it (a rename shows there)."""
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    peer = stack.parts.sender.incidents
    look_up = peer._look_up
    lookups: list[str] = []
    answer = asyncio.Event()
    answer.set()

    async def held(service_id: str) -> str:
        lookups.append(service_id)
        await answer.wait()
        return await look_up(service_id)

    monkeypatch.setattr(peer, "_look_up", held)
    first = await stack.trigger("queue backlog on kafka")
    await stack.notify(first, "alice", service_id="payments-api")
    await stack.pager.expect_sms("alice", contains="[Payments API] queue backlog on kafka")
    assert lookups == ["payments-api"]
    await stack.client.incidents.UpdateService(
        incidents_pb2.UpdateServiceRequest(
            service=incidents_pb2.Service(
                id="payments-api", name="Payments", escalation_policy_id="payments"
            )
        )
    )
    stack.clock.advance(minutes=6)  # past the cached name's few minutes
    answer.clear()  # GetService does not answer for now

    second = await stack.trigger("disk full on db1")
    await stack.notify(second, "alice", service_id="payments-api")
    # sent while the lookup is still unanswered, with the name it had
    await stack.pager.expect_sms("alice", contains="[Payments API] disk full on db1")
    assert lookups == ["payments-api", "payments-api"]
    answer.set()
    await asyncio.gather(*peer._refreshing.values())

    third = await stack.trigger("cpu hot on web3")
    await stack.notify(third, "alice", service_id="payments-api")
    await stack.pager.expect_sms("alice", contains="[Payments] cpu hot on web3")
    assert len(lookups) == 2  # the fresh name: no third lookup
