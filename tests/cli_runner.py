"""Running the `tocsin` CLI in-process against test servers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any

import pytest

from tocsin.cli.main import main


async def run_cli(
    monkeypatch: pytest.MonkeyPatch, targets: dict[str, str], *argv: str
) -> tuple[int, str, str]:
    """Run `tocsin ARGV` in a thread (it has its own event loop) with the services at
    `targets` ({"scheduling": "127.0.0.1:port", ...}); returns (exit code, stdout, stderr)."""
    for name, target in targets.items():
        variable = "TOCSIN_HTTP_ADDR" if name == "http" else f"TOCSIN_{name.upper()}_ADDR"
        monkeypatch.setenv(variable, target)
    monkeypatch.delenv("TOCSIN_API_TOKEN", raising=False)

    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(argv))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


def as_json(stdout: str) -> Any:
    return json.loads(stdout)
