"""Maintenance windows in the configuration file (`maintenance_windows:`), both ways:
parsed with `file:line` problems for `tocsin apply`, and written back by `tocsin export`.

    maintenance_windows:
      - id: sunday-patching
        services: [payments-api, billing-reports]
        start: 2026-12-06T02:00          # local time in time_zone (or with an offset)
        duration: 2h
        rrule: FREQ=WEEKLY;BYDAY=SU      # optional: RFC 5545; without it, once
        time_zone: Europe/London         # optional (default UTC)
        description: OS patching
"""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import yaml
from google.protobuf.duration_pb2 import Duration

from tocsin.v1 import urgency_pb2

if TYPE_CHECKING:
    from tocsin.client.configfile import _Reader

_FIELDS = {"id", "services", "start", "duration", "rrule", "time_zone", "description"}


def maintenance_window(r: _Reader, node: yaml.Node, path: str) -> urgency_pb2.MaintenanceWindow:
    m = r.mapping(node, path, _FIELDS, {"id", "services", "start", "duration"})
    zone = r.zone(m["time_zone"], f"{path}.time_zone") if "time_zone" in m else ZoneInfo("UTC")
    window = urgency_pb2.MaintenanceWindow(
        id=r.text(m.get("id"), f"{path}.id"),
        rrule=r.text(m.get("rrule"), f"{path}.rrule"),
        time_zone=r.text(m.get("time_zone"), f"{path}.time_zone"),
        description=r.text(m.get("description"), f"{path}.description"),
    )
    services = r.sequence(m.get("services"), f"{path}.services")
    if "services" in m and not services:
        r.problem(m["services"], f"{path}.services", "needs at least one service")
    window.service_ids.extend(r.text(s, f"{path}.services[{k}]") for k, s in enumerate(services))
    if "start" in m:
        start = r.moment(m["start"], f"{path}.start", zone)
        if start is not None:
            window.start.FromDatetime(start)
    if "duration" in m:
        window.duration.CopyFrom(
            Duration(seconds=r.duration_seconds(m["duration"], f"{path}.duration"))
        )
    return window


def window_config(window: urgency_pb2.MaintenanceWindow) -> dict[str, Any]:
    """What `tocsin export` writes for a window (apply reads it back unchanged)."""
    from tocsin.client.export import duration_text

    zone = ZoneInfo(window.time_zone or "UTC")
    start = window.start.ToDatetime(UTC).astimezone(zone)
    entry: dict[str, Any] = {
        "id": window.id,
        "services": list(window.service_ids),
        "start": start.isoformat(timespec="seconds"),
        "duration": duration_text(window.duration),
    }
    if window.rrule:
        entry["rrule"] = window.rrule
    if window.time_zone:
        entry["time_zone"] = window.time_zone
    if window.description:
        entry["description"] = window.description
    return entry
