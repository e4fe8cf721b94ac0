"""The metric names a PromQL expression reads, and the deploy files' expressions.

No PromQL parser is at hand (promtool is Go), so this is a tokenizer that knows enough of
the grammar for the expressions tocsin ships: it drops string literals, label matchers
`{...}`, ranges `[...]`, `by (...)` / `without (...)` label lists, Grafana's `$variables`
and numbers, then every identifier left that is not a function or a keyword is a metric
name. A name it misses or invents fails tests/deploy and the e2e check loudly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tocsin-dashboard.json"

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "holt_winters", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log2", "log10", "max_over_time",
    "min_over_time", "predict_linear", "quantile_over_time", "rate", "resets", "round",
    "scalar", "sort", "sort_desc", "sqrt", "stddev_over_time", "sum_over_time", "time",
    "timestamp", "vector",
}  # fmt: skip
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan"}  # fmt: skip
SYNTHETIC = {"up"}
"""Series Prometheus writes itself for every target, not the code."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = _VARIABLE.sub(" ", expr)
    text = _STRING.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if word.lower() in FUNCTIONS | AGGREGATIONS | KEYWORDS:
            continue
        if re.fullmatch(r"\d*[eE]?\d*", word):
            continue
        names.add(word)
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in dashboard()["panels"] for t in panel.get("targets", [])]


def deploy_exprs() -> list[str]:
    return [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
