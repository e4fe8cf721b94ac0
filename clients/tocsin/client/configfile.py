"""The declarative configuration a team keeps in git (`tocsin apply -f oncall.yaml`).

Parsing keeps every node's position, so each error names the file, the line and the
field path (`oncall.yaml:42: schedules[0].layers[1].rotation.length: ...`). The result is
the desired state as `tocsin.v1` messages; `apply` compares it with the running system.
Times without an offset are wall-clock times in the schedule's time zone, resolved as
RFC 5545 does (in a gap with the offset before it, when repeated the first occurrence).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from google.protobuf.duration_pb2 import Duration

from tocsin.client import webhook_config
from tocsin.client.contact_types import CONTACT_TYPES, expected_types
from tocsin.client.maintenance_config import maintenance_window
from tocsin.client.noise_config import (
    SEVERITIES,
    event_rule_set,
    grouping,
    heartbeat,
    level_strategy,
)
from tocsin.v1 import (
    common_pb2,
    escalation_pb2,
    incidents_pb2,
    notification_pb2,
    routing_pb2,
    scheduling_pb2,
    urgency_pb2,
    webhooks_pb2,
)

_DURATION = re.compile(r"([0-9]+)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ROLES = {
    "admin": common_pb2.ROLE_ADMIN,
    "responder": common_pb2.ROLE_RESPONDER,
    "observer": common_pb2.ROLE_OBSERVER,
}
"""A user's `role:` (default responder); see the README's "Identity and access"."""
_CONTACT_TYPES = CONTACT_TYPES


class ConfigFileError(ValueError):
    """Every problem found in the file, each as `file:line: field: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class UserConfig:
    user: scheduling_pb2.User
    contact_methods: list[notification_pb2.ContactMethod]
    rules: list[notification_pb2.NotificationRule]
    # False when the file does not mention `notification_rules`: apply leaves them alone.
    rules_given: bool = True
    # False when the file does not mention `handoff_notices`: apply keeps what the user set.
    handoff_given: bool = False


@dataclass
class DesiredState:
    users: list[UserConfig] = field(default_factory=list)
    schedules: list[scheduling_pb2.Schedule] = field(default_factory=list)
    policies: list[escalation_pb2.EscalationPolicy] = field(default_factory=list)
    services: list[incidents_pb2.Service] = field(default_factory=list)
    rule_sets: list[tuple[routing_pb2.EventRuleSet, str]] = field(default_factory=list)
    """Event rules (with their path in the file): the global set if the file has
    `event_rules`, and each service's that has `event_rules` (others are left alone)."""
    heartbeats: list[routing_pb2.HeartbeatMonitor] = field(default_factory=list)
    maintenance_windows: list[urgency_pb2.MaintenanceWindow] = field(default_factory=list)
    webhooks: list[webhooks_pb2.Webhook] = field(default_factory=list)
    """Outgoing webhook subscriptions, each with the secret read from its `secret_env`."""
    status_subscriptions: list[webhooks_pb2.Subscription] = field(default_factory=list)
    filename: str = ""
    # The line of every field path read (`users[0].contact_methods[1].address` -> 12), so
    # what the servers say about an object can be reported at its place in the file.
    lines: dict[str, int] = field(default_factory=dict)

    def location(self, path: str) -> str:
        """`file:line` of `path`, or of the nearest enclosing path the file has."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        return f"{self.filename}:{self.lines.get(probe, 1)}"

    def where(self, path: str) -> str:
        """`file:line: path`, the way every problem in the file is reported."""
        return f"{self.location(path)}: {path}"


class _Reader:
    """Walks YAML nodes, recording problems with their line instead of stopping."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []
        self.known: dict[str, set[str]] = {}
        self.lines: dict[str, int] = {}

    def mark(self, node: yaml.Node | None, path: str) -> None:
        if node is not None:
            self.lines.setdefault(path, node.start_mark.line + 1)

    def reference(self, node: yaml.Node | None, path: str, kind: str, noun: str) -> str:
        """The text of `node`, which must name a `kind` defined in the same file."""
        value = self.text(node, path)
        if node is not None and value not in self.known.get(kind, set()):
            self.problem(node, path, f"unknown {noun} {value!r}")
        return value

    def problem(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.filename}:{line}: {path}: {message}")

    def mapping(
        self,
        node: yaml.Node,
        path: str,
        allowed: set[str],
        required: frozenset[str] | set[str] = frozenset(),
    ) -> dict[str, yaml.Node]:
        self.mark(node, path)
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, "expected a mapping")
            return {}
        items: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key not in allowed:
                self.problem(
                    key_node,
                    f"{path}.{key}",
                    f"unknown field; expected one of {', '.join(sorted(allowed))}",
                )
            elif key in items:
                self.problem(key_node, f"{path}.{key}", "appears twice")
            else:
                items[key] = value_node
        for key in sorted(required - items.keys()):
            self.problem(node, f"{path}.{key}", "is required")
        return items

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node]:
        if node is None:
            return []
        self.mark(node, path)
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, path, "expected a list")
            return []
        return list(node.value)

    def text(self, node: yaml.Node | None, path: str, default: str = "") -> str:
        if node is None:
            return default
        self.mark(node, path)
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, "expected a string")
            return default
        return str(node.value)

    def integer(self, node: yaml.Node | None, path: str, default: int = 0) -> int:
        text = self.text(node, path, str(default))
        if not re.fullmatch(r"-?[0-9]+", text):
            self.problem(node, path, f"expected a whole number, got {text!r}")
            return default
        return int(text)

    def boolean(self, node: yaml.Node | None, path: str, default: bool = False) -> bool:
        text = self.text(node, path, "true" if default else "false").lower()
        if text not in ("true", "false", "yes", "no"):
            self.problem(node, path, f"expected true or false, got {text!r}")
            return default
        return text in ("true", "yes")

    def duration_seconds(self, node: yaml.Node | None, path: str, allow_zero: bool = False) -> int:
        text = self.text(node, path)
        match = _DURATION.fullmatch(text.strip())
        if match is None or (int(match.group(1)) == 0 and not allow_zero):
            self.problem(
                node, path, f"expected a duration like 30s, 5m, 2h, 1d or 1w, got {text!r}"
            )
            return 0
        return int(match.group(1)) * _SECONDS[match.group(2)]

    def zone(self, node: yaml.Node | None, path: str) -> ZoneInfo | None:
        name = self.text(node, path)
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.problem(node, path, f"unknown time zone {name!r}")
            return None

    def moment(self, node: yaml.Node | None, path: str, zone: ZoneInfo | None) -> datetime | None:
        text = self.text(node, path)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            self.problem(node, path, f"expected a time like 2026-11-27T18:00, got {text!r}")
            return None
        if value.tzinfo is None:
            if zone is None:
                return None
            value = value.replace(tzinfo=zone, fold=0)
        return value.astimezone(UTC)


def load_config_file(path: Path) -> DesiredState:
    """Parse and check `path`; ConfigFileError lists every problem with its line."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigFileError([f"{path}: not valid YAML: {error}"]) from error
    except UnicodeDecodeError as error:
        raise ConfigFileError([f"{path}: not UTF-8 text: {error}"]) from error
    except OSError as error:  # missing, a directory, not readable
        raise ConfigFileError([f"{path}: cannot read: {error.strerror or error}"]) from None
    reader = _Reader(str(path))
    state = DesiredState(filename=str(path), lines=reader.lines)
    if root is None:
        return state
    top = reader.mapping(
        root,
        "",
        {
            "users",
            "schedules",
            "escalation_policies",
            "services",
            "event_rules",
            "heartbeats",
            "webhooks",
            "status_subscriptions",
            "maintenance_windows",
        },
    )
    for kind in ("users", "schedules", "escalation_policies", "services"):
        reader.known[kind] = _ids(top.get(kind))
    for i, node in enumerate(reader.sequence(top.get("users"), "users")):
        state.users.append(_user(reader, node, f"users[{i}]"))
    for i, node in enumerate(reader.sequence(top.get("schedules"), "schedules")):
        state.schedules.append(_schedule(reader, node, f"schedules[{i}]"))
    for i, node in enumerate(
        reader.sequence(top.get("escalation_policies"), "escalation_policies")
    ):
        state.policies.append(_policy(reader, node, f"escalation_policies[{i}]"))
    for i, node in enumerate(reader.sequence(top.get("services"), "services")):
        state.services.append(_service(reader, node, f"services[{i}]"))
        rules = _service_rules(reader, node, f"services[{i}]", state.services[-1].id)
        if rules is not None:
            state.rule_sets.append(rules)
    if "event_rules" in top:
        state.rule_sets.insert(
            0, (event_rule_set(reader, top["event_rules"], "event_rules", ""), "event_rules")
        )
    for i, node in enumerate(reader.sequence(top.get("heartbeats"), "heartbeats")):
        state.heartbeats.append(heartbeat(reader, node, f"heartbeats[{i}]"))
    for i, node in enumerate(
        reader.sequence(top.get("maintenance_windows"), "maintenance_windows")
    ):
        state.maintenance_windows.append(
            maintenance_window(reader, node, f"maintenance_windows[{i}]")
        )
    for i, node in enumerate(reader.sequence(top.get("webhooks"), "webhooks")):
        state.webhooks.append(webhook_config.webhook(reader, node, f"webhooks[{i}]"))
    for i, node in enumerate(
        reader.sequence(top.get("status_subscriptions"), "status_subscriptions")
    ):
        state.status_subscriptions.append(
            webhook_config.status_subscription(reader, node, f"status_subscriptions[{i}]")
        )
    _check_duplicates(reader, top)
    if reader.problems:
        raise ConfigFileError(reader.problems)
    return state


HANDOFF_NOTICES = ("start", "end", "day_before")
"""The shift hand-off notices a user may ask for (scheduling/handoff.py's kinds)."""
_SLACK_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,20}")


def _user(r: _Reader, node: yaml.Node, path: str) -> UserConfig:
    m = r.mapping(
        node,
        path,
        {
            "id",
            "name",
            "time_zone",
            "email",
            "role",
            "contact_methods",
            "notification_rules",
            "handoff_notices",
        },
        {"id", "name"},
    )
    role_text = r.text(m.get("role"), f"{path}.role", "responder")
    role = ROLES.get(role_text)
    if role is None:
        r.problem(
            m.get("role"), f"{path}.role", f"expected one of {', '.join(ROLES)}, got {role_text!r}"
        )
    user = scheduling_pb2.User(
        id=r.text(m.get("id"), f"{path}.id"),
        name=r.text(m.get("name"), f"{path}.name"),
        time_zone=r.text(m.get("time_zone"), f"{path}.time_zone"),
        email=r.text(m.get("email"), f"{path}.email"),
        role=role or common_pb2.ROLE_RESPONDER,
    )
    if "time_zone" in m:
        r.zone(m["time_zone"], f"{path}.time_zone")
    for j, kind_node in enumerate(r.sequence(m.get("handoff_notices"), f"{path}.handoff_notices")):
        kind = r.text(kind_node, f"{path}.handoff_notices[{j}]")
        if kind not in HANDOFF_NOTICES:
            r.problem(
                kind_node,
                f"{path}.handoff_notices[{j}]",
                f"expected one of {', '.join(HANDOFF_NOTICES)}, got {kind!r}",
            )
        elif kind not in user.handoff_notices:
            user.handoff_notices.append(kind)
    methods = []
    for j, cm_node in enumerate(r.sequence(m.get("contact_methods"), f"{path}.contact_methods")):
        cm_path = f"{path}.contact_methods[{j}]"
        cm = r.mapping(cm_node, cm_path, {"id", "type", "address"}, {"id", "type", "address"})
        kind = r.text(cm.get("type"), f"{cm_path}.type")
        if "type" in cm and kind not in _CONTACT_TYPES:
            r.problem(cm["type"], f"{cm_path}.type", f"expected {expected_types()}, got {kind!r}")
        methods.append(
            notification_pb2.ContactMethod(
                id=r.text(cm.get("id"), f"{cm_path}.id"),
                user_id=user.id,
                type=_CONTACT_TYPES.get(kind, notification_pb2.CONTACT_METHOD_TYPE_UNSPECIFIED),
                address=r.text(cm.get("address"), f"{cm_path}.address"),
            )
        )
    rules = []
    known = {cm.id for cm in methods}
    for j, rule_node in enumerate(
        r.sequence(m.get("notification_rules"), f"{path}.notification_rules")
    ):
        rule_path = f"{path}.notification_rules[{j}]"
        rule = r.mapping(
            rule_node, rule_path, {"contact", "after", "urgency"}, {"contact", "after"}
        )
        contact = r.text(rule.get("contact"), f"{rule_path}.contact")
        if "contact" in rule and contact not in known:
            r.problem(
                rule["contact"],
                f"{rule_path}.contact",
                f"{user.id} has no contact method {contact!r}",
            )
        seconds = (
            r.duration_seconds(rule.get("after"), f"{rule_path}.after", allow_zero=True)
            if "after" in rule
            else 0
        )
        rules.append(
            notification_pb2.NotificationRule(
                contact_method_id=contact,
                delay=Duration(seconds=seconds),
                urgency=_choice(r, rule.get("urgency"), f"{rule_path}.urgency", URGENCIES, "high"),
            )
        )
    return UserConfig(
        user,
        methods,
        rules,
        rules_given="notification_rules" in m,
        handoff_given="handoff_notices" in m,
    )


def _schedule(r: _Reader, node: yaml.Node, path: str) -> scheduling_pb2.Schedule:
    m = r.mapping(
        node,
        path,
        {"id", "name", "time_zone", "layers", "overrides", "announce_slack_channel"},
        {"id", "time_zone"},
    )
    zone = r.zone(m.get("time_zone"), f"{path}.time_zone") if "time_zone" in m else None
    schedule = scheduling_pb2.Schedule(
        id=r.text(m.get("id"), f"{path}.id"),
        name=r.text(m.get("name"), f"{path}.name"),
        time_zone=r.text(m.get("time_zone"), f"{path}.time_zone"),
        announce_slack_channel=r.text(
            m.get("announce_slack_channel"), f"{path}.announce_slack_channel"
        ),
    )
    channel = schedule.announce_slack_channel
    if "announce_slack_channel" in m and not _SLACK_CHANNEL_ID.fullmatch(channel.strip().upper()):
        r.problem(
            m["announce_slack_channel"],
            f"{path}.announce_slack_channel",
            f"expected a Slack channel id like C024BE91L, got {channel!r}",
        )
    for j, layer_node in enumerate(r.sequence(m.get("layers"), f"{path}.layers")):
        schedule.layers.append(_layer(r, layer_node, f"{path}.layers[{j}]"))
    for j, o_node in enumerate(r.sequence(m.get("overrides"), f"{path}.overrides")):
        o_path = f"{path}.overrides[{j}]"
        o = r.mapping(o_node, o_path, {"user", "from", "to"}, {"user", "from", "to"})
        start = r.moment(o.get("from"), f"{o_path}.from", zone) if "from" in o else None
        end = r.moment(o.get("to"), f"{o_path}.to", zone) if "to" in o else None
        user = r.reference(o.get("user"), f"{o_path}.user", "users", "user")
        if start and end and end <= start:
            r.problem(o.get("to"), f"{o_path}.to", "must be after from")
        override = scheduling_pb2.Override(user_id=user, id=_override_id(user, start, end))
        if start and end:
            override.start.FromDatetime(start)
            override.end.FromDatetime(end)
        schedule.overrides.append(override)
    return schedule


def _layer(r: _Reader, node: yaml.Node, path: str) -> scheduling_pb2.Layer:
    m = r.mapping(
        node,
        path,
        {"name", "start", "rotation", "users", "restrictions"},
        {"name", "start", "rotation", "users"},
    )
    start = r.text(m.get("start"), f"{path}.start")
    if "start" in m:
        try:
            datetime.fromisoformat(start)
        except ValueError:
            r.problem(
                m["start"], f"{path}.start", f"expected a time like 2026-11-02T09:00, got {start!r}"
            )
    rotation = (
        r.mapping(m["rotation"], f"{path}.rotation", {"length"}, {"length"})
        if "rotation" in m
        else {}
    )
    length = r.text(rotation.get("length"), f"{path}.rotation.length")
    if "length" in rotation:
        r.duration_seconds(rotation["length"], f"{path}.rotation.length")
    users = [
        r.reference(u, f"{path}.users[{k}]", "users", "user")
        for k, u in enumerate(r.sequence(m.get("users"), f"{path}.users"))
    ]
    if "users" in m and not users:
        r.problem(m["users"], f"{path}.users", "a rotation needs at least one user")
    layer = scheduling_pb2.Layer(
        name=r.text(m.get("name"), f"{path}.name"),
        start=start,
        rotation_length=length,
        user_ids=users,
    )
    for k, res_node in enumerate(r.sequence(m.get("restrictions"), f"{path}.restrictions")):
        layer.restrictions.append(_restriction(r, res_node, f"{path}.restrictions[{k}]"))
    return layer


def _restriction(r: _Reader, node: yaml.Node, path: str) -> scheduling_pb2.Restriction:
    """A local window on days of the week (a layer's restriction, a support-hours window)."""
    res_path = path
    res = r.mapping(node, res_path, {"days", "from", "to"}, {"days", "from", "to"})
    restriction = scheduling_pb2.Restriction(to=r.text(res.get("to"), f"{res_path}.to"))
    setattr(restriction, "from", r.text(res.get("from"), f"{res_path}.from"))
    for bound in ("from", "to"):
        if bound in res:
            try:
                time.fromisoformat(r.text(res[bound], f"{res_path}.{bound}"))
            except ValueError:
                r.problem(res[bound], f"{res_path}.{bound}", "expected HH:MM")
    for d, day_node in enumerate(r.sequence(res.get("days"), f"{res_path}.days")):
        day = r.text(day_node, f"{res_path}.days[{d}]").lower()
        if day not in _DAYS:
            r.problem(
                day_node,
                f"{res_path}.days[{d}]",
                f"expected one of {', '.join(_DAYS)}, got {day!r}",
            )
        else:
            restriction.days.append(_DAYS.index(day) + 1)  # type: ignore[arg-type]
    return restriction


def _policy(r: _Reader, node: yaml.Node, path: str) -> escalation_pb2.EscalationPolicy:
    m = r.mapping(node, path, {"id", "name", "repeat", "levels"}, {"id", "levels"})
    policy = escalation_pb2.EscalationPolicy(
        id=r.text(m.get("id"), f"{path}.id"),
        name=r.text(m.get("name"), f"{path}.name"),
        repeat=r.integer(m.get("repeat"), f"{path}.repeat"),
    )
    for j, level_node in enumerate(r.sequence(m.get("levels"), f"{path}.levels")):
        level_path = f"{path}.levels[{j}]"
        level = r.mapping(
            level_node, level_path, {"delay", "targets", "strategy"}, {"delay", "targets"}
        )
        seconds = (
            r.duration_seconds(level.get("delay"), f"{level_path}.delay") if "delay" in level else 0
        )
        message = escalation_pb2.EscalationLevel(
            delay=Duration(seconds=seconds),
            strategy=level_strategy(r, level.get("strategy"), f"{level_path}.strategy"),
        )
        for k, t_node in enumerate(r.sequence(level.get("targets"), f"{level_path}.targets")):
            t_path = f"{level_path}.targets[{k}]"
            target = r.mapping(
                t_node, t_path, {"user", "schedule", "slack_channel", "teams_channel"}
            )
            if len(target) != 1:
                r.problem(
                    t_node,
                    t_path,
                    "name exactly one of user, schedule, slack_channel or teams_channel",
                )
            elif "slack_channel" in target:
                message.targets.append(
                    escalation_pb2.EscalationTarget(
                        slack_channel=r.text(target["slack_channel"], f"{t_path}.slack_channel")
                    )
                )
            elif "teams_channel" in target:
                message.targets.append(
                    escalation_pb2.EscalationTarget(
                        teams_channel=r.text(target["teams_channel"], f"{t_path}.teams_channel")
                    )
                )
            elif "user" in target:
                message.targets.append(
                    escalation_pb2.EscalationTarget(
                        user_id=r.reference(target["user"], f"{t_path}.user", "users", "user")
                    )
                )
            else:
                message.targets.append(
                    escalation_pb2.EscalationTarget(
                        schedule_id=r.reference(
                            target["schedule"], f"{t_path}.schedule", "schedules", "schedule"
                        )
                    )
                )
        policy.levels.append(message)
    return policy


def _service(r: _Reader, node: yaml.Node, path: str) -> incidents_pb2.Service:
    m = r.mapping(
        node,
        path,
        {
            "id",
            "name",
            "escalation_policy",
            "integration_key",
            "grouping",
            "event_rules",
            "urgency",
            "support_hours",
            "ack_timeout",
            "page_after_maintenance",
        },
        {"id", "escalation_policy"},
    )
    service = incidents_pb2.Service(
        id=r.text(m.get("id"), f"{path}.id"),
        name=r.text(m.get("name"), f"{path}.name"),
        escalation_policy_id=r.reference(
            m.get("escalation_policy"),
            f"{path}.escalation_policy",
            "escalation_policies",
            "escalation policy",
        ),
        integration_key=r.text(m.get("integration_key"), f"{path}.integration_key"),
    )
    if "grouping" in m:
        service.grouping.CopyFrom(grouping(r, m["grouping"], f"{path}.grouping"))
    if "urgency" in m:
        service.urgency.CopyFrom(_urgency_rule(r, m["urgency"], f"{path}.urgency"))
    if "support_hours" in m:
        hours_path = f"{path}.support_hours"
        hours = r.mapping(
            m["support_hours"], hours_path, {"time_zone", "windows"}, {"time_zone", "windows"}
        )
        if "time_zone" in hours:
            r.zone(hours["time_zone"], f"{hours_path}.time_zone")
        service.support_hours.time_zone = r.text(hours.get("time_zone"), f"{hours_path}.time_zone")
        windows = r.sequence(hours.get("windows"), f"{hours_path}.windows")
        if "windows" in hours and not windows:
            r.problem(hours["windows"], f"{hours_path}.windows", "needs at least one window")
        for k, w_node in enumerate(windows):
            service.support_hours.windows.append(
                _restriction(r, w_node, f"{hours_path}.windows[{k}]")
            )
    service.page_after_maintenance = r.boolean(
        m.get("page_after_maintenance"), f"{path}.page_after_maintenance"
    )
    if "ack_timeout" in m:
        seconds = r.duration_seconds(m["ack_timeout"], f"{path}.ack_timeout", allow_zero=True)
        if seconds:
            service.ack_timeout.CopyFrom(Duration(seconds=seconds))
    return service


def _service_rules(
    r: _Reader, node: yaml.Node, path: str, service_id: str
) -> tuple[routing_pb2.EventRuleSet, str] | None:
    """The service's `event_rules`, if the file gives them (parsed after the service)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if key.value == "event_rules":
            rules_path = f"{path}.event_rules"
            return event_rule_set(r, value, rules_path, service_id), rules_path
    return None


URGENCIES = {"high": common_pb2.URGENCY_UNSPECIFIED, "low": common_pb2.URGENCY_LOW}
"""A notification rule's `urgency:` (default high, which notification stores unset)."""
URGENCY_MODES = {
    "high": urgency_pb2.URGENCY_MODE_ALWAYS_HIGH,
    "low": urgency_pb2.URGENCY_MODE_ALWAYS_LOW,
    "severity": urgency_pb2.URGENCY_MODE_SEVERITY,
    "support_hours": urgency_pb2.URGENCY_MODE_SUPPORT_HOURS,
}
"""A service's `urgency:` (or `urgency: {mode: ...}`)."""


def _choice(
    r: _Reader, node: yaml.Node | None, path: str, names: Mapping[str, Any], default: str
) -> Any:
    text = r.text(node, path, default)
    if text not in names:
        r.problem(node, path, f"expected one of {', '.join(names)}, got {text!r}")
        return names[default]
    return names[text]


def _urgency_rule(r: _Reader, node: yaml.Node, path: str) -> urgency_pb2.UrgencyRule:
    """`urgency: severity`, or a mapping with `mode` and the options of that mode."""
    if isinstance(node, yaml.ScalarNode):
        return urgency_pb2.UrgencyRule(mode=_choice(r, node, path, URGENCY_MODES, "high"))
    m = r.mapping(
        node,
        path,
        {"mode", "high_severities", "low_inside_support_hours", "defer_low_outside_support_hours"},
        {"mode"},
    )
    rule = urgency_pb2.UrgencyRule(
        mode=_choice(r, m.get("mode"), f"{path}.mode", URGENCY_MODES, "high")
    )
    for k, sev_node in enumerate(r.sequence(m.get("high_severities"), f"{path}.high_severities")):
        rule.high_severities.append(
            _choice(r, sev_node, f"{path}.high_severities[{k}]", SEVERITIES, "critical")
        )
    rule.low_inside_support_hours = r.boolean(
        m.get("low_inside_support_hours"), f"{path}.low_inside_support_hours"
    )
    rule.defer_low_outside_support_hours = r.boolean(
        m.get("defer_low_outside_support_hours"), f"{path}.defer_low_outside_support_hours"
    )
    return rule


def _ids(section: yaml.Node | None) -> set[str]:
    """The ids defined in a top-level section, read before the sections refer to each other."""
    ids: set[str] = set()
    if isinstance(section, yaml.SequenceNode):
        for item in section.value:
            if isinstance(item, yaml.MappingNode):
                ids |= {
                    str(v.value)
                    for k, v in item.value
                    if k.value == "id" and isinstance(v, yaml.ScalarNode)
                }
    return ids


def _check_duplicates(r: _Reader, top: dict[str, yaml.Node]) -> None:
    _check_unique_values(r, top, "users", "contact_methods", "id", "contact method id")
    _check_unique_values(r, top, "services", None, "integration_key", "integration key")
    for kind in (
        "users",
        "schedules",
        "escalation_policies",
        "services",
        "heartbeats",
        "webhooks",
        "status_subscriptions",
        "maintenance_windows",
    ):
        seen: set[str] = set()
        section = top.get(kind)
        items = section.value if isinstance(section, yaml.SequenceNode) else []
        for i, item in enumerate(items):
            if not isinstance(item, yaml.MappingNode):
                continue
            for key, value in item.value:
                if key.value == "id":
                    if value.value in seen:
                        r.problem(value, f"{kind}[{i}].id", f"{value.value!r} is defined twice")
                    seen.add(value.value)


def _override_id(user: str, start: datetime | None, end: datetime | None) -> str:
    """Deterministic, so applying the same file twice changes nothing."""
    digest = hashlib.sha256(f"{user}|{start}|{end}".encode()).hexdigest()
    return f"cfg-{digest[:12]}"


def _check_unique_values(
    r: _Reader, top: dict[str, yaml.Node], kind: str, inner: str | None, key: str, noun: str
) -> None:
    """`key` must differ across every `kind[i]` (or every `kind[i].inner[j]`): contact
    method ids are global, and an integration key names one service."""
    seen: set[str] = set()
    for i, item in enumerate(_mappings(top.get(kind))):
        entries = [(f"{kind}[{i}]", item)]
        if inner is not None:
            entries = [
                (f"{kind}[{i}].{inner}[{j}]", sub)
                for value_key, value in item.value
                if value_key.value == inner
                for j, sub in enumerate(_mappings(value))
            ]
        for path, entry in entries:
            for field_key, value in entry.value:
                if field_key.value == key and isinstance(value, yaml.ScalarNode) and value.value:
                    if value.value in seen:
                        r.problem(value, f"{path}.{key}", f"{noun} {value.value!r} is used twice")
                    seen.add(value.value)


def _mappings(node: yaml.Node | None) -> list[yaml.MappingNode]:
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item for item in node.value if isinstance(item, yaml.MappingNode)]
