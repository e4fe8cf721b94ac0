"""A fired level's timeline notes: on one Redis server the write that fires the level adds
them to the timeline outbox itself (write_escalation.lua, as it adds the pages to the page
stream); on a Cluster, where the outbox is in another slot, a hop timer claimed by that
write carries them, and its notes and its completion go one after the other. On the
standalone server and the 3-master Redis Cluster: the note reaches the timeline, nothing
is sent again, and a level with a user who cannot be reached moves on with its notes in
order. A hop armed with its pages by an older version still sends them."""

from __future__ import annotations

from redis.asyncio import RedisCluster

from tests.escalation.stack import FullStack, user
from tests.escalation.test_escalation import people, timeline, trigger
from tests.escalation.test_unreachable import nobody_to_call
from tests.redis_wire import recording_writes
from tocsin.escalation.codec import HopPage, HopPayload
from tocsin.runtime.timeline_outbox import STREAM_KEY
from tocsin.v1 import incidents_pb2


def _outbox_or_script(args: list[bytes]) -> bool:
    return args[0].upper() == b"EVALSHA" or (
        args[0].upper() == b"XADD" and args[1] == STREAM_KEY.encode()
    )


async def test_the_levels_notes_go_with_its_write_or_with_its_hops_completion(
    any_stack: FullStack,
) -> None:
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
    else:  # in the write's script (write_escalation.lua): no hop, no XADD of its own
        assert together not in with_notes
    assert "Escalation level 1 (loop 1) paged bob" in await timeline(stack, incident_id)
    await stack.tick(minutes=1)  # past the hop's lease: completed, so not sent again
    await stack.pager.expect_no_more_pages()
    await stack.tick(minutes=4)
    await stack.pager.expect_sms("carol")


async def test_a_level_whose_user_cannot_be_reached_moves_on_with_its_notes(
    any_stack: FullStack,
) -> None:
    """notification, starting zed's page from the page stream, reports zed unreachable
    (ReportUnreachable) before acknowledging it: the next level fires now, and the
    timeline has the level's note and then the one that says why it moved on."""
    stack = any_stack
    await people(stack)
    await nobody_to_call(stack, "zed")
    await stack.policy(([user("zed")], 5), ([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("carol")  # zed cannot be reached: the next level now
    lines = await timeline(stack, incident_id)
    fired = lines.index("Escalation level 1 (loop 1) paged zed")
    moved = lines.index(
        "Escalation level 1 (loop 1) can reach nobody (zed has no contact method); moving on now"
    )
    assert fired < moved


async def test_a_hop_armed_with_its_pages_before_the_page_stream_still_sends_them(
    stack: FullStack,
) -> None:
    """A hop written by a version that kept the pages in the hop (before the page stream)
    is still sent by the shard's worker: its pages through Notify, then its notes, once."""
    await people(stack)
    await stack.policy(([user("carol")], 5))
    incident_id = await trigger(stack)
    await stack.pager.expect_sms("carol")
    engine = stack.escalation.engine
    assert engine is not None
    note = {"kind": incidents_pb2.TIMELINE_KIND_NOTE, "message": "an older version's hop"}
    payload = HopPayload(incident_id, 0, (HopPage(0, 0, "bob", ""),), (note,), "")
    await engine.store.timers.arm(
        f"hop:{incident_id}:0:9:0", stack.paging.clock.now_ms(), payload.encode().encode()
    )
    await stack.run_until_quiet()
    await stack.pager.expect_sms("bob")
    await stack.tick(minutes=1)  # completed: not sent again
    await stack.pager.expect_no_more_pages()
    assert (await timeline(stack, incident_id)).count("an older version's hop") == 1
