"""`tocsin users`, `tocsin user ID`, `tocsin test-page USER` and `tocsin handoff-notices
[USER]`: who can be paged, how, and who is told of their shifts' hand-offs.

Phone numbers are shown masked (`+1******0010`), in text and JSON alike: the output
ends up in terminals, tickets and chat.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import phonenumbers

from tocsin.cli.common import add_json_flag, run_with_client
from tocsin.cli.output import print_json, print_table
from tocsin.client.client import TocsinClient
from tocsin.client.contact_types import CONTACT_TYPE_NAMES
from tocsin.v1 import identity_pb2, notification_pb2, scheduling_pb2

_PAGE = 1000
_CHANNELS = CONTACT_TYPE_NAMES
_STATUSES = {
    notification_pb2.ATTEMPT_STATUS_SENDING: "sending",
    notification_pb2.ATTEMPT_STATUS_SENT: "sent",
    notification_pb2.ATTEMPT_STATUS_DELIVERED: "delivered",
    notification_pb2.ATTEMPT_STATUS_FAILED: "failed",
    notification_pb2.ATTEMPT_STATUS_UNKNOWN: "unknown",
    notification_pb2.ATTEMPT_STATUS_SKIPPED: "skipped",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = commands.add_parser("users", help="list users")
    add_json_flag(users)
    users.set_defaults(run=_users)
    user = commands.add_parser("user", help="one user with contact methods and rules")
    user.add_argument("id", help="user id")
    add_json_flag(user)
    user.set_defaults(run=_user)
    test_page = commands.add_parser(
        "test-page", help="send a test message through each of a user's contact methods"
    )
    test_page.add_argument("user", help="user id")
    add_json_flag(test_page)
    test_page.set_defaults(run=_test_page)
    notices = commands.add_parser(
        "handoff-notices",
        help="show or set when you (or USER) are told of your shifts: start, end, day_before",
    )
    notices.add_argument("user", nargs="?", default="", help="user id (default: you)")
    choice = notices.add_mutually_exclusive_group()
    choice.add_argument(
        "--set",
        metavar="KINDS",
        help="comma-separated: start (a shift starts), end (it ends), day_before (24 h "
        "before it starts)",
    )
    choice.add_argument("--off", action="store_true", help="no hand-off notices")
    add_json_flag(notices)
    notices.set_defaults(run=_handoff_notices)


def mask_number(number: str) -> str:
    """`+15005550010` -> `+1******0010`."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return "*" * max(len(number) - 4, 0) + number[-4:]
    national = phonenumbers.national_significant_number(parsed)
    return f"+{parsed.country_code}" + "*" * (len(national) - 4) + national[-4:]


def _delay(seconds: int) -> str:
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def method_json(method: notification_pb2.ContactMethod) -> dict[str, Any]:
    return {
        "id": method.id,
        "type": _CHANNELS.get(method.type, "unknown"),
        "address": mask_number(method.address),
        "disabled": method.disabled,
    }


def attempt_json(attempt: notification_pb2.Attempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "contact_method": attempt.contact_method_id,
        "type": _CHANNELS.get(attempt.type, "unknown"),
        "status": _STATUSES.get(attempt.status, "unknown"),
        "provider_id": attempt.provider_id or None,
        "error_code": attempt.error_code or None,
        "providers": list(attempt.providers) or None,
    }


async def _all_users(client: TocsinClient) -> list[scheduling_pb2.User]:
    users: list[scheduling_pb2.User] = []
    token = ""
    while True:
        reply = await client.scheduling.ListUsers(
            scheduling_pb2.ListUsersRequest(page_size=_PAGE, page_token=token)
        )
        users += reply.users
        token = reply.next_page_token
        if not token:
            return users


def _users(args: argparse.Namespace) -> int:
    users = run_with_client(_all_users)
    if args.json:
        print_json([{"id": u.id, "name": u.name, "time_zone": u.time_zone} for u in users])
    else:
        print_table(["ID", "NAME", "TIME ZONE"], [(u.id, u.name, u.time_zone) for u in users])
    return 0


def _user(args: argparse.Namespace) -> int:
    async def fetch(
        client: TocsinClient,
    ) -> tuple[scheduling_pb2.User, notification_pb2.GetUserNotificationSettingsResponse]:
        user = await client.scheduling.GetUser(scheduling_pb2.GetUserRequest(id=args.id))
        settings = await client.notification.GetUserNotificationSettings(
            notification_pb2.GetUserNotificationSettingsRequest(user_id=args.id)
        )
        return user.user, settings

    user, settings = run_with_client(fetch)
    methods = {m.id: m for m in settings.contact_methods}
    rules: list[dict[str, Any]] = [
        {
            "contact_method": r.contact_method_id,
            "type": _CHANNELS.get(methods[r.contact_method_id].type, "unknown")
            if r.contact_method_id in methods
            else "unknown",
            "delay_seconds": r.delay.seconds,
        }
        for r in settings.rules
    ]
    if args.json:
        print_json(
            {
                "id": user.id,
                "name": user.name,
                "time_zone": user.time_zone,
                "contact_methods": [method_json(m) for m in settings.contact_methods],
                "rules": rules,
                "handoff_notices": list(user.handoff_notices),
            }
        )
        return 0
    print(f"{user.id}  {user.name}  ({user.time_zone})")
    print("\nContact methods:")
    if settings.contact_methods:
        print_table(
            ["ID", "TYPE", "ADDRESS", "STATE"],
            [
                (m["id"], m["type"], m["address"], "disabled (STOP)" if m["disabled"] else "ok")
                for m in map(method_json, settings.contact_methods)
            ],
        )
    else:
        print("  none: this user cannot be paged")
    print("\nNotification rules:")
    for rule in rules:
        print(
            f"  after {_delay(rule['delay_seconds']):>4}  {rule['contact_method']} ({rule['type']})"
        )
    if not rules:
        print("  none: this user is never paged")
    print(f"\nHand-off notices: {', '.join(user.handoff_notices) or 'none'}")
    return 0


def _handoff_notices(args: argparse.Namespace) -> int:
    """Show a user's hand-off notices, or set them (checked by SetHandoffNotices, which
    names a wrong kind: `notices[1]: must be one of start, end, day_before`)."""
    kinds: list[str] | None = None
    if args.off:
        kinds = []
    elif args.set is not None:
        kinds = [k.strip() for k in args.set.split(",") if k.strip()]

    async def body(client: TocsinClient) -> scheduling_pb2.User | str:
        user_id = args.user
        if not user_id:
            me = await client.identity.WhoAmI(identity_pb2.WhoAmIRequest())
            user_id = me.user_id
            if not user_id:
                return f"you are {me.display or 'no user'}: name the user (USER)"
        if kinds is None:
            reply = await client.scheduling.GetUser(scheduling_pb2.GetUserRequest(id=user_id))
            return reply.user
        changed = await client.scheduling.SetHandoffNotices(
            scheduling_pb2.SetHandoffNoticesRequest(user_id=user_id, notices=kinds)
        )
        return changed.user

    user = run_with_client(body)
    if isinstance(user, str):
        print(user, file=sys.stderr)
        return 2
    if args.json:
        print_json({"user": user.id, "handoff_notices": list(user.handoff_notices)})
        return 0
    told = ", ".join(user.handoff_notices) or "none"
    print(f"{user.id}: hand-off notices: {told}")
    return 0


def _test_page(args: argparse.Namespace) -> int:
    request = notification_pb2.SendTestPageRequest(user_id=args.user)
    reply: notification_pb2.SendTestPageResponse = run_with_client(
        lambda client: client.notification.SendTestPage(request)
    )
    attempts = [attempt_json(a) for a in reply.attempts]
    if args.json:
        print_json(attempts)
        return 0
    if not attempts:
        print(f"{args.user} has no contact methods; nothing was sent")
        return 1
    for attempt in attempts:
        detail = f" (error {attempt['error_code']})" if attempt["error_code"] else ""
        print(f"{attempt['type']} via {attempt['contact_method']}: {attempt['status']}{detail}")
    return 0 if all(a["status"] in ("sent", "delivered") for a in attempts) else 1
