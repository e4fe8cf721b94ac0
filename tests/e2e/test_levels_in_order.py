"""Levels in order across real processes (issue 19): `tocsin up` with one SMS per number
every 10 s (TOCSIN_NUMBER_SEND_INTERVAL), and a storm of 12 incidents at once that all page
quinn first and rosa a minute later (chaos.yaml). quinn's SMS queue up for almost two
minutes; rosa's number is free. For every incident rosa's SMS still comes after quinn's,
at least the level's minute after it, and each of them gets exactly one SMS per incident.
On the old code rosa's level fired on time and she was paged first for the incidents whose
SMS to quinn waited more than a minute."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.pager import minutes
from tests.e2e.paging_stack import paging_stack

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
BURST_KEY = "8" * 32
"""chaos.yaml's burst-api: quinn at once, rosa one minute later."""
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
INCIDENTS = 12


def test_a_backlogged_first_level_keeps_every_incidents_levels_in_order(tmp_path: Path) -> None:
    with paging_stack(
        tmp_path,
        start=START,
        configs=(HERE / "chaos.yaml",),
        extra_env={"TOCSIN_NUMBER_SEND_INTERVAL": "10s"},
    ) as tocsin:
        pager = tocsin.pager()
        pager.person("quinn", "+12025550141")
        pager.person("rosa", "+12025550142")
        started = tocsin.now()
        texts = [f"storm {i:02d}: disk full" for i in range(INCIDENTS)]
        for i, text in enumerate(texts):
            tocsin.enqueue(BURST_KEY, "trigger", f"storm-{i:02d}", text)

        quinn = pager.expect_sms_each("quinn", texts)
        rosa = pager.expect_sms_each("rosa", texts, not_before=started + minutes(1))

        # the backlog was real: quinn's last SMS left well after rosa's level was due
        assert max(p.at for p in quinn) >= started + minutes(1.5)
        for text, first, second in zip(texts, quinn, rosa, strict=True):
            assert second.at > first.at, f"{text}: rosa was paged before quinn"
            assert second.at >= first.at + minutes(1), f"{text}: rosa's level came early"
        # both levels fired, the policy is exhausted: nothing more, nothing twice
        pager.expect_no_more_pages(until=max(p.at for p in rosa) + minutes(3))
