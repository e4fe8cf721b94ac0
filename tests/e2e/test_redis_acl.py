"""An external Redis with the least privileges the README documents: an ACL user allowed
only the commands tocsin sends (its Lua scripts run as that user too). The whole stack runs
on it: a trigger pages level 1 and then level 2, an acknowledged incident stops escalating,
and Redis denied no command (its ACL LOG stays empty but for redis-py's optional
CLIENT SETINFO, which redis-py ignores when refused)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.pager import minutes
from tests.e2e.paging_stack import paging_stack
from tocsin.runtime.embedded_redis import HOST, EmbeddedRedis

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
README = HERE.parents[1] / "README.md"
BURST_KEY = "8" * 32
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def documented_acl() -> list[str]:
    """The `ACL SETUSER tocsin ...` rules in the README, without the password."""
    match = re.search(r"ACL SETUSER tocsin on >\S+ (.*?)\n```", README.read_text(), re.S)
    assert match, "README: no ACL SETUSER tocsin block"
    return match.group(1).replace("\\\n", " ").split()


@pytest.fixture
def restricted_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis", require_password=True) as server:
        with server.client() as admin:
            admin.execute_command("ACL", "SETUSER", "tocsin", "on", ">tocsin-pw", *documented_acl())
        yield server


def test_the_stack_runs_on_the_documented_least_privilege_acl_user(
    tmp_path: Path, restricted_redis: EmbeddedRedis
) -> None:
    url = f"redis://tocsin:tocsin-pw@{HOST}:{restricted_redis.port}"
    with paging_stack(
        tmp_path,
        start=START,
        configs=(HERE / "chaos.yaml",),
        extra_env={"TOCSIN_REDIS_URL": url},
    ) as tocsin:
        pager = tocsin.pager()
        pager.person("quinn", "+12025550141")
        pager.person("rosa", "+12025550142")
        triggered = tocsin.now()
        tocsin.enqueue(BURST_KEY, "trigger", "one", "disk full")
        pager.expect_sms("quinn", "disk full")
        pager.expect_sms("rosa", "disk full", not_before=triggered + minutes(1))
        tocsin.enqueue(BURST_KEY, "trigger", "two", "cpu hot")
        pager.expect_sms("quinn", "cpu hot")
        tocsin.enqueue(BURST_KEY, "acknowledge", "two")
        pager.expect_no_more_pages(until=tocsin.now() + minutes(2))
    with restricted_redis.client() as admin:
        denied = [
            entry for entry in admin.execute_command("ACL", "LOG") if entry[b"object"] != b"client"
        ]
    assert denied == []
