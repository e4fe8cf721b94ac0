"""`tocsin apply -f FILE [--dry-run]` and `tocsin export`: configuration as code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tocsin.cli.common import run_with_client
from tocsin.cli.output import print_json
from tocsin.client.apply import Applier, ApplyError, ApplyResult
from tocsin.client.client import TocsinClient
from tocsin.client.configfile import ConfigFileError, load_config_file
from tocsin.client.export import dump_yaml, export_config


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = commands.add_parser("apply", help="make the running system match a YAML file")
    apply.add_argument("-f", "--file", type=Path, required=True)
    apply.add_argument("--dry-run", action="store_true", help="print what would change")
    apply.add_argument("--json", action="store_true", help="print JSON")
    apply.set_defaults(run=_apply)
    export = commands.add_parser("export", help="write the running configuration as YAML")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> dict[str, Any]:
        return await export_config(client)

    text = dump_yaml(run_with_client(body))
    if args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as error:
            print(f"tocsin export: cannot write {args.output}: {error.strerror}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


def _apply(args: argparse.Namespace) -> int:
    try:
        state = load_config_file(args.file)
    except ConfigFileError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2

    async def body(client: TocsinClient) -> ApplyResult:
        return await Applier(client, args.dry_run).apply(state)

    try:
        result = run_with_client(body)
    except ApplyError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        if error.applied:
            print(f"applied: {', '.join(map(str, error.applied))}", file=sys.stderr)
            print(f"not applied: {', '.join(map(str, error.not_applied))}", file=sys.stderr)
        else:
            print("nothing was applied", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "changes": [c.__dict__ for c in result.changes],
                "warnings": result.warnings,
            }
        )
        return 0
    verb = "would " if args.dry_run else ""
    for change in result.changes:
        print(f"{verb}{change}")
    if not result.changes:
        print("no changes: the running system already matches", args.file)
    return 0
