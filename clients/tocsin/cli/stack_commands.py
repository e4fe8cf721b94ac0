"""`tocsin up`, `tocsin serve SERVICE...` and `tocsin fake-twilio`: running things."""

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
    serve = commands.add_parser(
        "serve",
        help="run a service in the foreground (several gRPC services: in one process)",
    )
    serve.add_argument("service", nargs="+", choices=STACK)
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

    names: list[str] = list(dict.fromkeys(args.service))
    label = " ".join(names)
    if len(names) > 1 and "gateway" in names:
        print(f"tocsin serve {label}: the gateway runs in a process of its own", file=sys.stderr)
        return 2
    try:
        if len(names) == 1:
            importlib.import_module(f"tocsin.{names[0]}.server").serve()
        else:
            from tocsin.runtime.service import serve_many

            serve_many(
                [(n, importlib.import_module(f"tocsin.{n}.server").create_server) for n in names]
            )
    except ConfigError as error:
        print(f"tocsin serve {label}: {error}", file=sys.stderr)
        return 2
    return 0


def _fake_twilio(args: argparse.Namespace) -> int:
    from tocsin.faketwilio.server import run

    run(args.host, args.port, args.account_sid, args.auth_token)
    return 0
