"""`tocsin history search`, `similar`, `report`, `postmortem` and `history rebuild`, run
in-process against the whole stack with the history service (SQLite archive)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli_runner import as_json, run_cli
from tests.escalation.stack import user
from tests.history.stack import HistoryStack, history_stack
from tests.history.test_archive import certbot_incident, expire_in_redis, resolve, trigger
from tests.notification.stack import ALICE, BOB, SMS
from tocsin.runtime.redis import RedisClient


@pytest.fixture
async def stack(redis: RedisClient, tmp_path: Path) -> AsyncIterator[HistoryStack]:
    async with history_stack(redis, f"sqlite:///{tmp_path / 'archive.sqlite3'}") as stack:
        await stack.full.paging.add_user("alice", ALICE, [(SMS, 0)])
        await stack.full.paging.add_user("bob", BOB, [(SMS, 0)])
        await stack.full.policy(([user("alice")], 5), ([user("bob")], 10))
        yield stack
        await stack.run_until_quiet()
        stack.full.pager.check_all_expected()


async def tocsin(
    stack: HistoryStack, monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[int, str, str]:
    return await run_cli(monkeypatch, stack.targets, *argv)


async def test_search_similar_report_postmortem(
    stack: HistoryStack, redis: RedisClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = await certbot_incident(stack)
    old_n = (await stack.full.paging.incident(old)).number  # what people read and type
    await expire_in_redis(redis, old)
    await stack.tick(hours=2)
    new = await trigger(stack, "TLS certificate of www expires in 2 days", "cert-expiry")
    new_n = (await stack.full.paging.incident(new)).number
    assert 0 < old_n < new_n and str(old_n) != old  # numbers, not ids, from here on
    await stack.full.pager.expect_sms("alice", "2 days")

    code, out, err = await tocsin(stack, monkeypatch, "history", "search", "certbot", "--json")
    assert (code, err) == (0, "")
    (found,) = as_json(out)
    assert found["id"] == old and found["number"] == old_n
    assert found["service"] == "payments-api"
    assert found["status"] == "resolved"
    assert [n["text"] for n in found["notes"]] == ["restarted certbot"]
    assert found["seconds_to_acknowledge"] == 120 and found["seconds_to_resolve"] == 360

    code, out, _ = await tocsin(stack, monkeypatch, "history", "search", "certbot")
    lines = out.splitlines()
    assert lines[0].split() == ["#", "SERVICE", "OPENED", "STATUS", "SUMMARY", "LAST", "NOTE"]
    assert lines[1].startswith(f"#{old_n} ") and "restarted certbot" in lines[1]
    code, out, _ = await tocsin(
        stack, monkeypatch, "history", "search", "certbot", "--service", "other"
    )
    assert (code, out) == (0, "no incidents found\n")

    code, out, _ = await tocsin(stack, monkeypatch, "similar", f"#{new_n}")
    assert code == 0
    first, note_line = out.splitlines()[:2]
    assert first.startswith(f"#{old_n} ")
    assert "[same dedup key; resolved by alice after 6m]" in first
    assert note_line.strip() == "note (alice): restarted certbot"
    code, out, _ = await tocsin(stack, monkeypatch, "similar", str(new_n), "--json")
    assert [(s["id"], s["reason"]) for s in as_json(out)] == [(old, "same dedup key")]

    code, out, _ = await tocsin(stack, monkeypatch, "postmortem", str(old_n))  # archived only
    assert code == 0
    assert out.startswith(f"# Postmortem: #{old_n} TLS certificate of www expires in 3 days\n")
    assert "- Time to acknowledge: 2m (" in out and "- Time to resolve: 6m (" in out
    assert "| 2026-11-27T03:00:00Z | alice | 1 | 1 |" in out  # who was paged, when
    assert "restarted certbot" in out.split("## Notes")[1]
    for heading in ("## Timeline", "## Similar past incidents", "## Causes", "## Actions"):
        assert heading in out
    assert out.split("## Causes\n")[1].startswith("\n\n## ")  # left empty to fill in
    draft = tmp_path / "pm.md"
    code, _, err = await tocsin(stack, monkeypatch, "postmortem", f"#{new_n}", "-o", str(draft))
    assert code == 0 and f"written to {draft}" in err
    similar_part = draft.read_text().split("## Similar past incidents")[1]
    assert f"#{old_n}" in similar_part and "last note: restarted certbot" in similar_part

    await stack.tick(minutes=2)
    await resolve(stack, new)
    await stack.tick(minutes=1)
    chart = tmp_path / "report.svg"
    code, out, _ = await tocsin(stack, monkeypatch, "report", "--json", "--chart", str(chart))
    assert code == 0
    report = as_json(out)
    assert report["total"]["incidents"] == 2
    assert report["total"]["mtta_median_s"] == 120  # both acknowledged/resolved at 2 minutes
    assert report["people"][0]["user"] == "alice" and report["people"][0]["nights"] == 2
    svg = chart.read_text()
    assert svg.startswith("<svg") and "MTTA and MTTR per week" in svg
    # alice was paged at 03:00 and 05:06 London time
    assert "alice 03: 1</title>" in svg and "alice 05: 1</title>" in svg

    code, out, _ = await tocsin(stack, monkeypatch, "report", "--csv", "--service", "payments-api")
    rows = list(csv.DictReader(io.StringIO(out)))
    total = next(r for r in rows if r["section"] == "total")
    assert (total["incidents"], total["mtta_median_s"], total["pages"]) == ("2", "120.0", "2")
    assert {r["user"] for r in rows if r["section"] == "person"} == {"alice"}

    code, out, _ = await tocsin(stack, monkeypatch, "report")
    assert "payments-api" in out and "PERSON" in out

    png = tmp_path / "report.png"
    code, _, _ = await tocsin(stack, monkeypatch, "report", "--chart", str(png))
    assert code == 0 and png.read_bytes().startswith(b"\x89PNG")

    code, out, _ = await tocsin(stack, monkeypatch, "history", "rebuild", "--json")
    assert code == 0 and as_json(out)["events"] >= 6


async def test_bad_input_is_refused_naming_the_field(
    stack: HistoryStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = await tocsin(stack, monkeypatch, "similar", "abc")
    assert code == 2 and "expected an incident number like 18 or #18" in err
    code, _, err = await tocsin(stack, monkeypatch, "postmortem", "99999")
    assert code == 1 and len(err.splitlines()) == 1 and "not in the archive" in err
    code, _, err = await tocsin(stack, monkeypatch, "report", "--chart", "x.gif")
    assert code == 2 and ".svg or .png" in err
    code, _, err = await tocsin(stack, monkeypatch, "history", "search", "x", "--limit", "9999")
    assert code == 1 and err.startswith("error: INVALID_ARGUMENT: page_size: must be")
