"""Encodings: policies between protobuf and domain; escalation state as stored JSON; the
level and hop timer payloads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.escalation.domain import Awaiting, Escalation, Level, Page, Policy, Status, Target
from tocsin.v1 import escalation_pb2 as pb


def _target_from_proto(t: pb.EscalationTarget) -> Target:
    kind = t.WhichOneof("target")
    if kind == "user_id":
        return Target("user", t.user_id)
    if kind == "slack_channel":
        return Target("slack_channel", t.slack_channel.strip().upper())
    if kind == "teams_channel":
        return Target("teams_channel", t.teams_channel.strip())
    return Target("schedule", t.schedule_id)


def _target_to_proto(t: Target) -> pb.EscalationTarget:
    if t.kind == "user":
        return pb.EscalationTarget(user_id=t.id)
    if t.kind == "slack_channel":
        return pb.EscalationTarget(slack_channel=t.id)
    if t.kind == "teams_channel":
        return pb.EscalationTarget(teams_channel=t.id)
    return pb.EscalationTarget(schedule_id=t.id)


def policy_from_proto(msg: pb.EscalationPolicy) -> Policy:
    levels = tuple(
        Level(
            targets=tuple(_target_from_proto(t) for t in level.targets),
            delay_ms=level.delay.seconds * 1000 + level.delay.nanos // 1_000_000,
            round_robin=level.strategy == pb.LEVEL_STRATEGY_ROUND_ROBIN,
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
                targets=[_target_to_proto(t) for t in level.targets],
                delay=Duration(seconds=level.delay_ms // 1000, nanos=level.delay_ms % 1000 * 10**6),
                strategy=(
                    pb.LEVEL_STRATEGY_ROUND_ROBIN
                    if level.round_robin
                    else pb.LEVEL_STRATEGY_UNSPECIFIED
                ),
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
    """The stored JSON; "aw" ([level, loop, fired ms, delay ms]) only while a level awaits
    its pages' report, so a state written before it existed reads as "nothing awaited"."""
    policy = state.policy
    data: dict[str, Any] = {
        "incident": state.incident_id,
        "policy": {
            "id": policy.id,
            "name": policy.name,
            "repeat": policy.repeat,
            "version": policy.version,
            "levels": [
                {
                    "delay_ms": lv.delay_ms,
                    "targets": [[t.kind, t.id] for t in lv.targets],
                    **({"rr": True} if lv.round_robin else {}),
                }
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
    }
    if state.awaiting is not None:
        aw = state.awaiting
        data["aw"] = [aw.level, aw.loop, aw.fired_ms, aw.delay_ms]
    if state.low_urgency:
        data["low"] = True  # absent (every state before urgencies): high
    if state.service_id:
        data["svc"] = state.service_id
    return json.dumps(data, separators=(",", ":"))


def load_state(raw: bytes | str) -> Escalation:
    data = json.loads(raw)
    policy = data["policy"]
    return Escalation(
        incident_id=data["incident"],
        policy=Policy(
            policy["id"],
            policy["name"],
            tuple(
                Level(
                    tuple(Target(k, i) for k, i in lv["targets"]),
                    lv["delay_ms"],
                    lv.get("rr", False),
                )
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
        awaiting=Awaiting(*(int(v) for v in data["aw"])) if data.get("aw") else None,
        low_urgency=bool(data.get("low", False)),
        service_id=str(data.get("svc") or ""),
    )


# The timer payloads: written here, carried by lua/write_escalation.lua (which stores them
# as they are), read back here when the timer fires. The stored keys are unchanged since
# the first version, so timers armed before an upgrade, and replicas of an older version
# during a rolling upgrade, read the same bytes; a new field must be optional.


@dataclass(frozen=True)
class LevelTimerPayload:
    """What a level timer carries: the state version it was armed for (a firing for an
    older version is stale) and the trace to continue. Stored as {"v", "tp"}."""

    version: int
    traceparent: str

    def encode(self) -> str:
        return json.dumps({"v": self.version, "tp": self.traceparent}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> LevelTimerPayload:
        data = json.loads(raw)
        return cls(int(data["v"]), str(data.get("tp") or ""))


@dataclass(frozen=True)
class HopPage:
    """One Notify a hop makes. Stored as [level, loop, user id, schedule id] and, for a
    channel target (user id from runtime/channeltargets.py), its address."""

    level: int
    loop: int
    user_id: str
    schedule_id: str
    address: str = ""


@dataclass(frozen=True)
class HopPayload:
    """The outgoing work of one fired level (an outbox timer): its Notify calls and its
    timeline notes. `next_level_ms` is when the next level is due (the pages matter until
    then); `low_urgency` pages with the users' low-urgency rules; `service_id` is the
    incident's service, named in each Notify (the sender's per-service queues);
    `summary`, `number` and `created_ms` are the incident's as its TRIGGERED event gave
    them, carried by the level that event fired so its pages need not ask the incidents
    service for them ("" / 0 otherwise). Stored as {"incident", "epoch", "pages", "notes",
    "tp"[, "until"][, "low"][, "svc"][, "sum", "nr", "ca"]}."""

    incident_id: str
    epoch: int
    pages: tuple[HopPage, ...]
    notes: tuple[dict[str, Any], ...]
    traceparent: str
    next_level_ms: int | None = None
    low_urgency: bool = False
    service_id: str = ""
    summary: str = ""
    number: int = 0
    created_ms: int = 0

    def encode(self) -> str:
        data: dict[str, Any] = {
            "incident": self.incident_id,
            "epoch": self.epoch,
            "pages": [
                [p.level, p.loop, p.user_id, p.schedule_id, *([p.address] if p.address else [])]
                for p in self.pages
            ],
            "notes": list(self.notes),
            "tp": self.traceparent,
        }
        if self.next_level_ms is not None:
            data["until"] = self.next_level_ms
        if self.low_urgency:
            data["low"] = True
        if self.service_id:
            data["svc"] = self.service_id
        if self.summary:
            data.update(sum=self.summary, nr=self.number, ca=self.created_ms)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> HopPayload:
        data = json.loads(raw)
        return cls(
            incident_id=str(data["incident"]),
            epoch=int(data["epoch"]),
            pages=tuple(
                HopPage(int(level), int(loop), str(user), str(schedule), *map(str, rest))
                for level, loop, user, schedule, *rest in data["pages"]
            ),
            notes=tuple(data["notes"]),
            traceparent=str(data.get("tp") or ""),
            next_level_ms=int(data["until"]) if data.get("until") is not None else None,
            low_urgency=bool(data.get("low", False)),
            service_id=str(data.get("svc") or ""),
            summary=str(data.get("sum") or ""),
            number=int(data.get("nr") or 0),
            created_ms=int(data.get("ca") or 0),
        )
