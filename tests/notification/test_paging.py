"""Paging one person for an incident, as they live it: texts, calls, replies, keypresses."""

from __future__ import annotations

from tests.notification.stack import ALICE, SMS, VOICE, PagingStack
from tocsin.v1 import notification_pb2


async def test_sms_at_once_and_a_call_after_the_rules_delay(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)])
    incident_id = await stack.trigger("disk full on db1")

    reply = await stack.notify(incident_id, "alice")

    assert (reply.started, reply.rules_scheduled) == (True, 2)
    sms = await stack.pager.expect_sms("alice", contains="disk full on db1")
    assert "[Payments API]" in (sms.body or "")
    await stack.pager.expect_no_more_pages()

    assert await stack.tick(seconds=59) == 0
    await stack.pager.expect_no_more_pages()
    assert await stack.tick(seconds=1) == 1
    await stack.pager.expect_voice("alice", contains="disk full on db1")
    await stack.pager.expect_no_more_pages()
    attempts = await stack.attempts(incident_id)
    assert [(a.type, a.rule_index, a.status) for a in attempts] == [
        (SMS, 0, notification_pb2.ATTEMPT_STATUS_DELIVERED),
        (VOICE, 1, notification_pb2.ATTEMPT_STATUS_DELIVERED),
    ]
