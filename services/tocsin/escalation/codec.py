"""Encodings: policies between protobuf and domain; escalation state as stored JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.escalation.domain import Escalation, Level, Page, Policy, Status, Target
from tocsin.v1 import escalation_pb2 as pb


def policy_from_proto(msg: pb.EscalationPolicy) -> Policy:
    levels = tuple(
        Level(
            targets=tuple(
                Target("user", t.user_id)
                if t.WhichOneof("target") == "user_id"
                else Target("schedule", t.schedule_id)
                for t in level.targets
            ),
            delay_ms=level.delay.seconds * 1000 + level.delay.nanos // 1_000_000,
        )
        for level in msg.levels
    )
    return Policy(msg.id, msg.name, levels, msg.repeat, msg.version)


def policy_to_proto(policy: Policy) -> pb.EscalationPolicy:
    return pb.EscalationPolicy(
        id=policy.id,
        name=policy.name,
        repeat=policy.repeat,
        version=policy.version,
        levels=[
            pb.EscalationLevel(
                targets=[
                    pb.EscalationTarget(user_id=t.id)
                    if t.kind == "user"
                    else pb.EscalationTarget(schedule_id=t.id)
                    for t in level.targets
                ],
                delay=Duration(seconds=level.delay_ms // 1000, nanos=level.delay_ms % 1000 * 10**6),
            )
            for level in policy.levels
        ],
    )


def _ts(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromtimestamp(ms / 1000, tz=UTC))
    return ts


def escalation_to_proto(state: Escalation) -> pb.Escalation:
    status = {
        Status.ACTIVE: pb.ESCALATION_STATUS_ACTIVE,
        Status.STOPPED: pb.ESCALATION_STATUS_STOPPED,
        Status.EXHAUSTED: pb.ESCALATION_STATUS_EXHAUSTED,
    }[state.status]
    msg = pb.Escalation(
        incident_id=state.incident_id,
        policy=policy_to_proto(state.policy),
        status=status,
        level=state.last_fired_level,
        loop=state.pages[-1].loop if state.pages else 0,
        pages=[
            pb.EscalationPage(
                level=p.level,
                loop=p.loop,
                user_id=p.user_id,
                schedule_id=p.schedule_id,
                at=_ts(p.at_ms),
            )
            for p in state.pages
        ],
        version=state.version,
        started_at=_ts(state.started_ms),
    )
    if state.next_fire_ms is not None:
        msg.next_fire_at.CopyFrom(_ts(state.next_fire_ms))
    return msg


def dump_state(state: Escalation) -> str:
    policy = state.policy
    return json.dumps(
        {
            "incident": state.incident_id,
            "policy": {
                "id": policy.id,
                "name": policy.name,
                "repeat": policy.repeat,
                "version": policy.version,
                "levels": [
                    {"delay_ms": lv.delay_ms, "targets": [[t.kind, t.id] for t in lv.targets]}
                    for lv in policy.levels
                ],
            },
            "status": state.status.value,
            "next_level": state.next_level,
            "loop": state.loop,
            "next_fire_ms": state.next_fire_ms,
            "version": state.version,
            "epoch": state.epoch,
            "started_ms": state.started_ms,
            "pages": [
                [p.level, p.loop, p.user_id, p.schedule_id, p.at_ms, p.epoch] for p in state.pages
            ],
        },
        separators=(",", ":"),
    )


def load_state(raw: bytes | str) -> Escalation:
    data = json.loads(raw)
    policy = data["policy"]
    return Escalation(
        incident_id=data["incident"],
        policy=Policy(
            policy["id"],
            policy["name"],
            tuple(
                Level(tuple(Target(k, i) for k, i in lv["targets"]), lv["delay_ms"])
                for lv in policy["levels"]
            ),
            policy["repeat"],
            policy["version"],
        ),
        status=Status(data["status"]),
        next_level=data["next_level"],
        loop=data["loop"],
        next_fire_ms=data["next_fire_ms"],
        version=data["version"],
        epoch=data["epoch"],
        started_ms=data["started_ms"],
        pages=tuple(Page(*p) for p in data["pages"]),
    )
