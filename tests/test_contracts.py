"""The protobuf contracts: generated code is current, and `buf lint` (STANDARD) passes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf")
    if buf is None:
        if os.environ.get("CI"):
            pytest.fail("buf is required in CI (.ci/run installs @bufbuild/buf from npm)")
        pytest.skip("buf not installed (npm install @bufbuild/buf); CI runs it")
    result = subprocess.run(
        [buf, "lint"], cwd=ROOT / "protos", capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
