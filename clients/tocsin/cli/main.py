"""The `tocsin` command: run the stack, and talk to it.

Each command module registers its sub-commands; a command returns an exit code.
gRPC errors are printed with their field violations and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from tocsin.cli import (
    apply_command,
    escalation_commands,
    incident_commands,
    notification_commands,
    schedule_commands,
    stack_commands,
)
from tocsin.cli.output import describe_rpc_error
from tocsin.client.targets import TargetError

# Each module registers its sub-commands with `register(commands)`.
COMMAND_MODULES = (
    stack_commands,
    schedule_commands,
    apply_command,
    escalation_commands,
    incident_commands,
    notification_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tocsin", description="tocsin: on-call scheduling, escalation and paging"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except grpc.RpcError as error:
        print(describe_rpc_error(error), file=sys.stderr)
        code = 1
    except TargetError as error:  # a malformed TOCSIN_<SERVICE>_ADDR, named in the message
        print(f"tocsin: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
