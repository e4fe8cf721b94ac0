"""`tocsin users`, `tocsin user ID`, `tocsin test-page USER` and `tocsin handoff-notices`
against the real services."""

from __future__ import annotations

import pytest

from tests.cli_runner import as_json, run_cli
from tests.notification.stack import ALICE, BOB, SMS, VOICE, PagingStack
from tocsin.v1 import scheduling_pb2


def targets(stack: PagingStack) -> dict[str, str]:
    endpoints = stack.client.endpoints
    return {
        "scheduling": endpoints.scheduling,
        "incidents": endpoints.incidents,
        "notification": endpoints.notification,
    }


async def test_users_lists_everyone(stack: PagingStack, monkeypatch: pytest.MonkeyPatch) -> None:
    await stack.add_user("bob", BOB, [], name="Bob Brown")
    await stack.add_user("alice", ALICE, [], name="Alice Adams")

    code, out, _ = await run_cli(monkeypatch, targets(stack), "users", "--json")
    assert code == 0
    assert as_json(out) == [
        {"id": "alice", "name": "Alice Adams", "time_zone": "Europe/London"},
        {"id": "bob", "name": "Bob Brown", "time_zone": "Europe/London"},
    ]
    code, out, _ = await run_cli(monkeypatch, targets(stack), "users")
    assert code == 0 and out.splitlines()[1].split() == ["alice", "Alice", "Adams", "Europe/London"]


async def test_user_shows_masked_numbers_and_rules(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0), (VOICE, 60)], name="Alice Adams")
    await stack.pager.reply_sms("alice", "STOP")

    code, out, _ = await run_cli(monkeypatch, targets(stack), "user", "alice", "--json")
    assert code == 0
    assert as_json(out) == {
        "id": "alice",
        "name": "Alice Adams",
        "time_zone": "Europe/London",
        "contact_methods": [
            {"id": "alice-sms", "type": "sms", "address": "+1******0010", "disabled": True},
            {"id": "alice-voice", "type": "voice", "address": "+1******0010", "disabled": False},
        ],
        "rules": [
            {"contact_method": "alice-sms", "type": "sms", "delay_seconds": 0},
            {"contact_method": "alice-voice", "type": "voice", "delay_seconds": 60},
        ],
        "handoff_notices": [],
    }
    code, out, _ = await run_cli(monkeypatch, targets(stack), "user", "alice")
    assert code == 0 and ALICE not in out
    assert "disabled (STOP)" in out and "after   1m  alice-voice (voice)" in out


async def test_user_that_does_not_exist(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = await run_cli(monkeypatch, targets(stack), "user", "zed")
    assert code == 1 and "NOT_FOUND" in err


async def test_test_page_reports_each_contact_method(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.add_user("bob", BOB, [])

    code, out, _ = await run_cli(monkeypatch, targets(stack), "test-page", "bob")

    assert code == 0
    assert sorted(out.splitlines()) == ["sms via bob-sms: sent", "voice via bob-voice: sent"]
    await stack.pager.expect_sms("bob", contains="test page")
    await stack.pager.expect_voice("bob", contains="test call")


async def test_handoff_notices_are_shown_and_set_as_the_api_checks_them(
    stack: PagingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])

    async def stored() -> list[str]:
        reply = await stack.client.scheduling.GetUser(scheduling_pb2.GetUserRequest(id="alice"))
        return list(reply.user.handoff_notices)

    code, out, _ = await run_cli(monkeypatch, targets(stack), "handoff-notices", "alice")
    assert (code, out) == (0, "alice: hand-off notices: none\n")
    code, out, _ = await run_cli(
        monkeypatch, targets(stack), "handoff-notices", "alice", "--set", "start, day_before"
    )
    assert (code, out) == (0, "alice: hand-off notices: start, day_before\n")
    assert await stored() == ["start", "day_before"]

    # A wrong kind is refused by SetHandoffNotices naming it; nothing is written.
    code, _, err = await run_cli(
        monkeypatch, targets(stack), "handoff-notices", "alice", "--set", "end,lunch"
    )
    assert code == 1 and "notices[1]" in err and "lunch" in err
    assert await stored() == ["start", "day_before"]

    code, out, _ = await run_cli(monkeypatch, targets(stack), "handoff-notices", "alice", "--json")
    assert (code, as_json(out)) == (
        0,
        {"user": "alice", "handoff_notices": ["start", "day_before"]},
    )
    code, out, _ = await run_cli(monkeypatch, targets(stack), "user", "alice")
    assert code == 0 and "Hand-off notices: start, day_before" in out
    code, out, _ = await run_cli(monkeypatch, targets(stack), "handoff-notices", "alice", "--off")
    assert (code, out) == (0, "alice: hand-off notices: none\n")
    assert await stored() == []
