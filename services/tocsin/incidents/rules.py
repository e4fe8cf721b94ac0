"""Event rules and alert grouping: pure functions from an incoming alert to what becomes of it.

Event rules run on every alert before dedup, global rules first, then the rules of the
service the alert is filed under after the global ones (a global rule may route it); in
each set the first rule whose conditions all hold applies its actions and the set stops.
Actions: suppress (recorded, no incident, nobody paged), set the severity, route to
another service, set the dedup key from a template of the alert's fields.

The guarantee: **a rule that fails to evaluate never drops an alert.** A condition that
raises (a regular expression that runs out of time, anything unexpected) makes its rule
not match; the failure is returned in `Outcome.failures`, which the caller writes to the
alert's timeline entry and logs, and evaluation goes on with the next rule. So a broken
rule can at worst leave an alert unchanged, and an unchanged alert pages.

Regular expressions are compiled with the `regex` package and every search runs with a
time limit (REGEX_TIMEOUT_S): a pattern that backtracks catastrophically on some input
costs at most that long per alert and counts as a failure, instead of stalling the ingest
path (the standard `re` module cannot be interrupted, and no syntactic "safe subset" of
patterns we could check rules out every polynomial blow-up such as `.*.*.*x`). Patterns
are also compiled when the rule set is stored, so a bad pattern is refused then, naming
its field.

Alert grouping (AlertGrouping on the service) applies to an alert with no open incident
under its own dedup key: time grouping files it under the service's time group, joined
while that group's incident had an alert less than `window` ago; content grouping files
it under the values of the chosen fields. `group_key` says which key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import regex
from google.protobuf.struct_pb2 import ListValue, Struct, Value

from tocsin.runtime.errors import FieldViolation
from tocsin.runtime.ids import id_violations
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2

REGEX_TIMEOUT_S = 0.01
"""The most one regular-expression search of one alert field may take."""
MAX_RULES = 200
"""Rules per rule set."""
MAX_CONDITIONS = 20
"""Conditions per rule."""
MAX_VALUE = 1024
"""The longest condition value or pattern, and the longest dedup key template."""
MAX_GROUP_FIELDS = 5
"""Fields content grouping may name."""
MAX_SUBJECT = 64 * 1024
"""The most characters of one field a condition reads (details may be large)."""
ALERT_FIELDS = ("summary", "source", "severity", "component", "group", "class")
"""The alert fields conditions, templates and grouping may name, besides details.<key>."""
GLOBAL = "global"
"""How the timeline names the global rule set (`global/<rule id>`)."""
TIME_GROUP_KEY = "~group:time"
"""The dedup key time-grouped alerts are filed under."""
CONTENT_GROUP_PREFIX = "~group:"
"""Content-grouped alerts are filed under this and a digest of the chosen values."""

SEVERITY_NAMES: Mapping[int, str] = {
    common_pb2.SEVERITY_INFO: "info",
    common_pb2.SEVERITY_WARNING: "warning",
    common_pb2.SEVERITY_ERROR: "error",
    common_pb2.SEVERITY_CRITICAL: "critical",
}
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")
_OPERATORS = frozenset(routing_pb2.MatchOperator.values()) - {
    routing_pb2.MATCH_OPERATOR_UNSPECIFIED
}


class RuleFailure(Exception):
    """A condition could not be evaluated."""


def field_violations(name: str, path: str) -> list[FieldViolation]:
    """[] when `name` is a field conditions, templates and grouping may name."""
    if name in ALERT_FIELDS:
        return []
    if name.startswith("details.") and all(name.removeprefix("details.").split(".")):
        return []
    return [
        FieldViolation(
            path,
            f"expected one of {', '.join(ALERT_FIELDS)} or details.<key>, got {name!r}",
        )
    ]


def rule_set_violations(
    rule_set: routing_pb2.EventRuleSet, prefix: str = "rule_set"
) -> list[FieldViolation]:
    """Everything wrong with a rule set, named by field path (patterns are compiled here)."""
    violations: list[FieldViolation] = []
    if rule_set.service_id:
        violations += id_violations(rule_set.service_id, f"{prefix}.service_id")
    if len(rule_set.rules) > MAX_RULES:
        violations.append(FieldViolation(f"{prefix}.rules", f"at most {MAX_RULES} rules"))
    seen: set[str] = set()
    for i, rule in enumerate(rule_set.rules):
        path = f"{prefix}.rules[{i}]"
        violations += id_violations(rule.id, f"{path}.id")
        if rule.id in seen:
            violations.append(FieldViolation(f"{path}.id", f"{rule.id!r} is used twice"))
        seen.add(rule.id)
        if len(rule.conditions) > MAX_CONDITIONS:
            violations.append(
                FieldViolation(f"{path}.conditions", f"at most {MAX_CONDITIONS} conditions")
            )
        for j, condition in enumerate(rule.conditions):
            violations += _condition_violations(condition, f"{path}.conditions[{j}]")
        violations += _actions_violations(rule.actions, f"{path}.actions")
    return violations


def _condition_violations(condition: routing_pb2.EventCondition, path: str) -> list[FieldViolation]:
    violations = field_violations(condition.field, f"{path}.field")
    if condition.operator not in _OPERATORS:
        violations.append(
            FieldViolation(f"{path}.operator", "expected equals, contains, regex or exists")
        )
    if len(condition.value) > MAX_VALUE:
        violations.append(FieldViolation(f"{path}.value", f"at most {MAX_VALUE} characters"))
    if (
        condition.operator
        in (
            routing_pb2.MATCH_OPERATOR_EQUALS,
            routing_pb2.MATCH_OPERATOR_CONTAINS,
        )
        and condition.field == "severity"
        and condition.value not in SEVERITY_NAMES.values()
    ):
        violations.append(
            FieldViolation(
                f"{path}.value",
                f"a severity is one of {', '.join(SEVERITY_NAMES.values())}, "
                f"got {condition.value!r}",
            )
        )
    if condition.operator == routing_pb2.MATCH_OPERATOR_REGEX:
        try:
            regex.compile(condition.value)
        except regex.error as error:
            violations.append(FieldViolation(f"{path}.value", f"not a regular expression: {error}"))
    return violations


def _actions_violations(actions: routing_pb2.EventRuleActions, path: str) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if actions.severity and actions.severity not in SEVERITY_NAMES:
        violations.append(FieldViolation(f"{path}.severity", "unknown severity"))
    if actions.route_to_service_id:
        violations += id_violations(actions.route_to_service_id, f"{path}.route_to_service_id")
    template = actions.dedup_key_template
    if len(template) > MAX_VALUE:
        violations.append(
            FieldViolation(f"{path}.dedup_key_template", f"at most {MAX_VALUE} characters")
        )
    for name in _TEMPLATE_FIELD.findall(template):
        violations += field_violations(name, f"{path}.dedup_key_template")
    if actions.urgency not in common_pb2.Urgency.values():
        violations.append(FieldViolation(f"{path}.urgency", "unknown urgency"))
    if not (
        actions.suppress
        or actions.severity
        or actions.route_to_service_id
        or template
        or actions.urgency
    ):
        violations.append(
            FieldViolation(
                path, "a rule needs an action: suppress, severity, urgency, route or dedup key"
            )
        )
    return violations


def grouping_violations(
    grouping: routing_pb2.AlertGrouping, prefix: str = "service.grouping"
) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    window_ms = grouping.window.ToMilliseconds()
    if window_ms < 0 or (0 < window_ms < 1000):
        violations.append(FieldViolation(f"{prefix}.window", "must be at least 1 second"))
    if len(grouping.fields) > MAX_GROUP_FIELDS:
        violations.append(FieldViolation(f"{prefix}.fields", f"at most {MAX_GROUP_FIELDS} fields"))
    for i, name in enumerate(grouping.fields):
        violations += field_violations(name, f"{prefix}.fields[{i}]")
    if window_ms and grouping.fields:
        violations.append(
            FieldViolation(prefix, "group by time (window) or by content (fields), not both")
        )
    return violations


# -- reading an alert ---------------------------------------------------------------------


def field_value(alert: incidents_pb2.Alert, name: str) -> str | None:
    """The text of an alert field (None when absent or empty): severity by name, a
    details value as its text (numbers and booleans as JSON writes them, lists and maps as
    JSON)."""
    return AlertView(alert).field(name)


class AlertView:
    """An alert's fields as rules read them, each computed once per alert (many rules
    read the same few fields; details are converted from protobuf once, when first read)."""

    __slots__ = ("_alert", "_details", "_values")

    def __init__(self, alert: incidents_pb2.Alert) -> None:
        self._alert = alert
        self._details: dict[str, object] | None = None
        self._values: dict[str, str | None] = {}

    def forget(self) -> None:
        """Read the fields afresh (a rule changed the alert)."""
        self._values.clear()

    def field(self, name: str) -> str | None:
        try:
            return self._values[name]
        except KeyError:
            pass
        value = self._read(name)
        self._values[name] = value
        return value

    def _read(self, name: str) -> str | None:
        alert = self._alert
        if name == "severity":
            return SEVERITY_NAMES.get(alert.severity)
        if name in ALERT_FIELDS:
            text: str = getattr(alert, name)
            return text or None
        if self._details is None:
            self._details = _plain(alert.details)  # type: ignore[assignment]
        value: object = self._details
        for part in name.removeprefix("details.").split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return _value_text(value)


def _value_text(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return None


def _plain(value: Value | Struct | ListValue) -> object:
    if isinstance(value, Struct):
        return {k: _plain(v) for k, v in value.fields.items()}
    if isinstance(value, ListValue):
        return [_plain(v) for v in value.values]
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _plain(value.struct_value)
    if kind == "list_value":
        return _plain(value.list_value)
    return None if kind == "null_value" or kind is None else getattr(value, kind)


def render(template: str, alert: incidents_pb2.Alert) -> str:
    """`template` with each {field} replaced by the alert's value (absent: empty)."""
    view = AlertView(alert)
    return _TEMPLATE_FIELD.sub(lambda m: view.field(m.group(1)) or "", template)


# -- compiled rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    field: str
    operator: int
    value: str
    negate: bool
    pattern: regex.Pattern[str] | None

    def holds(self, alert: AlertView, timeout_s: float) -> bool:
        """Raises RuleFailure when it cannot tell (a search out of time)."""
        text = alert.field(self.field)
        if self.operator == routing_pb2.MATCH_OPERATOR_EXISTS:
            found = text is not None
        elif text is None:
            found = False
        elif self.operator == routing_pb2.MATCH_OPERATOR_EQUALS:
            found = text == self.value
        elif self.operator == routing_pb2.MATCH_OPERATOR_CONTAINS:
            found = self.value in text
        else:
            assert self.pattern is not None
            try:
                found = self.pattern.search(text[:MAX_SUBJECT], timeout=timeout_s) is not None
            except TimeoutError as error:
                raise RuleFailure(
                    f"the regular expression on {self.field} ran out of time ({timeout_s}s)"
                ) from error
        return found != self.negate


@dataclass(frozen=True)
class Rule:
    name: str
    """`<scope>/<id>`: what the timeline names."""
    conditions: tuple[Condition, ...]
    actions: routing_pb2.EventRuleActions


@dataclass(frozen=True)
class RuleSet:
    service_id: str
    version: int
    rules: tuple[Rule, ...]


def compile_rule_set(rule_set: routing_pb2.EventRuleSet) -> RuleSet:
    """The rule set ready to evaluate (it was checked by rule_set_violations when stored;
    a pattern that no longer compiles becomes a condition that always fails)."""
    scope = rule_set.service_id or GLOBAL
    rules = []
    for rule in rule_set.rules:
        conditions = []
        for c in rule.conditions:
            pattern = None
            if c.operator == routing_pb2.MATCH_OPERATOR_REGEX:
                try:
                    pattern = regex.compile(c.value)
                except regex.error:
                    pattern = None
            conditions.append(Condition(c.field, c.operator, c.value, c.negate, pattern))
        rules.append(Rule(f"{scope}/{rule.id}", tuple(conditions), rule.actions))
    return RuleSet(rule_set.service_id, rule_set.version, tuple(rules))


# -- evaluation ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the rules made of an alert (its severity is changed in place)."""

    service_id: str
    dedup_key: str
    suppressed_by: str = ""
    urgency: common_pb2.Urgency.ValueType = common_pb2.URGENCY_UNSPECIFIED
    """Set by a rule: the urgency of the incident the alert opens."""
    urgency_rule: str = ""
    """The rule that set `urgency`."""
    changes: list[str] = field(default_factory=list)
    """`<rule>: what it did`, for the timeline."""
    failures: list[str] = field(default_factory=list)
    """`<rule>: why it could not be evaluated`, for the timeline and the log."""


def evaluate(
    sets: Callable[[str], RuleSet | None],
    service_id: str,
    alert: incidents_pb2.Alert,
    dedup_key: str,
    timeout_s: float = REGEX_TIMEOUT_S,
) -> Outcome:
    """Run the global rules, then those of the service the alert is then under.

    `sets("")` is the global set, `sets(id)` a service's (None: no rules). Never raises
    for a rule's sake: see the module docstring."""
    outcome = Outcome(service_id, dedup_key)
    if alert.severity == common_pb2.SEVERITY_UNSPECIFIED:  # as ingest reads it
        alert.severity = common_pb2.SEVERITY_CRITICAL
    view = AlertView(alert)
    _run(sets(""), alert, view, outcome, timeout_s)
    if not outcome.suppressed_by:
        _run(sets(outcome.service_id), alert, view, outcome, timeout_s)
    return outcome


def _run(
    rule_set: RuleSet | None,
    alert: incidents_pb2.Alert,
    view: AlertView,
    outcome: Outcome,
    timeout_s: float,
) -> None:
    if rule_set is None:
        return
    for rule in rule_set.rules:
        try:
            matched = True
            for condition in rule.conditions:
                if not condition.holds(view, timeout_s):
                    matched = False
                    break
        except Exception as error:  # a broken rule must not drop the alert: it does not match
            reason = str(error) if isinstance(error, RuleFailure) else repr(error)
            outcome.failures.append(f"{rule.name}: {reason}; treated as not matching")
            continue
        if matched:
            _act(rule, alert, outcome)
            view.forget()  # its severity may have changed
            return


def _act(rule: Rule, alert: incidents_pb2.Alert, outcome: Outcome) -> None:
    actions = rule.actions
    if actions.suppress:
        outcome.suppressed_by = rule.name
        outcome.changes.append(f"{rule.name}: suppressed")
        return
    if actions.severity and actions.severity != alert.severity:
        before = SEVERITY_NAMES.get(alert.severity, str(alert.severity))
        alert.severity = actions.severity
        outcome.changes.append(
            f"{rule.name}: severity {before} -> {SEVERITY_NAMES[actions.severity]}"
        )
    if actions.urgency:
        outcome.urgency, outcome.urgency_rule = actions.urgency, rule.name
        name = "low" if actions.urgency == common_pb2.URGENCY_LOW else "high"
        outcome.changes.append(f"{rule.name}: urgency {name}")
    if actions.dedup_key_template:
        outcome.dedup_key = render(actions.dedup_key_template, alert)
        outcome.changes.append(f"{rule.name}: dedup key {outcome.dedup_key!r}")
    if actions.route_to_service_id and actions.route_to_service_id != outcome.service_id:
        outcome.service_id = actions.route_to_service_id
        outcome.changes.append(f"{rule.name}: routed to service {outcome.service_id}")


def group_key(grouping: routing_pb2.AlertGrouping, alert: incidents_pb2.Alert) -> str | None:
    """The dedup key a grouped alert is filed under; None when the service does not group."""
    if grouping.window.ToMilliseconds() > 0:
        return TIME_GROUP_KEY
    if grouping.fields:
        view = AlertView(alert)
        values = [view.field(name) or "" for name in grouping.fields]
        digest = hashlib.sha256(json.dumps(values).encode()).hexdigest()[:32]
        return CONTENT_GROUP_PREFIX + digest
    return None


def describe(items: Iterable[str]) -> str:
    return "; ".join(items)
