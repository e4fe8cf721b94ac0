"""`python -m loadtests run ...`: an open-loop load test of tocsin with a latency report.

By default it starts its own stack (`tocsin up` plus the fake Twilio, as processes);
--target-* flags drive a stack that is already running instead. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from loadtests import report
from loadtests.plot import percentile_plot
from loadtests.run import Options, run
from loadtests.stack import Target
from tocsin.client.endpoints import Endpoints, resolve_endpoints


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    r = commands.add_parser(
        "run",
        help="run a load test and write result.json and latency.png",
        description="Open-loop load: new incidents at --rate/s (each pages lt-primary by SMS "
        "at once; with escalation, lt-secondary a minute later) and repeats of open alerts "
        "at --repeat-rate/s. Latency counts from each request's intended send time.",
    )
    r.add_argument("--rate", type=_positive, default=200.0, help="new incidents/s (200)")
    r.add_argument("--duration", type=_positive, default=20.0, help="seconds of load (20)")
    r.add_argument(
        "--repeat-rate", type=_non_negative, default=0.0, help="repeat alerts/s (0 = none)"
    )
    r.add_argument("--via", choices=("grpc", "http", "both"), default="grpc")
    r.add_argument("--out", type=Path, default=Path("loadtests/results/latest"))
    r.add_argument(
        "--no-escalation",
        action="store_true",
        help="skip level 1 (otherwise the run waits a minute after the last incident for "
        "every level-1 SMS, to measure escalation-timer lateness with the real clock)",
    )
    r.add_argument("--no-floor", action="store_true", help="skip the 4-hop gRPC floor")
    r.add_argument("--floor-duration", type=_positive, default=10.0)
    r.add_argument("--storms", type=int, default=10, help="open alerts the repeats go to")
    r.add_argument("--drain-timeout", type=_positive, default=20.0)
    r.add_argument(
        "--status-callbacks",
        action="store_true",
        help="let the stack ask (fake) Twilio for delivery callbacks, as production does "
        "(own stack only; off by default: on 2 cores the fake's callbacks cost more CPU "
        "than the page itself and, once a backlog forms, the fake becomes the bottleneck)",
    )
    r.add_argument(
        "--processes",
        default="",
        help="TOCSIN_PROCESSES of the stack it starts: how its services share processes "
        "(`small`: scheduling+escalation+notification,incidents+history,gateway; default "
        "one process per service)",
    )
    r.add_argument(
        "--stack-log-level",
        default="WARNING",
        help="TOCSIN_LOG_LEVEL of the stack it starts (WARNING; INFO, the product default, "
        "adds about a dozen log lines per SMS from the twilio library)",
    )
    t = r.add_argument_group(
        "driving a running stack (all optional: give --target-fake-twilio to use one)"
    )
    t.add_argument("--target-fake-twilio", help="base URL of the fake Twilio the stack sends to")
    t.add_argument(
        "--target-data-dir",
        type=Path,
        help="the stack's TOCSIN_DATA_DIR, to read its endpoints.json "
        "(else TOCSIN_*_ADDR / ./.tocsin / defaults)",
    )
    t.add_argument("--target-pid", type=int, help="the stack's top process, to measure its CPU")
    t.add_argument("--target-fake-pid", type=int, help="the fake Twilio's process")
    return top


def _target(args: argparse.Namespace) -> Target | None:
    if not args.target_fake_twilio:
        return None
    env = dict(os.environ)
    if args.target_data_dir:
        env["TOCSIN_DATA_DIR"] = str(args.target_data_dir)
    endpoints: Endpoints = resolve_endpoints(env)
    return Target(
        endpoints=endpoints,
        fake_twilio=args.target_fake_twilio.rstrip("/"),
        stack_root=args.target_pid,
        fake_pid=args.target_fake_pid,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.storms < 1:
        print("--storms must be at least 1", file=sys.stderr)
        return 2
    options = Options(
        out=args.out,
        rate=args.rate,
        duration=args.duration,
        repeat_rate=args.repeat_rate,
        via=args.via,
        escalation=not args.no_escalation,
        floor=not args.no_floor,
        floor_duration=args.floor_duration,
        storms=args.storms,
        drain_timeout=args.drain_timeout,
        status_callbacks=args.status_callbacks,
        stack_log_level=args.stack_log_level,
        processes=args.processes,
        target=_target(args),
        token=os.environ.get("TOCSIN_API_TOKEN"),
        command="python -m loadtests " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    result = uvloop.run(run(options, secrets.token_hex(4)))
    (options.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    title = (
        f"tocsin, {options.rate:g} incidents/s"
        + (f" + {options.repeat_rate:g} repeats/s" if options.repeat_rate else "")
        + f" via {options.via}, {options.duration:g} s, "
        f"{result['machine']['nproc']} cores"
    )
    percentile_plot(report.histograms_for_plot(result), title, options.out / "latency.png")
    print(report.text(result))
    print(f"wrote {options.out / 'result.json'} and {options.out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
