"""What a redis-py connection writes, read back: for tests that count round trips by
patching `AbstractConnection.send_packed_command` (one call, one write: a command or a
whole pipeline)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from redis.asyncio.connection import AbstractConnection


def sent_commands(command: Any, arguments: int | None = 2) -> list[list[bytes]]:
    """The commands (first `arguments` arguments each, None: all) of what
    `send_packed_command` was given: bytes, str, or the chunks of one RESP-packed write."""
    chunks = [command] if isinstance(command, bytes | str) else command
    packed = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
    out: list[list[bytes]] = []
    i = 0
    while i < len(packed) and packed[i : i + 1] == b"*":
        end = packed.index(b"\r\n", i)
        count = int(packed[i + 1 : end])
        i = end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = packed.index(b"\r\n", i)
            size = int(packed[i + 1 : end])
            i = end + 2
            if arguments is None or len(args) < arguments:
                args.append(packed[i : i + size])
            i += size + 2
        out.append(args)
    return out


@contextmanager
def _each_write(record: Callable[[list[list[bytes]]], None]) -> Iterator[None]:
    """Hand `record` the commands of every write any redis-py asyncio connection sends
    while inside (first two arguments each)."""
    send = AbstractConnection.send_packed_command

    async def recording_send(self: Any, command: Any, check_health: bool = True) -> None:
        record(sent_commands(command))
        await send(self, command, check_health)

    AbstractConnection.send_packed_command = recording_send  # type: ignore[method-assign]
    try:
        yield
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]


@contextmanager
def recording(match: Callable[[list[bytes]], bool]) -> Iterator[list[list[bytes]]]:
    """The commands (first two arguments each; pipelines unpacked) that any redis-py
    asyncio connection sends while inside and `match` accepts, in order."""
    seen: list[list[bytes]] = []
    with _each_write(lambda commands: seen.extend(c for c in commands if match(c))):
        yield seen


@contextmanager
def recording_writes(match: Callable[[list[bytes]], bool]) -> Iterator[list[list[list[bytes]]]]:
    """Like `recording`, one list per write (a round trip: a command or a whole pipeline)
    holding a command `match` accepts."""
    seen: list[list[list[bytes]]] = []

    def record(commands: list[list[bytes]]) -> None:
        if any(match(c) for c in commands):
            seen.append(commands)

    with _each_write(record):
        yield seen
