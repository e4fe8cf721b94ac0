"""The README's quick start works as pasted: its shell block, run line by line by bash
against a fresh `tocsin up` (found, as the README says, through the endpoints file)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def quickstart_commands() -> list[str]:
    """The `sh` block after "Then, from the same directory", without its comments."""
    readme = (ROOT / "README.md").read_text()
    after = readme.split("Then, from the same directory", 1)[1]
    block = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert block is not None, "no quick-start block in README.md"
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line]


def test_the_readme_quickstart_works_as_pasted(tmp_path: Path) -> None:
    commands = quickstart_commands()
    assert any("trigger" in c for c in commands) and any("ack" in c for c in commands)
    stack = Stack(tmp_path / "data")
    stack.start()
    try:
        stack.wait_healthy()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOCSIN_")}
        env["TOCSIN_DATA_DIR"] = str(tmp_path / "data")
        # One shell, so a variable set by one line is there for the next; any failing
        # line stops it (-e), and so does one whose $(...) failed.
        script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert done.stderr == "", done.stderr
        assert "is on call for primary" in done.stdout
        assert "level 1 of 2" in done.stdout and "Acknowledged #" in done.stdout
    finally:
        stack.stop()
