"""A hop claimed by the write that fired its level (the usual case): after its Notify
calls, its timeline notes and its timer's completion go in one Redis round trip on one
server (`TimerStore.complete_with`, a MULTI), one after the other on a Cluster. On the
standalone server and the 3-master Redis Cluster: the note reaches the timeline, the hop
is not sent again, and a hop with a user who cannot be reached keeps its report before
the completion."""

from __future__ import annotations

from redis.asyncio import RedisCluster

from tests.escalation.stack import FullStack, user
from tests.escalation.test_escalation import people, timeline, trigger
from tests.escalation.test_unreachable import nobody_to_call
from tests.redis_wire import recording_writes
from tocsin.runtime.timeline_outbox import STREAM_KEY


def _outbox_or_script(args: list[bytes]) -> bool:
    return args[0].upper() == b"EVALSHA" or (
        args[0].upper() == b"XADD" and args[1] == STREAM_KEY.encode()
    )


async def test_the_hops_notes_and_its_completion_are_one_round_trip(any_stack: FullStack) -> None:
    stack = any_stack
    await people(stack)
    await stack.policy(([user("bob")], 5), ([user("carol")], 5))

    with recording_writes(_outbox_or_script) as writes:
        incident_id = await trigger(stack)
        await stack.pager.expect_sms("bob")

    with_notes = [[c[0].upper() for c in w] for w in writes if [b"XADD", STREAM_KEY.encode()] in w]
    # (notification writes notes of its own: the delivery Twilio reports)
    together = [b"MULTI", b"XADD", b"EVALSHA", b"EXEC"]
    if isinstance(stack.paging.redis, RedisCluster):
        assert together not in with_notes and [b"XADD"] in with_notes
    else:
        assert with_notes.count(together) == 1
    assert "Escalation level 1 (loop 1) paged bob" in await timeline(stack, incident_id)
    await stack.tick(minutes=1)  # past the hop's lease: completed, so not sent again
    await stack.pager.expect_no_more_pages()
    await stack.tick(minutes=4)
    await stack.pager.expect_sms("carol")


async def test_a_hop_with_an_unreachable_user_reports_before_it_completes(
    any_stack: FullStack,
) -> None:
    stack = any_stack
    await people(stack)
    await nobody_to_call(stack, "zed")
    await stack.policy(([user("zed")], 5), ([user("carol")], 5))

    with recording_writes(_outbox_or_script) as writes:
        incident_id = await trigger(stack)
        await stack.pager.expect_sms("carol")  # zed cannot be reached: the next level now

    with_notes = [[c[0].upper() for c in w] for w in writes if [b"XADD", STREAM_KEY.encode()] in w]
    # zed's hop: its note alone, then the report; carol's hop: note and completion
    assert with_notes[0] == [b"XADD"]
    lines = await timeline(stack, incident_id)
    assert (
        "Escalation level 1 (loop 1) can reach nobody (zed has no contact method); moving on now"
        in lines
    )
