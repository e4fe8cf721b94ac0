"""What the CLI commands share: running a coroutine against the stack, reading times."""

from __future__ import annotations

import argparse
import asyncio
import getpass
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from tocsin.client.client import TocsinClient
from tocsin.v1 import common_pb2

T = TypeVar("T")


def run_with_client(body: Callable[[TocsinClient], Awaitable[T]]) -> T:
    """Run `body` with a client of the stack the endpoints point at."""

    async def main() -> T:
        async with TocsinClient() as client:
            return await body(client)

    return asyncio.run(main())


def rfc3339(text: str) -> datetime:
    """argparse type: RFC 3339 with an offset (`2026-11-27T18:00:00-05:00` or `...Z`)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected RFC 3339 with an offset, e.g. 2026-11-27T18:00:00-05:00, got {text!r}"
        ) from error
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add Z or e.g. -05:00")
    return value


def incident_number(text: str) -> str:
    """argparse type: an incident number as `trigger` prints it, `18` or `#18`."""
    return text.strip().removeprefix("#")


def cli_actor() -> common_pb2.Actor:
    """Who acts from the command line: the login name, through the CLI channel."""
    return common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display=getpass.getuser())


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
