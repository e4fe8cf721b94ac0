"""Named script arguments (runtime/scripts.py): each script's header is the one
declaration of its ARGV, callers pass them by name, and a header that disagrees with its
body or a caller that disagrees with its header fails before anything is sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from tocsin.escalation import store as escalation_store
from tocsin.runtime import timers
from tocsin.runtime.scripts import LuaScript, declared_argv
from tocsin.scheduling import store as scheduling_store

SERVICES = Path(__file__).resolve().parents[2] / "services" / "tocsin"
LIBRARIES = {"proto_constants.lua"}
NOT_YET_NAMED: frozenset[str] = frozenset()
"""Scripts whose callers still pass ARGV by position: none left (issue 11 item 14)."""
_ARGV_USE = re.compile(r"ARGV\[(\d+)\]")


def _scripts() -> list[Path]:
    return sorted(
        p
        for p in SERVICES.glob("*/lua/*.lua")
        if not p.name.endswith("_lib.lua") and p.name not in LIBRARIES
    )


def _code(body: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in body.splitlines())


def _inline_scripts() -> dict[str, str]:
    """The scripts kept as strings in Python modules."""
    return {
        "escalation.store._CREATE_POLICY": escalation_store._CREATE_POLICY,
        "escalation.store._UPDATE_POLICY": escalation_store._UPDATE_POLICY,
        "scheduling.store._CREATE_USER": scheduling_store._CREATE_USER,
        **{
            f"runtime.timers.{name}": getattr(timers, name)
            for name in (
                "_ARM",
                "_CANCEL",
                "_COMPLETE",
                "_CLAIM",
                "_CLAIM_DUE",
                "_REAP",
                "_NEXT_WAKE",
                "_PENDING",
            )
        },
    }


@pytest.mark.parametrize("name", sorted(_inline_scripts()))
def test_every_inline_script_declares_the_argv_its_body_uses(name: str) -> None:
    _check_header(name, _inline_scripts()[name])


@pytest.mark.parametrize("path", _scripts(), ids=lambda p: str(p.relative_to(SERVICES)))
def test_every_script_declares_the_argv_its_body_uses(path: Path) -> None:
    name = str(path.relative_to(SERVICES))
    body = path.read_text(encoding="utf-8")
    if name in NOT_YET_NAMED:
        assert declared_argv(body) is None, (
            f"{name} declares its ARGV now: take it off NOT_YET_NAMED"
        )
        return
    _check_header(name, body)


def _check_header(name: str, body: str) -> None:
    argv = declared_argv(body)
    assert argv is not None, f"{name} has no `-- ARGV:` header"
    used = {int(i) for i in _ARGV_USE.findall(_code(body))}
    fixed = len(argv) - 1 if argv and argv[-1].endswith("...") else len(argv)
    if fixed < len(argv):
        used = {i for i in used if i <= fixed}  # the rest is read in a loop
    assert used == set(range(1, fixed + 1)), (
        f"{name} declares {len(argv)} ARGV ({', '.join(argv)}) but uses ARGV{sorted(used)}"
    )


def test_the_header_is_parsed_in_order_with_a_rest_argument() -> None:
    body = (
        "-- Does things.\n-- KEYS: one\n-- ARGV:\n--   tag      a tag\n--   now_ms\n"
        "--            and its description, continued\n"
        "--   ids...   the rest\n-- Returns 1.\nreturn 1\n"
    )
    assert declared_argv(body) == ("tag", "now_ms", "ids...")
    assert declared_argv("-- ARGV: none\nreturn 1") == ()
    assert declared_argv("-- KEYS: one\nreturn 1") is None
    with pytest.raises(ValueError, match="twice"):
        declared_argv("-- ARGV:\n--   a\n--   a\nreturn 1")


_ECHO = """-- Echo ARGV.
-- ARGV:
--   first    anything
--   second
--   rest...  more
return ARGV
"""


async def test_named_arguments_arrive_in_the_declared_order(redis: Redis) -> None:
    script = LuaScript(redis, "echo.lua", body=_ECHO)

    reply = await script([], rest=["c", "d"], second=2, first="a")

    assert reply == [b"a", b"2", b"c", b"d"]


async def test_a_missing_or_unknown_name_is_refused_before_sending(redis: Redis) -> None:
    script = LuaScript(redis, "echo.lua", body=_ECHO)

    with pytest.raises(TypeError, match="missing second; unknown secnd"):
        await script([], first="a", secnd=2, rest=[])
    with pytest.raises(TypeError, match=r"rest\.\.\. takes a sequence"):
        script.args(first="a", second=2, rest="cd")
    assert await redis.dbsize() == 0


_FAIL = """-- ARGV:
--   message  the error to answer with
return redis.error_reply(ARGV[1])
"""


async def test_a_call_in_a_pipeline_answers_as_the_call_alone_would(redis: Redis) -> None:
    """`queue` puts the call in a pipeline beside other commands; `result` gives its
    reply, raises its error, and runs it again alone when Redis had lost the script."""
    echo = LuaScript(redis, "echo.lua", body=_ECHO)
    fail = LuaScript(redis, "fail.lua", body=_FAIL)
    await echo([], first="x", second=0, rest=[])  # loaded
    await redis.script_load(fail.script.script)

    pipe = redis.pipeline(transaction=False)
    pipe.set("k", "v")
    ok = echo.queue(pipe, [], first="a", second=2, rest=["c"])
    refused = fail.queue(pipe, [], message="no such thing")
    replies = await pipe.execute(raise_on_error=False)

    assert replies[0] is True and await ok.result(replies[1]) == [b"a", b"2", b"c"]
    with pytest.raises(ResponseError, match="no such thing"):
        await refused.result(replies[2])

    await redis.script_flush()
    pipe = redis.pipeline(transaction=False)
    lost = echo.queue(pipe, [], first="b", second=3, rest=[])
    [reply] = await pipe.execute(raise_on_error=False)
    assert isinstance(reply, NoScriptError)
    assert await lost.result(reply) == [b"b", b"3"]
