"""Event rules as pure functions: how fields read, conditions hold, templates render,
first match per set, and that a failing rule is a non-match that is reported."""

from __future__ import annotations

from typing import Any

import pytest

from tocsin.incidents import rules
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2

EQUALS = routing_pb2.MATCH_OPERATOR_EQUALS
EXISTS = routing_pb2.MATCH_OPERATOR_EXISTS
REGEX = routing_pb2.MATCH_OPERATOR_REGEX


def alert(**details: Any) -> incidents_pb2.Alert:
    result = incidents_pb2.Alert(
        summary="disk full", source="db-1", severity=common_pb2.SEVERITY_ERROR
    )
    result.details.update(details)
    return result


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("summary", "disk full"),
        ("severity", "error"),
        ("component", None),
        ("details.used", "97"),
        ("details.ratio", "0.5"),
        ("details.ok", "false"),
        ("details.host.name", "db-1"),
        ("details.host", '{"name":"db-1"}'),
        ("details.tags", '["a","b"]'),
        ("details.missing", None),
        ("details.used.deeper", None),
        ("details.empty", None),
    ],
)
def test_fields_read_as_text(name: str, expected: str | None) -> None:
    value = alert(used=97, ratio=0.5, ok=False, host={"name": "db-1"}, tags=["a", "b"], empty="")
    assert rules.field_value(value, name) == expected


def _set(*rule_list: routing_pb2.EventRule, service: str = "") -> rules.RuleSet:
    return rules.compile_rule_set(routing_pb2.EventRuleSet(service_id=service, rules=rule_list))


def _rule(
    rule_id: str, field: str, op: int, value: str = "", **actions: Any
) -> routing_pb2.EventRule:
    return routing_pb2.EventRule(
        id=rule_id,
        conditions=[routing_pb2.EventCondition(field=field, operator=op, value=value)],  # type: ignore[arg-type]
        actions=routing_pb2.EventRuleActions(**actions),
    )


def test_the_first_match_of_each_set_applies_and_a_broken_rule_does_not_match() -> None:
    sets = {
        "": _set(
            _rule("slow", "summary", REGEX, "(a|aa)+$", suppress=True),
            _rule("key", "source", EXISTS, dedup_key_template="{source}/{details.mount}"),
            _rule("never", "source", EXISTS, suppress=True),  # after a match: not evaluated
        ),
        "svc": _set(
            _rule("lower", "severity", EQUALS, "error", severity=common_pb2.SEVERITY_WARNING),
            service="svc",
        ),
    }
    value = alert(mount="/var")
    value.summary = "a" * 60 + "b"
    outcome = rules.evaluate(sets.get, "svc", value, "k", timeout_s=0.005)
    assert outcome.suppressed_by == ""
    assert outcome.dedup_key == "db-1//var"
    assert value.severity == common_pb2.SEVERITY_WARNING
    assert outcome.changes == [
        "global/key: dedup key 'db-1//var'",
        "svc/lower: severity error -> warning",
    ]
    assert len(outcome.failures) == 1 and outcome.failures[0].startswith("global/slow: ")


def test_negation_and_absent_fields() -> None:
    negated = routing_pb2.EventRule(
        id="prod",
        conditions=[
            routing_pb2.EventCondition(
                field="details.env", operator=EQUALS, value="staging", negate=True
            )
        ],
        actions=routing_pb2.EventRuleActions(suppress=True),
    )
    sets = {"": _set(negated)}
    assert rules.evaluate(sets.get, "svc", alert(env="staging"), "k").suppressed_by == ""
    assert rules.evaluate(sets.get, "svc", alert(env="prod"), "k").suppressed_by == "global/prod"
    assert rules.evaluate(sets.get, "svc", alert(), "k").suppressed_by == "global/prod"


def test_group_keys() -> None:
    by_time = routing_pb2.AlertGrouping()
    by_time.window.seconds = 300
    assert rules.group_key(by_time, alert()) == rules.TIME_GROUP_KEY
    by_content = routing_pb2.AlertGrouping(fields=["source", "details.region"])
    eu, us = alert(region="eu"), alert(region="us")
    assert rules.group_key(by_content, eu) == rules.group_key(by_content, alert(region="eu"))
    assert rules.group_key(by_content, eu) != rules.group_key(by_content, us)
    assert rules.group_key(routing_pb2.AlertGrouping(), eu) is None
