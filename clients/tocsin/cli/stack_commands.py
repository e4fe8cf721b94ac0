"""`tocsin up`, `tocsin serve SERVICE` and `tocsin fake-twilio`: running things."""

from __future__ import annotations

import argparse
import importlib
import sys

STACK = ("scheduling", "incidents", "escalation", "notification", "history", "gateway")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser(
        "up", help="run the whole stack (embedded Redis unless TOCSIN_REDIS_URL is set)"
    )
    up.set_defaults(run=_up)
    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=STACK)
    serve.set_defaults(run=_serve)
    fake = commands.add_parser(
        "fake-twilio", help="run a local Twilio-compatible server for tests and load tests"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8099)
    fake.add_argument("--account-sid", default="AC" + "0" * 32)
    fake.add_argument("--auth-token", default="fake-twilio-token")
    fake.set_defaults(run=_fake_twilio)


def _up(args: argparse.Namespace) -> int:
    from tocsin.runtime.config import ConfigError, load_config
    from tocsin.runtime.service import configure_logging
    from tocsin.runtime.supervisor import STACK, run_up

    try:
        config = load_config()
        for name in STACK:  # a refused metrics address stops `up` before anything starts
            config.metrics_listen_addr(name)
    except ConfigError as error:
        print(f"tocsin up: {error}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    return run_up(config)


def _serve(args: argparse.Namespace) -> int:
    from tocsin.runtime.config import ConfigError

    try:
        importlib.import_module(f"tocsin.{args.service}.server").serve()
    except ConfigError as error:
        print(f"tocsin serve {args.service}: {error}", file=sys.stderr)
        return 2
    return 0


def _fake_twilio(args: argparse.Namespace) -> int:
    from tocsin.faketwilio.server import run

    run(args.host, args.port, args.account_sid, args.auth_token)
    return 0
