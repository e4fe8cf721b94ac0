"""The protobuf that incident_lib.lua writes by hand (the counters' overlay of an incident,
the alert id, the outbox event), decoded by Python's generated code: every field lands
where the protos say, with multi-byte varints and millisecond timestamps."""

from __future__ import annotations

from redis.asyncio import Redis

from tocsin.runtime.redis import read_lua
from tocsin.runtime.scripts import PROTO_LUA
from tocsin.v1 import incidents_pb2

_LIB = read_lua("tocsin.incidents", "lua/incident_lib.lua")


async def _lua(redis: Redis, body: str, *args: str | bytes | int) -> bytes:
    reply = await redis.eval("\n".join((PROTO_LUA, _LIB, body)), 0, *args)
    assert isinstance(reply, bytes)
    return reply


async def test_the_counters_overlay_decodes_as_the_incident_fields(redis: Redis) -> None:
    updated, last_alert = 1_733_216_400_123, 1_733_216_399_007

    raw = await _lua(
        redis,
        "return overlay(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])",
        4,
        300,
        updated,
        70_000,
        last_alert,
    )

    incident = incidents_pb2.Incident.FromString(raw)
    assert incident.severity == 4
    assert incident.alert_count == 300
    assert incident.version == 70_000
    assert incident.updated_at.ToMilliseconds() == updated
    assert incident.last_alert_at.ToMilliseconds() == last_alert
    # Written after the caller's part, it replaces the counters there (later fields win).
    base = incidents_pb2.Incident(id="17", alert_count=1, version=1, summary="disk full")
    merged = incidents_pb2.Incident.FromString(base.SerializeToString() + raw)
    assert (merged.id, merged.summary, merged.alert_count, merged.version) == (
        "17",
        "disk full",
        300,
        70_000,
    )


async def test_the_alert_id_and_the_event_parts_land_in_their_fields(redis: Redis) -> None:
    alert = incidents_pb2.Alert(summary="disk full").SerializeToString()
    incident = incidents_pb2.Incident(id="17").SerializeToString()

    with_id = await _lua(
        redis, "return ARGV[1] .. pb_bytes(PB_KEY.Alert.id, ARGV[2])", alert, "129"
    )
    event = await _lua(
        redis,
        "return pb_bytes(PB_KEY.IncidentEvent.incident, ARGV[1])"
        " .. pb_bytes(PB_KEY.IncidentEvent.alert, ARGV[2])",
        incident,
        with_id,
    )

    decoded = incidents_pb2.IncidentEvent.FromString(event)
    assert decoded.incident.id == "17"
    assert (decoded.alert.id, decoded.alert.summary) == ("129", "disk full")
