"""`tocsin escalation INCIDENT` (where an escalation stands) and `tocsin escalate INCIDENT`."""

from __future__ import annotations

import argparse
from typing import Any

from tocsin.cli.common import add_json_flag, incident_id, incident_number, run_with_client
from tocsin.cli.output import print_json, print_table, rfc3339
from tocsin.client.client import TocsinClient
from tocsin.v1 import escalation_pb2 as pb

_STATUS = {
    pb.ESCALATION_STATUS_ACTIVE: "active",
    pb.ESCALATION_STATUS_STOPPED: "stopped",
    pb.ESCALATION_STATUS_EXHAUSTED: "exhausted",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    show = commands.add_parser(
        "escalation", help="an incident's escalation: level, loop, next fire, who was paged"
    )
    show.add_argument("incident", type=incident_number, help="incident number (18 or #18)")
    add_json_flag(show)
    show.set_defaults(run=_show)
    escalate = commands.add_parser("escalate", help="page the next escalation level now")
    escalate.add_argument("incident", type=incident_number, help="incident number (18 or #18)")
    add_json_flag(escalate)
    escalate.set_defaults(run=_escalate)


def escalation_json(escalation: pb.Escalation) -> dict[str, Any]:
    return {
        "incident": escalation.incident_id,
        "policy": escalation.policy.id,
        "status": _STATUS.get(escalation.status, "unknown"),
        "level": escalation.level,
        "loop": escalation.loop,
        "levels": len(escalation.policy.levels),
        "repeat": escalation.policy.repeat,
        "next_fire_at": rfc3339(escalation.next_fire_at)
        if escalation.HasField("next_fire_at")
        else None,
        "pages": [
            {
                "level": p.level,
                "loop": p.loop,
                "user": p.user_id,
                "schedule": p.schedule_id or None,
                "at": rfc3339(p.at),
            }
            for p in escalation.pages
        ],
    }


def _print(escalation: pb.Escalation, as_json: bool) -> None:
    data = escalation_json(escalation)
    if as_json:
        print_json(data)
        return
    level = data["level"] + 1 if data["level"] >= 0 else "none yet"
    print(
        f"incident {data['incident']}: policy {data['policy']}, {data['status']}, "
        f"level {level} of {data['levels']}, loop {data['loop'] + 1} of {data['repeat'] + 1}"
    )
    print(f"next level fires at {data['next_fire_at'] or 'never (no level left or stopped)'}")
    if data["pages"]:
        print_table(
            ["LEVEL", "LOOP", "USER", "SCHEDULE", "AT"],
            [
                [p["level"] + 1, p["loop"] + 1, p["user"], p["schedule"] or "-", p["at"]]
                for p in data["pages"]
            ],
        )


def _show(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> pb.GetEscalationResponse:
        return await client.escalation.GetEscalation(
            pb.GetEscalationRequest(incident_id=await incident_id(client, args.incident))
        )

    _print(run_with_client(body).escalation, args.json)
    return 0


def _escalate(args: argparse.Namespace) -> int:
    async def body(client: TocsinClient) -> pb.EscalateResponse:
        request = pb.EscalateRequest(incident_id=await incident_id(client, args.incident))
        return await client.escalation.Escalate(request)

    _print(run_with_client(body).escalation, args.json)
    return 0
