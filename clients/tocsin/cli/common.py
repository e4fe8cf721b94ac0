"""What the CLI commands share: running a coroutine against the stack, reading times."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import grpc

from tocsin.client.apply import unpageable_reason
from tocsin.client.client import TocsinClient
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2

T = TypeVar("T")


def run_with_client(body: Callable[[TocsinClient], Awaitable[T]], token: str | None = None) -> T:
    """Run `body` with a client of the stack the endpoints point at (with the credential
    tocsin.client.credentials chooses, unless `token` is given; "" sends none)."""

    async def main() -> T:
        async with TocsinClient(token=token, via="cli") as client:
            return await body(client)

    return asyncio.run(main())


async def warn_if_unpageable(client: TocsinClient, user_id: str) -> None:
    """A warning on stderr when `user_id` has no way to be paged (no contact method, no
    rule): what the command just did will page nobody through them."""
    try:
        settings = await client.notification.GetUserNotificationSettings(
            notification_pb2.GetUserNotificationSettingsRequest(user_id=user_id)
        )
    except grpc.aio.AioRpcError:
        return  # the command itself succeeded; this is advice only
    reason = unpageable_reason(settings)
    if reason is not None:
        print(f"warning: {user_id} cannot be paged: {reason}", file=sys.stderr)


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
    return in_range(value, text)


def in_range(value: datetime, text: str) -> datetime:
    """`value`, if it is a moment a protobuf Timestamp can hold (years 1 to 9999 in UTC)."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range") from None
    return value


def incident_number(text: str) -> str:
    """argparse type: an incident number as `tocsin incidents` shows it, `18` or `#18`;
    the reference the incidents service takes for it ("#18")."""
    digits = text.strip().removeprefix("#")
    if not digits.isdecimal() or not digits.isascii() or digits.startswith("0"):
        raise argparse.ArgumentTypeError(
            f"expected an incident number like 18 or #18, got {text!r}"
        )
    return f"#{digits}"


def incident_label(incident: incidents_pb2.Incident) -> str:
    """How a person reads an incident's name: its number, `#18` (the id only for one
    opened before numbers that the incidents service has not numbered yet)."""
    return f"#{incident.number}" if incident.number else f"id {incident.id}"


async def incident_id(client: TocsinClient, reference: str) -> str:
    """The id of the live incident `reference` ("#18") names, for services that take ids;
    once it has expired from the live store, its digits as an id (the history archive
    takes ids, as it always did)."""
    try:
        reply = await client.incidents.GetIncident(
            incidents_pb2.GetIncidentRequest(incident_id=reference)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return reference.removeprefix("#")
        raise
    return reply.incident.id


def cli_actor() -> common_pb2.Actor:
    """Who acts from the command line: the login name, through the CLI channel."""
    return common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display=getpass.getuser())


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
