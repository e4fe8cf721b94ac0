"""The noise-control parts of the configuration file (`tocsin apply` / `tocsin export`):
event rules, a service's alert grouping, heartbeat monitors, a level's strategy.

    event_rules:                      # global rules, evaluated first, in order
      - id: route-postgres
        when:                         # every condition must hold (none: always)
          - {field: component, equals: postgres}
        route_to: db-team
    services:
      - id: payments-api
        escalation_policy: payments
        grouping: {window: 5m}        # or {fields: [component, details.region]}
        event_rules:                  # then the service's own; the first match applies
          - id: tls-expiry
            when:
              - {field: summary, contains: "certificate expires"}
              - {field: details.env, regex: "^stag", not: true}
            suppress: true
          - id: db-key
            when: [{field: details.check, exists: true}]
            severity: warning
            urgency: low              # or high: whatever the service would decide
            dedup_key: "{source}/{details.check}"
    heartbeats:
      - {id: nightly-backup, service: payments-api, interval: 24h, grace: 30m}
    escalation_policies:
      - id: support
        levels:
          - {delay: 10m, strategy: round_robin, targets: [{user: ann}, {user: bob}]}

A file without `event_rules` (top level, or on a service) leaves those rules as they run;
`event_rules: []` removes them. Each problem is reported at its line, as everywhere in the
file; what only the server can tell (a service that does not exist) is mapped back to the
rule's line by apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import regex
import yaml
from google.protobuf.duration_pb2 import Duration

from tocsin.v1 import common_pb2, escalation_pb2, routing_pb2

if TYPE_CHECKING:
    from tocsin.client.configfile import _Reader

SEVERITIES = {
    "info": common_pb2.SEVERITY_INFO,
    "warning": common_pb2.SEVERITY_WARNING,
    "error": common_pb2.SEVERITY_ERROR,
    "critical": common_pb2.SEVERITY_CRITICAL,
}
OPERATORS = {
    "equals": routing_pb2.MATCH_OPERATOR_EQUALS,
    "contains": routing_pb2.MATCH_OPERATOR_CONTAINS,
    "regex": routing_pb2.MATCH_OPERATOR_REGEX,
    "exists": routing_pb2.MATCH_OPERATOR_EXISTS,
}
URGENCIES = {"high": common_pb2.URGENCY_HIGH, "low": common_pb2.URGENCY_LOW}
STRATEGIES = {
    "all": escalation_pb2.LEVEL_STRATEGY_UNSPECIFIED,
    "round_robin": escalation_pb2.LEVEL_STRATEGY_ROUND_ROBIN,
}
_FIELDS = ("summary", "source", "severity", "component", "group", "class")


def _field_name(r: _Reader, node: yaml.Node | None, path: str) -> str:
    name = r.text(node, path)
    if node is not None and not (
        name in _FIELDS
        or (name.startswith("details.") and all(name.removeprefix("details.").split(".")))
    ):
        r.problem(
            node, path, f"expected one of {', '.join(_FIELDS)} or details.<key>, got {name!r}"
        )
    return name


def level_strategy(
    r: _Reader, node: yaml.Node | None, path: str
) -> escalation_pb2.LevelStrategy.ValueType:
    if node is None:
        return escalation_pb2.LEVEL_STRATEGY_UNSPECIFIED
    text = r.text(node, path)
    if text not in STRATEGIES:
        r.problem(node, path, f"expected all or round_robin, got {text!r}")
        return escalation_pb2.LEVEL_STRATEGY_UNSPECIFIED
    return STRATEGIES[text]


def grouping(r: _Reader, node: yaml.Node, path: str) -> routing_pb2.AlertGrouping:
    m = r.mapping(node, path, {"window", "fields"})
    result = routing_pb2.AlertGrouping()
    if "window" in m:
        result.window.CopyFrom(Duration(seconds=r.duration_seconds(m["window"], f"{path}.window")))
    for i, field_node in enumerate(r.sequence(m.get("fields"), f"{path}.fields")):
        result.fields.append(_field_name(r, field_node, f"{path}.fields[{i}]"))
    if ("window" in m) == ("fields" in m):
        r.problem(node, path, "give window (group by time) or fields (group by content)")
    return result


def event_rule_set(
    r: _Reader, node: yaml.Node, path: str, service_id: str
) -> routing_pb2.EventRuleSet:
    rule_set = routing_pb2.EventRuleSet(service_id=service_id)
    seen: set[str] = set()
    for i, rule_node in enumerate(r.sequence(node, path)):
        rule = _rule(r, rule_node, f"{path}[{i}]")
        if rule.id in seen:
            r.problem(rule_node, f"{path}[{i}].id", f"{rule.id!r} is defined twice")
        seen.add(rule.id)
        rule_set.rules.append(rule)
    return rule_set


def _rule(r: _Reader, node: yaml.Node, path: str) -> routing_pb2.EventRule:
    m = r.mapping(
        node,
        path,
        {"id", "when", "suppress", "severity", "urgency", "route_to", "dedup_key"},
        {"id"},
    )
    rule = routing_pb2.EventRule(id=r.text(m.get("id"), f"{path}.id"))
    for j, c_node in enumerate(r.sequence(m.get("when"), f"{path}.when")):
        rule.conditions.append(_condition(r, c_node, f"{path}.when[{j}]"))
    actions = rule.actions
    if "suppress" in m:
        actions.suppress = r.boolean(m["suppress"], f"{path}.suppress")
    if "severity" in m:
        text = r.text(m["severity"], f"{path}.severity")
        if text not in SEVERITIES:
            r.problem(m["severity"], f"{path}.severity", f"expected one of {', '.join(SEVERITIES)}")
        actions.severity = SEVERITIES.get(text, common_pb2.SEVERITY_UNSPECIFIED)
    if "urgency" in m:
        text = r.text(m["urgency"], f"{path}.urgency")
        if text not in URGENCIES:
            r.problem(m["urgency"], f"{path}.urgency", f"expected high or low, got {text!r}")
        actions.urgency = URGENCIES.get(text, common_pb2.URGENCY_UNSPECIFIED)
    if "route_to" in m:
        actions.route_to_service_id = r.reference(
            m["route_to"], f"{path}.route_to", "services", "service"
        )
    if "dedup_key" in m:
        actions.dedup_key_template = r.text(m["dedup_key"], f"{path}.dedup_key")
    if not (
        actions.suppress
        or actions.severity
        or actions.urgency
        or actions.route_to_service_id
        or actions.dedup_key_template
    ):
        r.problem(
            node, path, "a rule needs an action: suppress, severity, urgency, route_to or dedup_key"
        )
    return rule


def _condition(r: _Reader, node: yaml.Node, path: str) -> routing_pb2.EventCondition:
    m = r.mapping(node, path, {"field", *OPERATORS, "not"}, {"field"})
    condition = routing_pb2.EventCondition(field=_field_name(r, m.get("field"), f"{path}.field"))
    given = [name for name in OPERATORS if name in m]
    if len(given) != 1:
        r.problem(node, path, f"give exactly one of {', '.join(OPERATORS)}")
        return condition
    name = given[0]
    condition.operator = OPERATORS[name]
    if name == "exists":
        if not r.boolean(m[name], f"{path}.exists", default=True):
            r.problem(m[name], f"{path}.exists", "must be true (use not: true for absent)")
    else:
        condition.value = r.text(m[name], f"{path}.{name}")
        if name == "regex":
            try:
                regex.compile(condition.value)
            except regex.error as error:
                r.problem(m[name], f"{path}.regex", f"not a regular expression: {error}")
    if "not" in m:
        condition.negate = r.boolean(m["not"], f"{path}.not")
    return condition


def heartbeat(r: _Reader, node: yaml.Node, path: str) -> routing_pb2.HeartbeatMonitor:
    m = r.mapping(
        node,
        path,
        {"id", "name", "service", "interval", "grace", "token"},
        {"id", "service", "interval"},
    )
    monitor = routing_pb2.HeartbeatMonitor(
        id=r.text(m.get("id"), f"{path}.id"),
        name=r.text(m.get("name"), f"{path}.name"),
        service_id=r.reference(m.get("service"), f"{path}.service", "services", "service"),
        token=r.text(m.get("token"), f"{path}.token"),
    )
    if "interval" in m:
        monitor.interval.seconds = r.duration_seconds(m["interval"], f"{path}.interval")
    if "grace" in m:
        monitor.grace.seconds = r.duration_seconds(m["grace"], f"{path}.grace", allow_zero=True)
    return monitor


# -- export ---------------------------------------------------------------------------------


def rule_set_config(rule_set: routing_pb2.EventRuleSet) -> dict[str, Any]:
    """{"rules": [...]} as the file writes them (`tocsin export`, `tocsin rules`)."""
    names = {v: k for k, v in OPERATORS.items()}
    severities = {v: k for k, v in SEVERITIES.items()}
    rules = []
    for rule in rule_set.rules:
        entry: dict[str, Any] = {"id": rule.id}
        when = []
        for c in rule.conditions:
            op = names.get(c.operator, "equals")
            item: dict[str, Any] = {"field": c.field, op: True if op == "exists" else c.value}
            if c.negate:
                item["not"] = True
            when.append(item)
        if when:
            entry["when"] = when
        a = rule.actions
        if a.suppress:
            entry["suppress"] = True
        if a.severity:
            entry["severity"] = severities.get(a.severity, "critical")
        if a.urgency:
            entry["urgency"] = "low" if a.urgency == common_pb2.URGENCY_LOW else "high"
        if a.route_to_service_id:
            entry["route_to"] = a.route_to_service_id
        if a.dedup_key_template:
            entry["dedup_key"] = a.dedup_key_template
        rules.append(entry)
    return {"rules": rules}


def grouping_config(value: routing_pb2.AlertGrouping) -> dict[str, Any]:
    from tocsin.client.export import duration_text

    if value.window.seconds:
        return {"window": duration_text(value.window)}
    return {"fields": list(value.fields)}


def heartbeat_config(monitor: routing_pb2.HeartbeatMonitor) -> dict[str, Any]:
    """A monitor as the file writes it, without its token (a secret: apply keeps the
    running token when the file gives none)."""
    from tocsin.client.export import duration_text

    entry: dict[str, Any] = {"id": monitor.id}
    if monitor.name and monitor.name != monitor.id:
        entry["name"] = monitor.name
    entry["service"] = monitor.service_id
    entry["interval"] = duration_text(monitor.interval)
    if monitor.grace.seconds:
        entry["grace"] = duration_text(monitor.grace)
    return entry
