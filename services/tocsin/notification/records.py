"""The records that notification's Lua scripts and this code both read or write, each with
its one codec, so a field is named in one place per language and a round trip pins the two
together (tests/notification/test_records.py runs the real scripts against Redis).

- `CycleRule`: one rule of a cycle's snapshot. Python writes the list (cycle hash field
  `rules`, JSON); lua/notify.lua reads it to arm the rule timers and lua/cycle_lib.lua to
  find the next rule with another contact method.
- `TimerPayload`: what a rule's timer carries. lua/notify.lua writes it; Python reads it
  and writes it back with a rate-limit slot (lua/rearm.lua stores it as it is).
- `AttemptRecord`: one send attempt (lua/attempt_lib.lua's record). Lua writes it
  (fire.lua, the status updates, the sweep); Python writes a test page's record for
  lua/attempt_begin.lua and a notice's for lua/notice_begin.lua, and reads every record
  back.

The stored keys are short and have not changed since the first version: records already
in Redis, and replicas of an older version during a rolling upgrade, read the same bytes.
A new field must be optional on both sides (absent = its default), never a renamed key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from tocsin.v1 import notification_pb2


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


@dataclass(frozen=True)
class CycleRule:
    """Fire on `contact_method_id` (over `channel`, a ContactMethodType) `delay_ms` after
    the cycle starts. Stored as {"cm", "d", "t"}."""

    contact_method_id: str
    delay_ms: int
    channel: int

    def to_json(self) -> dict[str, Any]:
        return {"cm": self.contact_method_id, "d": self.delay_ms, "t": self.channel}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CycleRule:
        return cls(str(data["cm"]), int(data["d"]), int(data["t"]))


def encode_rules(rules: Sequence[CycleRule]) -> str:
    return _dumps([r.to_json() for r in rules])


def decode_rules(raw: bytes | str) -> list[CycleRule]:
    return [CycleRule.from_json(r) for r in json.loads(raw)]


@dataclass(frozen=True)
class TimerPayload:
    """What a rule's timer carries (lua/notify.lua writes it). `slot_ms` is set once a
    rate-limit slot is reserved, so the firing at that slot sends without reserving again.
    A send the provider refused without processing it is retried from the same timer:
    until `retry_until_ms` (set at the first refusal), `retries` times so far.
    `awaited_key` (rule 0's only) is the cycle's Notify idempotency key when an
    escalation level waits for this page to go out, "" when none does, None when the
    payload does not say (one armed by an older version: the cycle is read).
    Stored as {"c", "r", "u", "cm", "t", "tp"[, "k"][, "s"][, "ru", "n"]}."""

    cycle_id: str
    rule_index: int
    user_id: str
    contact_method_id: str
    channel: int
    traceparent: str
    slot_ms: int | None = None
    retry_until_ms: int | None = None
    retries: int = 0
    awaited_key: str | None = None

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "c": self.cycle_id,
            "r": self.rule_index,
            "u": self.user_id,
            "cm": self.contact_method_id,
            "t": self.channel,
            "tp": self.traceparent,
        }
        if self.awaited_key is not None:
            data["k"] = self.awaited_key
        if self.slot_ms is not None:
            data["s"] = self.slot_ms
        if self.retry_until_ms is not None:
            data["ru"] = self.retry_until_ms
            data["n"] = self.retries
        return _dumps(data).encode()

    @classmethod
    def decode(cls, payload: bytes | str) -> TimerPayload:
        data = json.loads(payload)
        slot, until, awaited = data.get("s"), data.get("ru"), data.get("k")
        return cls(
            cycle_id=str(data["c"]),
            rule_index=int(data["r"]),
            user_id=str(data["u"]),
            contact_method_id=str(data["cm"]),
            channel=int(data["t"]),
            traceparent=str(data.get("tp") or ""),
            slot_ms=int(slot) if slot is not None else None,
            retry_until_ms=int(until) if until is not None else None,
            retries=int(data.get("n") or 0),
            awaited_key=str(awaited) if awaited is not None else None,
        )

    def with_slot(self, slot_ms: int) -> TimerPayload:
        return replace(self, slot_ms=slot_ms)

    @property
    def incident_id(self) -> str:
        return self.cycle_id.partition("-")[0]

    @property
    def attempt_id(self) -> str:
        return f"{self.cycle_id}-{self.rule_index}"


@dataclass(frozen=True)
class AttemptRecord:
    """One send attempt as lua/attempt_lib.lua stores it (JSON in the attempts hash):
    {"id", "inc", "user", "cm", "type", "rule", "st", "c", "u"} and, once known,
    "pid", "err", "pst", "code", "n", "prov"; a notice's also "k" ("notice") and "nk" (its
    idempotency key). `status` is an AttemptStatus, `channel` a ContactMethodType;
    `position` is the record's place in its hash, set by Lua."""

    id: str
    incident_id: str
    user_id: str
    contact_method_id: str
    channel: int
    rule_index: int
    status: int
    created_ms: int
    updated_ms: int
    provider_id: str = ""
    error_code: int = 0
    provider_status: str = ""
    reply_code: str = ""
    position: int = 0
    providers: tuple[str, ...] = ()
    """The phone providers it was handed to, in order ("prov": comma-separated)."""
    notice: bool = False
    """A notice (SendNotice), not a page or test page ("k": "notice")."""
    notice_key: str = ""
    """A notice's idempotency key ("nk")."""

    @property
    def kind(self) -> notification_pb2.AttemptKind.ValueType:
        if self.notice:
            return notification_pb2.ATTEMPT_KIND_NOTICE
        if self.incident_id:
            return notification_pb2.ATTEMPT_KIND_PAGE
        return notification_pb2.ATTEMPT_KIND_TEST

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "inc": self.incident_id,
            "user": self.user_id,
            "cm": self.contact_method_id,
            "type": self.channel,
            "rule": self.rule_index,
            "st": self.status,
            "c": self.created_ms,
            "u": self.updated_ms,
        }
        optional = {
            "pid": self.provider_id,
            "err": self.error_code,
            "pst": self.provider_status,
            "code": self.reply_code,
            "n": self.position,
            "prov": ",".join(self.providers),
            "k": "notice" if self.notice else "",
            "nk": self.notice_key,
        }
        data.update((k, v) for k, v in optional.items() if v)
        return data

    def encode(self) -> str:
        return _dumps(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptRecord:
        return cls(
            id=str(data["id"]),
            incident_id=str(data.get("inc") or ""),
            user_id=str(data["user"]),
            contact_method_id=str(data["cm"]),
            channel=int(data["type"]),
            rule_index=int(data["rule"]),
            status=int(data["st"]),
            created_ms=int(data["c"]),
            updated_ms=int(data["u"]),
            provider_id=str(data.get("pid") or ""),
            error_code=int(data.get("err") or 0),
            provider_status=str(data.get("pst") or ""),
            reply_code=str(data.get("code") or ""),
            position=int(data.get("n") or 0),
            providers=tuple(p for p in str(data.get("prov") or "").split(",") if p),
            notice=data.get("k") == "notice",
            notice_key=str(data.get("nk") or ""),
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> AttemptRecord:
        return cls.from_json(json.loads(raw))

    def to_proto(self) -> notification_pb2.Attempt:
        return notification_pb2.Attempt(
            id=self.id,
            incident_id=self.incident_id,
            user_id=self.user_id,
            contact_method_id=self.contact_method_id,
            type=notification_pb2.ContactMethodType.ValueType(self.channel),
            rule_index=self.rule_index,
            status=notification_pb2.AttemptStatus.ValueType(self.status),
            provider_id=self.provider_id,
            error_code=self.error_code,
            provider_status=self.provider_status,
            reply_code=self.reply_code,
            created_at=_timestamp(self.created_ms),
            updated_at=_timestamp(self.updated_ms),
            providers=list(self.providers),
            kind=self.kind,
            notice_key=self.notice_key,
        )


def attempts_in_order(raws: Iterable[bytes | str]) -> list[AttemptRecord]:
    """Records by creation time, then position in their hash, then id."""
    records = [AttemptRecord.decode(r) for r in raws]
    records.sort(key=lambda r: (r.created_ms, r.position, r.id))
    return records


def _timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(int(ms))
    return ts
