"""Acceptance: what the on-call engineer lives through, on the real stack.

`tocsin up` runs every service and the gateway as separate processes on one Redis; Twilio
is `tocsin fake-twilio` in its own process; every process shares a clock running 60 times
faster than the wall (a virtual minute per real second); see conftest.py. Scenario 1 uses
the example configuration as it stands; the others each have their own service, policy
and people (acceptance.yaml). Any page that no scenario expected fails the session.

At the virtual start, Friday 2026-11-27 09:00Z (04:00 in New York), alice is on call for
`primary` and bob for `secondary`.
"""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from tests.e2e.otlp import OtlpCollector, ReceivedSpan
from tests.e2e.pager import minutes, reply_code
from tests.e2e.paging_stack import PAYMENTS_KEY, PagingStack
from tocsin.runtime.clock import ms_to_datetime
from tocsin.v1 import escalation_pb2, incidents_pb2, scheduling_pb2

pytestmark = pytest.mark.slow

ALICE, BOB, CAROL, DAVE = "+15005550006", "+447400123456", "+61491570156", "+12025550143"
CHECKOUT_KEY = "1" * 32
SEARCH_KEY = "2" * 32
BILLING_KEY = "3" * 32
STORAGE_KEY = "4" * 32
NIGHT_BATCH_KEY = "5" * 32
TRACING_KEY = "6" * 32


def rfc3339(ms: int) -> str:
    return ms_to_datetime(ms).isoformat()


def on_call(tocsin: PagingStack, schedule_id: str) -> tuple[str, int]:
    request = scheduling_pb2.WhoIsOnCallRequest(schedule_id=schedule_id)
    request.at.FromMilliseconds(tocsin.now())
    shift = tocsin.client.scheduling.WhoIsOnCall(request).shift
    return shift.user_id, shift.source


def test_an_alert_pages_the_on_call_by_sms_then_voice_then_the_next_level_until_a_reply_acks(
    tocsin: PagingStack,
) -> None:
    pager = tocsin.pager()
    for name, number in (("alice", ALICE), ("bob", BOB), ("carol", CAROL), ("dave", DAVE)):
        pager.person(name, number)

    triggered = tocsin.now()
    tocsin.enqueue(PAYMENTS_KEY, "trigger", "db1-disk", "disk full on db1")

    pager.expect_sms("alice", "disk full on db1")
    pager.expect_voice("alice", "disk full on db1", not_before=triggered + minutes(1))
    level_2 = triggered + minutes(5)  # level 1 of `payments` has 5 minutes
    bob_sms = pager.expect_sms("bob", "disk full on db1", not_before=level_2)
    pager.expect_sms("dave", "disk full on db1", not_before=level_2)
    pager.expect_voice("alice", "disk full on db1", not_before=triggered + minutes(5))

    incident = tocsin.incident("payments-api", "db1-disk")
    answer = pager.reply_sms("bob", f"{reply_code(bob_sms)}a")
    assert answer.startswith(f"Acknowledged #{incident.number}")
    # bob's call was due 2 minutes after his SMS, and the policy loops after 10
    pager.expect_no_more_pages(until=bob_sms.at + minutes(2.5))

    shown = tocsin.cli_json("incident", str(incident.number))
    assert shown["status"] == "acknowledged"
    assert shown["acknowledged_by"] == "bob (sms)"
    steps = [(entry["kind"], entry["message"]) for entry in shown["timeline"]]
    messages = [message for _, message in steps]
    assert steps[0] == ("triggered", "Triggered: disk full on db1")
    level_1 = messages.index("Escalation level 1 (loop 1) paged alice (schedule primary)")
    level_2 = messages.index("Escalation level 2 (loop 1) paged bob (schedule secondary), dave")
    acked = messages.index("Acknowledged by bob")
    assert level_1 < level_2 < acked
    pages = sorted(m.rsplit(")", 1)[0] + ")" for kind, m in steps if kind == "notification")
    assert pages == [
        "SMS to alice (alice-sms)",
        "SMS to bob (bob-sms)",
        "SMS to dave (dave-sms)",
        "Voice call to alice (alice-voice)",
        "Voice call to alice (alice-voice)",
    ]
    assert tocsin.escalation(incident.id).status == escalation_pb2.ESCALATION_STATUS_STOPPED


def test_a_resolve_event_stops_everything(tocsin: PagingStack) -> None:
    pager = tocsin.pager()
    pager.person("erin", "+12025550111")  # SMS now, a call after 2 minutes
    pager.person("frank", "+12025550112")  # level 2, after 3 minutes

    tocsin.enqueue(CHECKOUT_KEY, "trigger", "cart-500s", "checkout answers 500")
    sms = pager.expect_sms("erin", "checkout answers 500")
    reply = tocsin.enqueue(CHECKOUT_KEY, "resolve", "cart-500s")
    assert reply["dedup_key"] == "cart-500s"

    pager.expect_no_more_pages(until=sms.at + minutes(3.5))
    incident = tocsin.incident("checkout-api", "cart-500s")
    assert incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED
    assert tocsin.escalation(incident.id).status == escalation_pb2.ESCALATION_STATUS_STOPPED


def test_repeats_of_an_open_alert_page_nobody_again(tocsin: PagingStack) -> None:
    pager = tocsin.pager()
    pager.person("grace", "+12025550113")  # SMS now, a call after 1 minute

    triggered = tocsin.now()
    tocsin.enqueue(SEARCH_KEY, "trigger", "index-lag", "search index 20 min behind")
    pager.expect_sms("grace", "search index 20 min behind")
    for _ in range(3):
        tocsin.enqueue(SEARCH_KEY, "trigger", "index-lag", "search index 20 min behind")
    call = pager.expect_voice("grace", not_before=triggered + minutes(1))

    incident = tocsin.incident("search-api", "index-lag")
    assert incident.alert_count == 4
    assert "acknowledged" in pager.press(call, "4").lower()
    pager.expect_no_more_pages(until=call.at + minutes(1))
    assert tocsin.incident_by_id(incident.id).status == incidents_pb2.INCIDENT_STATUS_ACKNOWLEDGED


def test_a_snooze_silences_paging_until_it_ends_then_paging_starts_over(
    tocsin: PagingStack,
) -> None:
    pager = tocsin.pager()
    pager.person("heidi", "+12025550114")  # level 1 for 2 minutes
    pager.person("ivan", "+12025550115")  # level 2

    tocsin.enqueue(BILLING_KEY, "trigger", "invoices-stuck", "invoices stuck in queue")
    first = pager.expect_sms("heidi", "invoices stuck in queue")
    incident = tocsin.incident("billing-api", "invoices-stuck")
    snoozed = tocsin.client.incidents.Snooze(
        incidents_pb2.SnoozeRequest(incident_id=incident.id, duration=Duration(seconds=180))
    ).incident
    until = snoozed.snoozed_until.ToMilliseconds()
    assert until >= first.at + minutes(3)

    # ivan's level would have come 2 minutes after heidi's page; the snooze holds it,
    # and when it ends the escalation starts over at level 1
    again = pager.expect_sms("heidi", "invoices stuck in queue", not_before=until)
    tocsin.enqueue(BILLING_KEY, "resolve", "invoices-stuck")
    pager.expect_no_more_pages(until=again.at + minutes(2.5))
    lines = tocsin.timeline(incident.id)
    assert sum(line.startswith("Escalation level 1 (loop 1) paged heidi") for line in lines) == 2


def test_an_override_changes_who_is_paged(tocsin: PagingStack) -> None:
    pager = tocsin.pager()
    pager.person("judy", "+12025550116")  # on call for storage-primary every week
    pager.person("ken", "+12025550117")

    assert on_call(tocsin, "storage-primary") == ("judy", scheduling_pb2.SHIFT_SOURCE_LAYER)
    tocsin.enqueue(STORAGE_KEY, "trigger", "disk-1", "volume 1 degraded")
    pager.expect_sms("judy", "volume 1 degraded")
    tocsin.enqueue(STORAGE_KEY, "resolve", "disk-1")

    now = tocsin.now()
    tocsin.cli_json(
        "override",
        "storage-primary",
        "--user",
        "ken",
        "--from",
        rfc3339(now - minutes(1)),
        "--to",
        rfc3339(now + minutes(120)),
    )
    assert on_call(tocsin, "storage-primary") == ("ken", scheduling_pb2.SHIFT_SOURCE_OVERRIDE)
    tocsin.enqueue(STORAGE_KEY, "trigger", "disk-2", "volume 2 degraded")
    sms = pager.expect_sms("ken", "volume 2 degraded")
    tocsin.enqueue(STORAGE_KEY, "resolve", "disk-2")
    pager.expect_no_more_pages(until=sms.at + minutes(1))


def test_a_schedule_with_nobody_on_call_moves_on_to_the_next_level_and_says_why(
    tocsin: PagingStack,
) -> None:
    pager = tocsin.pager()
    pager.person("mia", "+12025550119")  # on the nights schedule, which starts in 2030
    pager.person("leo", "+12025550118")

    triggered = tocsin.now()
    tocsin.enqueue(NIGHT_BATCH_KEY, "trigger", "etl-late", "nightly ETL late")
    sms = pager.expect_sms("leo", "nightly ETL late")
    assert sms.at < triggered + minutes(5), "level 2 waited for level 1's 5 minutes"

    incident = tocsin.incident("night-batch", "etl-late")
    lines = tocsin.timeline(
        incident.id,
        "Escalation level 1 (loop 1) paged nobody",
        "Escalation level 2 (loop 1) paged leo",
    )
    assert any("Schedule nights had nobody on call" in line for line in lines)
    tocsin.enqueue(NIGHT_BATCH_KEY, "resolve", "etl-late")
    pager.expect_no_more_pages(until=sms.at + minutes(1))


def test_one_escalation_is_one_trace_from_the_ingest_to_the_twilio_request(
    tocsin: PagingStack, collector: OtlpCollector
) -> None:
    pager = tocsin.pager()
    pager.person("nina", "+12025550120")
    tocsin.enqueue(TRACING_KEY, "trigger", "traced", "one trace please")
    pager.expect_sms("nina", "one trace please")
    incident = tocsin.incident("tracing-api", "traced")

    def of_incident(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
        named = {
            s.name: s
            for s in spans
            if s.attributes.get("incident.id") == incident.id
            and s.name in ("escalation.start", "escalation.level", "notification.send")
        }
        return named if len(named) == 3 else {}

    spans = collector.wait_for(of_incident, 15, f"escalation spans of #{incident.id}")
    trace_id = spans["escalation.start"].trace_id
    assert {s.trace_id for s in spans.values()} == {trace_id}
    assert spans["escalation.start"].service == "tocsin-escalation"
    assert spans["notification.send"].service == "tocsin-notification"
    assert spans["notification.send"].attributes["notification.channel"] == "sms"
    trigger = "/tocsin.v1.IncidentService/TriggerBatch"  # the gateway batches triggers
    hops = {
        ("tocsin-gateway", trigger),  # the Events API request, as the gateway's gRPC call
        ("tocsin-incidents", trigger),  # the ingest
        ("tocsin-escalation", "escalation.start"),
        ("tocsin-escalation", "escalation.level"),
        ("tocsin-notification", "notification.send"),
        ("tocsin-notification", "twilio.messages.create"),
    }

    def in_the_trace(received: list[ReceivedSpan]) -> bool:
        return hops <= {(s.service, s.name) for s in received if s.trace_id == trace_id}

    collector.wait_for(in_the_trace, 15, f"every hop in trace {trace_id}")
    everything = [s for s in collector.received() if s.trace_id == trace_id]
    assert not any("2025550120" in str(v) for s in everything for v in s.attributes.values())
    tocsin.enqueue(TRACING_KEY, "resolve", "traced")
    pager.expect_no_more_pages(until=tocsin.now())
