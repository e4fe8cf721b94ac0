"""Printing for the CLI: JSON for machines, aligned text for people, readable errors."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from tocsin.client.endpoints import resolve_endpoints


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text_rows)]) for i, h in enumerate(headers)]
    for row in (list(headers), *text_rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def rfc3339(ts: Timestamp | datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, or None for an unset timestamp."""
    if ts is None:
        return None
    if isinstance(ts, Timestamp):
        if not ts.seconds and not ts.nanos:
            return None
        ts = ts.ToDatetime(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def describe_rpc_error(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        where = _unreachable(details or "")
        if where:
            return f"error: {code.name}: {where}; is the stack running? start it with `tocsin up`"
    lines = [f"error: {code.name if code else 'RPC'}: {details}"]
    trailers = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    raw = trailers.get("grpc-status-details-bin")
    if raw:
        status = status_pb2.Status.FromString(raw)
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    if code == grpc.StatusCode.UNAVAILABLE and not raw:  # not the service's own answer
        lines[0] += " (is the stack running? start it with `tocsin up`)"
    return "\n".join(lines)


_PEER = re.compile(r"(?:ipv4:|ipv6:|unix:)(\S+?): (.*?)(?:$|;)")


def _unreachable(details: str) -> str | None:
    """'cannot reach the incidents service at 127.0.0.1:50052 (Connection refused)' from
    gRPC's connection-failure text, naming the service the endpoints give that address."""
    match = _PEER.search(details)
    if match is None:
        return None
    address, why = match.group(1).strip("[]"), match.group(2).strip()
    reason = why.rsplit(": ", 1)[-1] if why else "no answer"
    service = "tocsin"
    try:
        endpoints = resolve_endpoints().as_dict()
    except ValueError:
        endpoints = {}
    for name, target in endpoints.items():
        if address in target.split(","):
            service = f"the {name} service"
            break
    return f"cannot reach {service} at {address} ({reason})"


def describe_os_error(error: OSError) -> str:
    """'cannot read missing.yaml: No such file or directory', without a traceback."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason
