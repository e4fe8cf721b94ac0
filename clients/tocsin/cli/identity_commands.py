"""`tocsin login|logout|whoami|passwd|apikey|audit`: people, credentials, the audit log.

Passwords are read from the terminal without echo, or one line from standard input with
`--stdin`, never from the command line (where `ps` would show them). A personal token goes
to the file tocsin.client.credentials names (mode 0600); an API key is printed once.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from google.protobuf.duration_pb2 import Duration

from tocsin.cli.common import add_json_flag, run_with_client
from tocsin.cli.incident_commands import duration, since
from tocsin.cli.output import print_json, print_table
from tocsin.cli.output import rfc3339 as format_time
from tocsin.client.client import TocsinClient
from tocsin.client.configfile import ROLES
from tocsin.client.credentials import forget_login, store_login
from tocsin.v1 import common_pb2, identity_pb2

ROLE_NAMES = {value: name for name, value in ROLES.items()}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login = commands.add_parser(
        "login", help="sign in (password, or --sso in a browser); keeps a personal token"
    )
    login.add_argument("user", nargs="?", help="your tocsin user id (password sign-in)")
    login.add_argument("--stdin", action="store_true", help="read the password from stdin")
    login.add_argument(
        "--sso", action="store_true", help="sign in through the gateway's OpenID Connect provider"
    )
    login.add_argument(
        "--no-browser",
        action="store_true",
        help="with --sso: only print the sign-in URL (open it in a browser on this machine)",
    )
    login.set_defaults(run=_login)

    logout = commands.add_parser("logout", help="end your session and forget its token")
    logout.set_defaults(run=_logout)

    whoami = commands.add_parser("whoami", help="who the servers take you for, and your role")
    add_json_flag(whoami)
    whoami.set_defaults(run=_whoami)

    passwd = commands.add_parser("passwd", help="set a user's password")
    passwd.add_argument("user")
    passwd.add_argument("--stdin", action="store_true", help="read the password from stdin")
    passwd.set_defaults(run=_passwd)

    apikey = commands.add_parser("apikey", help="API keys for machines")
    keys = apikey.add_subparsers(dest="apikey_command", required=True, metavar="COMMAND")
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--user", required=True, help="the user the key acts as")
    create.add_argument("--role", choices=ROLES, help="at most this role (default: the user's)")
    create.add_argument("--name", default="", help="a name for people, e.g. deploy-bot")
    create.add_argument("--expires", type=duration, help="works for this long, e.g. 90d")
    add_json_flag(create)
    create.set_defaults(run=_apikey_create)
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--user", default="")
    add_json_flag(listing)
    listing.set_defaults(run=_apikey_list)
    revoke = keys.add_parser("revoke", help="revoke a key: it stops working at once")
    revoke.add_argument("id")
    revoke.set_defaults(run=_apikey_revoke)

    audit = commands.add_parser("audit", help="the audit log of configuration changes")
    audit.add_argument("--since", type=since, help="e.g. 24h, or an RFC 3339 time")
    audit.add_argument("--user", default="", help="changes made by this user")
    audit.add_argument("--limit", type=int, default=100)
    add_json_flag(audit)
    audit.set_defaults(run=_audit)


def _read_password(from_stdin: bool, confirm: bool = False) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise SystemExit("tocsin: the two passwords differ; nothing was changed")
    return password


def _role(value: int) -> str:
    return ROLE_NAMES.get(common_pb2.Role.ValueType(value), "responder")


SSO_WAIT_S = 300.0


def _login(args: argparse.Namespace) -> int:
    if args.sso:
        return _login_sso(open_browser=not args.no_browser)
    if not args.user:
        raise SystemExit("tocsin login: name your user (tocsin login USER), or use --sso")
    password = _read_password(args.stdin)

    async def body(client: TocsinClient) -> identity_pb2.LoginResponse:
        request = identity_pb2.LoginRequest(user_id=args.user, password=password)
        return await client.identity.Login(request)

    reply = run_with_client(body, token="")
    stack = _stack()
    path = store_login(stack, reply.token, reply.user_id)
    print(f"Signed in as {reply.user_id} ({_role(reply.role)}); token kept in {path}")
    return 0


def _login_sso(*, open_browser: bool = True) -> int:
    from tocsin.cli.sso import BrowserSignIn, SsoError
    from tocsin.client.endpoints import resolve_endpoints

    http = resolve_endpoints().http
    gateway = http if "://" in http else f"http://{http}"
    sign_in = BrowserSignIn(os.environ.get("TOCSIN_PUBLIC_URL") or gateway)
    print(f"Sign in at: {sign_in.url}", file=sys.stderr, flush=True)
    if open_browser:
        sign_in.open_browser()
    try:
        result = sign_in.wait(SSO_WAIT_S)
    except SsoError as error:
        raise SystemExit(f"tocsin login: {error}") from None
    path = store_login(_stack(), result.token, result.user_id)
    print(f"Signed in as {result.user_id}; token kept in {path}")
    return 0


def _stack() -> str:
    from tocsin.client.endpoints import resolve_endpoints

    return resolve_endpoints().scheduling


def _logout(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> None:
        await client.identity.Logout(identity_pb2.LogoutRequest())

    run_with_client(body)
    forget_login(_stack())
    print("Signed out")
    return 0


def _whoami(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> identity_pb2.WhoAmIResponse:
        return await client.identity.WhoAmI(identity_pb2.WhoAmIRequest())

    reply = run_with_client(body)
    shown = {
        "user": reply.user_id or None,
        "role": _role(reply.role) if reply.role else None,
        "credential": reply.credential,
        "api_key": reply.api_key_id or None,
        "display": reply.display,
    }
    if args.json:
        print_json(shown)
    else:
        print(f"{reply.display} ({shown['role'] or 'service'}, {reply.credential})")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    password = _read_password(args.stdin, confirm=sys.stdin.isatty() and not args.stdin)

    async def body(client: TocsinClient) -> None:
        request = identity_pb2.SetPasswordRequest(user_id=args.user, password=password)
        await client.identity.SetPassword(request)

    run_with_client(body)
    print(f"Password set for {args.user}")
    return 0


def _key_json(key: identity_pb2.ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "user": key.user_id,
        "name": key.name,
        "role": _role(key.role) if key.role else None,
        "created_at": format_time(key.created_at),
        "expires_at": format_time(key.expires_at) if key.HasField("expires_at") else None,
    }


def _apikey_create(args: argparse.Namespace) -> int:
    request = identity_pb2.CreateApiKeyRequest(
        user_id=args.user,
        name=args.name,
        role=ROLES[args.role] if args.role else common_pb2.ROLE_UNSPECIFIED,
    )
    if args.expires is not None:
        request.expires_in.CopyFrom(Duration(seconds=int(args.expires.total_seconds())))

    async def body(client: TocsinClient) -> identity_pb2.CreateApiKeyResponse:
        return await client.identity.CreateApiKey(request)

    reply = run_with_client(body)
    if args.json:
        print_json({"key": reply.key, **_key_json(reply.api_key)})
    else:
        print(reply.key)
        print(
            f"API key {reply.api_key.id} for {reply.api_key.user_id}: shown only now; "
            "send it as TOCSIN_TOKEN or authorization: Bearer <key>",
            file=sys.stderr,
        )
    return 0


def _apikey_list(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> identity_pb2.ListApiKeysResponse:
        return await client.identity.ListApiKeys(identity_pb2.ListApiKeysRequest(user_id=args.user))

    keys = [_key_json(k) for k in run_with_client(body).api_keys]
    if args.json:
        print_json(keys)
    else:
        print_table(
            ["ID", "USER", "NAME", "ROLE", "CREATED", "EXPIRES"],
            [
                [k["id"], k["user"], k["name"], k["role"] or "-", k["created_at"], k["expires_at"]]
                for k in keys
            ],
        )
    return 0


def _apikey_revoke(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> None:
        await client.identity.RevokeApiKey(identity_pb2.RevokeApiKeyRequest(id=args.id))

    run_with_client(body)
    print(f"API key {args.id} revoked")
    return 0


def _audit(args: argparse.Namespace) -> int:
    request = identity_pb2.ListAuditEntriesRequest(user_id=args.user, page_size=args.limit)
    if args.since is not None:
        request.since.FromDatetime(args.since)

    async def body(client: TocsinClient) -> identity_pb2.ListAuditEntriesResponse:
        return await client.identity.ListAuditEntries(request)

    entries = run_with_client(body).entries
    shown = [
        {
            "id": e.id,
            "time": format_time(e.time),
            "user": e.actor.user_id or None,
            "actor": e.actor.user_id or e.actor.display,
            "via": common_pb2.Channel.Name(e.actor.channel).removeprefix("CHANNEL_").lower(),
            "action": e.action,
            "object": f"{e.object_kind}/{e.object_id}",
            "before": e.before_json or None,
            "after": e.after_json or None,
        }
        for e in entries
    ]
    if args.json:
        print_json(shown)
    else:
        print_table(
            ["TIME", "ACTOR", "VIA", "ACTION", "OBJECT"],
            [[e["time"], e["actor"], e["via"], e["action"], e["object"]] for e in shown],
        )
    return 0
