"""The protobuf contracts: generated code (Python and the Lua constants) is current, a
drifted constant fails the check, and `buf lint` (STANDARD) passes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tocsin.runtime.scripts import PROTO_LUA
from tocsin.v1 import incidents_pb2, notification_pb2

ROOT = Path(__file__).resolve().parent.parent
LUA_CONSTANTS = ROOT / "services" / "tocsin" / "runtime" / "lua" / "proto_constants.lua"


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


def _stale_check_output(
    tmp_path: Path, edit: Callable[[Path], None]
) -> subprocess.CompletedProcess[str]:
    """Run `gen_protos.py --check` in a copy of the tree after `edit(copy root)`."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "protos", copy / "protos")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    shutil.copytree(ROOT / "clients" / "tocsin" / "v1", copy / "clients" / "tocsin" / "v1")
    lua = copy / LUA_CONSTANTS.relative_to(ROOT)
    lua.parent.mkdir(parents=True)
    shutil.copy(LUA_CONSTANTS, lua)
    edit(copy)
    return subprocess.run(
        [sys.executable, str(copy / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_hand_edited_lua_constant_fails_the_check(tmp_path: Path) -> None:
    def edit(root: Path) -> None:
        path = root / LUA_CONSTANTS.relative_to(ROOT)
        text = path.read_text()
        assert "  SENDING = 1,\n" in text
        path.write_text(text.replace("  SENDING = 1,\n", "  SENDING = 7,\n"))

    result = _stale_check_output(tmp_path, edit)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "proto_constants.lua" in result.stdout


def test_a_renumbered_proto_field_fails_the_check_until_regenerated(tmp_path: Path) -> None:
    def edit(root: Path) -> None:
        path = root / "protos" / "tocsin" / "v1" / "incidents.proto"
        text = path.read_text()
        assert "int64 version = 17;" in text
        path.write_text(text.replace("int64 version = 17;", "int64 version = 27;"))

    result = _stale_check_output(tmp_path, edit)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "proto_constants.lua" in result.stdout


async def test_lua_constants_are_the_protos_values(redis: Redis) -> None:
    """What the scripts see in Redis equals what the Python code uses (the pb2 modules)."""
    script = (
        PROTO_LUA
        + "\nreturn cjson.encode({AttemptStatus, ContactMethodType, IncidentStatus, PB_KEY})"
    )
    raw = await redis.eval(script, 0)
    attempt, method, incident, pb_key = json.loads(raw.decode("latin-1"))
    assert attempt == {
        v.name.removeprefix("ATTEMPT_STATUS_"): v.number
        for v in notification_pb2.AttemptStatus.DESCRIPTOR.values
    }
    assert method["SMS"] == notification_pb2.CONTACT_METHOD_TYPE_SMS
    assert method["VOICE"] == notification_pb2.CONTACT_METHOD_TYPE_VOICE
    assert incident["TRIGGERED"] == incidents_pb2.INCIDENT_STATUS_TRIGGERED
    # Encoding a field with the generated key decodes as that field in Python.
    version_key = pb_key["Incident"]["version"].encode("latin-1")
    decoded = incidents_pb2.Incident.FromString(version_key + bytes([42]))
    assert decoded.version == 42
    alert_key = pb_key["IncidentEvent"]["alert"].encode("latin-1")
    event = incidents_pb2.IncidentEvent.FromString(alert_key + bytes([2]) + b"\x0a\x00")
    assert event.HasField("alert")


_HAND_COPIED = (
    (re.compile(r"'(\\\d+)+'"), "a protobuf key as an escaped byte string (use PB_KEY)"),
    (
        re.compile(r"\b(st|status|type|channel)\s*(==|~=|=)\s*-?\d"),
        "an enum value as a number (use the generated enum table)",
    ),
    (
        re.compile(r"\blocal\s+[A-Z][A-Z0-9_]*\s*=\s*-?\d"),
        "a constant copied as a number (use the generated enum table)",
    ),
    (
        re.compile(r"(^|[{,])\s*\[\d+\]\s*=(?!=)", re.MULTILINE),
        "a table keyed by enum numbers (key it by enum names)",
    ),
)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "services").rglob("*.lua") if p != LUA_CONSTANTS),
    ids=lambda p: str(p.relative_to(ROOT / "services")),
)
def test_no_script_carries_a_hand_copied_protobuf_number(path: Path) -> None:
    code = "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())
    for pattern, what in _HAND_COPIED:
        match = pattern.search(code)
        assert match is None, f"{path.name}: {match.group(0)!r} is {what}"
