"""Noise control from the command line: `tocsin rules` (event rules), `tocsin suppressed`
(alerts rules suppressed), `tocsin merge A B`, and `tocsin heartbeats` / `tocsin heartbeat
create|delete|ping` (heartbeat monitors). Rules and monitors are also in `tocsin apply`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tocsin.cli.common import (
    add_json_flag,
    cli_actor,
    incident_id,
    incident_number,
    run_with_client,
)
from tocsin.cli.incident_commands import duration
from tocsin.cli.output import print_json, print_table, rfc3339
from tocsin.client.client import TocsinClient
from tocsin.client.noise_config import rule_set_config
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2

_SEVERITY = {
    common_pb2.SEVERITY_INFO: "info",
    common_pb2.SEVERITY_WARNING: "warning",
    common_pb2.SEVERITY_ERROR: "error",
    common_pb2.SEVERITY_CRITICAL: "critical",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = commands.add_parser("rules", help="event rules: the global ones and each service's")
    rules.add_argument("service", nargs="?", help="only this service's rules")
    add_json_flag(rules)
    rules.set_defaults(run=_rules)

    suppressed = commands.add_parser("suppressed", help="alerts event rules suppressed")
    suppressed.add_argument("--service", default="", help="only this service's")
    suppressed.add_argument("--limit", type=int, default=50, help="at most this many (newest)")
    add_json_flag(suppressed)
    suppressed.set_defaults(run=_suppressed)

    merge = commands.add_parser(
        "merge", help="merge incident B into A: B's alerts join A, B is resolved as merged"
    )
    merge.add_argument("target", type=incident_number, help="the incident that stays (A)")
    merge.add_argument("merged", type=incident_number, help="the incident merged into it (B)")
    add_json_flag(merge)
    merge.set_defaults(run=_merge)

    heartbeats = commands.add_parser("heartbeats", help="heartbeat monitors and their state")
    add_json_flag(heartbeats)
    heartbeats.set_defaults(run=_heartbeats)

    heartbeat = commands.add_parser("heartbeat", help="create, delete or ping a heartbeat monitor")
    actions = heartbeat.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a monitor that must be pinged every INTERVAL")
    create.add_argument("id", help="monitor id, e.g. nightly-backup")
    create.add_argument("--service", required=True, help="the service its incidents open on")
    create.add_argument("--interval", type=duration, required=True, help="e.g. 10m, 1h, 24h")
    create.add_argument("--grace", type=duration, default=None, help="extra time (default 0)")
    create.add_argument("--name", default="", help="display name")
    add_json_flag(create)
    create.set_defaults(run=_create)
    delete = actions.add_parser("delete", help="delete a monitor and its timer")
    delete.add_argument("id")
    delete.set_defaults(run=_delete)
    ping = actions.add_parser("ping", help="ping a monitor by its token (as its URL would)")
    ping.add_argument("token")
    ping.set_defaults(run=_ping)


def _rules(args: argparse.Namespace) -> int:
    if args.service:
        request = routing_pb2.GetEventRulesRequest(service_id=args.service)
        reply = run_with_client(lambda c: c.incidents.GetEventRules(request))
        sets = [reply.rule_set]
    else:
        sets = list(
            run_with_client(
                lambda c: c.incidents.ListEventRules(routing_pb2.ListEventRulesRequest())
            ).rule_sets
        )
    data = [
        {"service": s.service_id or None, "version": s.version, **rule_set_config(s)} for s in sets
    ]
    if args.json:
        print_json(data)
        return 0
    rows = []
    for rule_set, config in zip(sets, data, strict=True):
        for rule in config.get("rules", []):
            when = " and ".join(_condition_text(c) for c in rule.get("when", [])) or "always"
            what = ", ".join(f"{k} {v}" for k, v in rule.items() if k not in ("id", "when"))
            rows.append([rule_set.service_id or "(global)", rule["id"], when, what])
    if not rows:
        print("no event rules")
        return 0
    print_table(["SCOPE", "RULE", "WHEN", "THEN"], rows)
    return 0


def _condition_text(condition: dict[str, Any]) -> str:
    field = condition["field"]
    for op in ("equals", "contains", "regex"):
        if op in condition:
            return f"{field} {op} {condition[op]!r}"
    text = f"{field} exists"
    return f"not {text}" if condition.get("not") else text


def _suppressed(args: argparse.Namespace) -> int:
    request = routing_pb2.ListSuppressedAlertsRequest(service_id=args.service, page_size=args.limit)
    reply = run_with_client(lambda c: c.incidents.ListSuppressedAlerts(request))
    data = {
        "total": reply.total,
        "alerts": [
            {
                "at": rfc3339(a.at),
                "service": a.service_id,
                "rule": a.rule,
                "severity": _SEVERITY.get(a.severity, "critical"),
                "summary": a.summary,
                "dedup_key": a.dedup_key,
            }
            for a in reply.alerts
        ],
    }
    if args.json:
        print_json(data)
        return 0
    print(f"{reply.total} alert(s) suppressed in all")
    if data["alerts"]:
        print_table(
            ["AT", "SERVICE", "RULE", "SEVERITY", "SUMMARY"],
            [
                [a["at"], a["service"], a["rule"], a["severity"], a["summary"]]
                for a in data["alerts"]
            ],
        )
    return 0


def _merge(args: argparse.Namespace) -> int:
    async def merge(client: TocsinClient) -> tuple[incidents_pb2.MergeIncidentsResponse, str]:
        merged = await incident_id(client, args.merged)
        request = incidents_pb2.MergeIncidentsRequest(
            incident_id=await incident_id(client, args.target),
            merged_incident_id=merged,
            actor=cli_actor(),
        )
        return await client.incidents.MergeIncidents(request), merged

    reply, merged = run_with_client(merge)
    if args.json:
        print_json(
            {
                "incident": reply.incident.id,
                "merged": merged,
                "alerts_moved": reply.alerts_moved,
                "alert_count": reply.incident.alert_count,
            }
        )
        return 0
    print(
        f"Merged {args.merged} into {args.target}: {reply.alerts_moved} alert(s) moved, "
        f"{args.merged} resolved"
    )
    return 0


def ping_url(token: str) -> str:
    """The monitor's ping URL, from TOCSIN_PUBLIC_URL (or the gateway address)."""
    base = os.environ.get("TOCSIN_PUBLIC_URL", "").rstrip("/")
    if not base:
        from tocsin.client.endpoints import resolve_endpoints

        base = "http://" + resolve_endpoints().http
    return f"{base}/v1/heartbeat/{token}"


def _monitor_json(monitor: routing_pb2.HeartbeatMonitor) -> dict[str, Any]:
    return {
        "id": monitor.id,
        "name": monitor.name,
        "service": monitor.service_id,
        "interval_s": monitor.interval.seconds,
        "grace_s": monitor.grace.seconds,
        "state": "missed" if monitor.missed else "ok",
        "last_ping_at": rfc3339(monitor.last_ping_at) if monitor.HasField("last_ping_at") else None,
        "deadline": rfc3339(monitor.deadline) if monitor.HasField("deadline") else None,
        "url": ping_url(monitor.token),
    }


def _heartbeats(args: argparse.Namespace) -> int:
    reply = run_with_client(
        lambda c: c.incidents.ListHeartbeatMonitors(routing_pb2.ListHeartbeatMonitorsRequest())
    )
    data = [_monitor_json(m) for m in reply.monitors]
    if args.json:
        print_json(data)
        return 0
    if not data:
        print("no heartbeat monitors")
        return 0
    print_table(
        ["ID", "SERVICE", "EVERY", "STATE", "LAST PING", "DEADLINE", "URL"],
        [
            [
                m["id"],
                m["service"],
                f"{m['interval_s']}s+{m['grace_s']}s",
                m["state"],
                m["last_ping_at"] or "-",
                m["deadline"] or "-",
                m["url"],
            ]
            for m in data
        ],
    )
    return 0


def _create(args: argparse.Namespace) -> int:
    monitor = routing_pb2.HeartbeatMonitor(id=args.id, service_id=args.service, name=args.name)
    monitor.interval.FromTimedelta(args.interval)
    if args.grace is not None:
        monitor.grace.FromTimedelta(args.grace)
    request = routing_pb2.CreateHeartbeatMonitorRequest(monitor=monitor)
    reply = run_with_client(lambda c: c.incidents.CreateHeartbeatMonitor(request))
    if args.json:
        print_json(_monitor_json(reply.monitor))
        return 0
    print(f"Created heartbeat monitor {reply.monitor.id}; ping it with POST or GET:")
    print(ping_url(reply.monitor.token))
    return 0


def _delete(args: argparse.Namespace) -> int:
    request = routing_pb2.DeleteHeartbeatMonitorRequest(id=args.id)
    run_with_client(lambda c: c.incidents.DeleteHeartbeatMonitor(request))
    print(f"Deleted heartbeat monitor {args.id}")
    return 0


def _ping(args: argparse.Namespace) -> int:
    request = routing_pb2.PingHeartbeatRequest(token=args.token)
    reply = run_with_client(lambda c: c.incidents.PingHeartbeat(request))
    print(
        f"Pinged {reply.monitor_id}"
        + ("; its missed heartbeat is resolved" if reply.recovered else "")
    )
    return 0
