"""The `tocsin` command: run the stack, and talk to it.

Each command module registers its sub-commands; a command returns an exit code.
gRPC errors are printed with their field violations and exit 1; every other failure is
one line too (never a traceback), and a closed pipe ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc

from tocsin.cli import (
    apply_command,
    escalation_commands,
    history_commands,
    identity_commands,
    incident_commands,
    maintenance_commands,
    noise_commands,
    notification_commands,
    schedule_commands,
    stack_commands,
    webhook_commands,
)
from tocsin.cli.charts import ChartError
from tocsin.cli.output import describe_os_error, describe_rpc_error
from tocsin.client.credentials import CredentialsFileError
from tocsin.client.targets import TargetError
from tocsin.client.tls import InsecureTokenError, TlsError

# Each module registers its sub-commands with `register(commands)`.
COMMAND_MODULES = (
    stack_commands,
    schedule_commands,
    apply_command,
    escalation_commands,
    identity_commands,
    incident_commands,
    notification_commands,
    history_commands,
    noise_commands,
    maintenance_commands,
    webhook_commands,
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
    """Run one command. Every failure is one line on stderr and a non-zero exit (argparse's
    usage errors: 2); a reader that closed our stdout (`| head -1`) is not a failure."""
    try:
        args = build_parser().parse_args(argv)
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        code = 0
    except grpc.RpcError as error:
        print(describe_rpc_error(error), file=sys.stderr)
        code = 1
    except ChartError as error:
        print(f"tocsin: {error}", file=sys.stderr)
        code = 2
    except CredentialsFileError as error:
        print(f"tocsin: {error}", file=sys.stderr)
        code = 2
    except (TargetError, TlsError, InsecureTokenError) as error:  # a setting, named in it
        print(f"tocsin: {error}", file=sys.stderr)
        code = 2
    except OSError as error:  # a file named on the command line, say
        print(f"tocsin: {describe_os_error(error)}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as error:  # a bug: still one line, the traceback only when debugging
        if os.environ.get("TOCSIN_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        print(
            f"tocsin: unexpected error: {type(error).__name__}: {error} "
            "(TOCSIN_LOG_LEVEL=DEBUG shows the traceback)",
            file=sys.stderr,
        )
        code = 1
    sys.exit(code)


def _discard_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the exit-time flush cannot fail too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (tests capture it)
        pass


if __name__ == "__main__":
    main()
