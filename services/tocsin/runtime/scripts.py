"""What the Lua scripts share with the Python side, so no contract is copied by hand.

`PROTO_LUA` is lua/proto_constants.lua, written by scripts/gen_protos.py from the protos'
descriptors (its `--check` fails when the file is stale): every script that compares an
enum or encodes a protobuf field prepends it first and uses its names
(`AttemptStatus.SENDING`, `PB_KEY.Incident.severity`), never a literal number.

`LuaScript` names a script's arguments. The script's header is the one declaration of
its ARGV, in order, one name a line, three spaces after `--` (a line indented further
continues the description; a name ending in `...` takes the rest, a list):

    -- ARGV:
    --   tag       timer tag
    --   now_ms    the caller's clock, which every
    --             timer decision uses
    --   ids...    the timers to cancel

and the caller passes them by name (`await script(keys, tag=..., now_ms=..., ids=[...])`);
a missing or unknown name raises TypeError before anything is sent, so a script and its
callers cannot disagree on an argument's place. tests/runtime/test_scripts.py checks that
every script declares its ARGV and uses no ARGV[n] past what it declares.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from tocsin.runtime.redis import RedisClient, read_lua, register_lua

PROTO_LUA = read_lua("tocsin.runtime", "lua/proto_constants.lua")

_ARGV_HEADER = re.compile(r"^-- ARGV:\s*(none)?\s*$")
_ARGV_NAME = re.compile(r"^--   ([a-z][a-z0-9_]*(?:\.\.\.)?)(?:\s|$)")
"""A name starts three spaces after `--`; a line indented further continues a description."""


def declared_argv(body: str) -> tuple[str, ...] | None:
    """The ARGV names the header of script `body` declares, in order; None if it has no
    `-- ARGV:` block (`-- ARGV: none` declares no arguments)."""
    lines = body.splitlines()
    for i, line in enumerate(lines):
        header = _ARGV_HEADER.match(line)
        if header is None:
            continue
        if header.group(1):
            return ()
        names: list[str] = []
        for entry in lines[i + 1 :]:
            if not entry.startswith("--   "):
                break
            if match := _ARGV_NAME.match(entry):
                names.append(match.group(1))
        if not names:
            raise ValueError(f"`-- ARGV:` declares no names: {lines[i + 1 : i + 3]!r}")
        if any(n.endswith("...") for n in names[:-1]):
            raise ValueError(f"only the last ARGV name may take the rest: {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"an ARGV name is declared twice: {names}")
        return tuple(names)
    return None


class LuaScript:
    """A registered script (libraries first, then `body`) called with named arguments."""

    def __init__(self, redis: RedisClient, name: str, *libraries: str, body: str) -> None:
        argv = declared_argv(body)
        if argv is None:
            raise ValueError(f"script {name} has no `-- ARGV:` header")
        self.name = name
        self.argv = argv
        self.script: AsyncScript = register_lua(redis, *libraries, body)
        self._names = tuple(n.removesuffix("...") for n in argv)
        self._rest = bool(argv) and argv[-1].endswith("...")

    def args(self, **values: Any) -> list[Any]:
        """ARGV in the declared order; TypeError naming what is missing or unknown."""
        names = self._names
        if len(values) != len(names) or not all(n in values for n in names):
            self._refuse(values)
        ordered = [values[n] for n in names]
        if self._rest:
            rest = ordered.pop()
            if isinstance(rest, str | bytes) or not isinstance(rest, Sequence):
                raise TypeError(f"script {self.name}: {self.argv[-1]} takes a sequence")
            ordered.extend(rest)
        return ordered

    def _refuse(self, values: dict[str, Any]) -> None:
        names = self._names
        missing = [n for n in names if n not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            raise TypeError(
                f"script {self.name} takes ARGV {', '.join(self.argv) or '(none)'}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(unknown)}" if unknown else "")
            )

    async def __call__(self, keys: Sequence[Any], **values: Any) -> Any:
        return await self.script(keys=list(keys), args=self.args(**values))

    def queue(self, pipe: Any, keys: Sequence[Any], **values: Any) -> QueuedCall:
        """Add this call to `pipe` (an EVALSHA, so not on a Cluster's pipeline, which
        redis-py refuses scripts) with other commands, for one round trip; its
        `QueuedCall.result` turns the pipeline's reply into the call's."""
        call = QueuedCall(self.script, list(keys), self.args(**values))
        pipe.evalsha(self.script.sha, len(call.keys), *call.keys, *call.args)
        return call


@dataclass(frozen=True)
class QueuedCall:
    """A script call sent in a pipeline (`LuaScript.queue`)."""

    script: AsyncScript
    keys: list[Any]
    args: list[Any]

    async def result(self, reply: Any) -> Any:
        """The call's result from its reply in a pipeline executed with
        `raise_on_error=False`: run again alone (which loads the script) if Redis had lost
        its scripts (a restart), else the reply, or the error it holds raised."""
        if isinstance(reply, NoScriptError):
            return await self.script(keys=self.keys, args=self.args)
        if isinstance(reply, Exception):
            raise reply
        return reply
