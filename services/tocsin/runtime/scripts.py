"""What the Lua scripts share with the Python side, so no contract is copied by hand.

`PROTO_LUA` is lua/proto_constants.lua, written by scripts/gen_protos.py from the protos'
descriptors (its `--check` fails when the file is stale): every script that compares an
enum or encodes a protobuf field prepends it first and uses its names
(`AttemptStatus.SENDING`, `PB_KEY.Incident.severity`), never a literal number.
"""

from __future__ import annotations

from tocsin.runtime.redis import read_lua

PROTO_LUA = read_lua("tocsin.runtime", "lua/proto_constants.lua")
