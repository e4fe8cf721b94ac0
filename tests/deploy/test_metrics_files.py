"""deploy/prometheus/alerts.yml and deploy/grafana/tocsin-dashboard.json parse and are
well formed; tests/e2e/test_metrics.py checks their metric names against a running stack."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy.promql import (
    DEPLOY,
    SYNTHETIC,
    alert_rules,
    dashboard,
    dashboard_exprs,
    deploy_exprs,
    metric_names,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("vector(1)", set()),
        ('absent(up{job="tocsin"})', {"up"}),
        (
            'histogram_quantile(0.99, sum by (le, kind) (rate(x_bucket{job="t",a=~"b|c"}[5m])))'
            " > 10",
            {"x_bucket"},
        ),
        ('sum by (code) (increase(a_total{s="request"}[$__rate_interval])) > 3', {"a_total"}),
        ("max by (stream, group) (lag_seconds) > 30 and on (job) up == 1", {"lag_seconds", "up"}),
        ("rate(process_cpu_seconds_total[1m]) / 1e3", {"process_cpu_seconds_total"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_alert_rules_are_prometheus_rules() -> None:
    document = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert set(document) == {"groups"}
    seen = set()
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert rule["alert"] not in seen
            seen.add(rule["alert"])
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            assert rule["labels"]["severity"] in ("none", "warning", "critical")
            assert rule["annotations"]["summary"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_the_alerts_cover_what_the_issue_asks_for() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert rules["TocsinWatchdog"]["expr"] == "vector(1)"  # the dead-man's switch
    wanted = {
        "TocsinProcessDown": "up",
        "TocsinFirstPageSlow": "tocsin_alert_to_first_page_seconds_bucket",
        "TocsinConsumerLagging": "tocsin_consumer_lag_seconds",
        "TocsinDeadLetters": "tocsin_consumer_dead_lettered_total",
        "TocsinTwilioErrors": "tocsin_twilio_errors_total",
    }
    for alert, metric in wanted.items():
        assert metric in metric_names(rules[alert]["expr"]), alert


def test_the_dashboard_is_grafana_json_with_a_panel_per_metric() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] == "timeseries" and panel["targets"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target
    names = set().union(*(metric_names(e) for e in dashboard_exprs()))
    for metric in (
        "tocsin_alert_to_first_page_seconds_bucket",
        "tocsin_pages_total",
        "tocsin_twilio_errors_total",
        "tocsin_timer_lateness_seconds_bucket",
        "tocsin_consumer_lag_seconds",
        "tocsin_consumer_dead_lettered_total",
        "tocsin_escalation_auditor_repaired_total",
        "tocsin_grpc_server_duration_seconds_count",
        "tocsin_grpc_server_duration_seconds_bucket",
        "tocsin_http_server_duration_seconds_count",
        "tocsin_http_server_duration_seconds_bucket",
    ):
        assert metric in names, metric


def test_every_expression_names_a_metric_of_tocsin_or_prometheus() -> None:
    for expr in deploy_exprs():
        for name in metric_names(expr):
            assert name.startswith(("tocsin_", "process_")) or name in SYNTHETIC, (name, expr)


def test_the_scrape_config_loads_the_rules_under_the_job_they_use() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "tocsin"
    assert job["authorization"]["credentials_file"]
    for expr in deploy_exprs():
        if "job=" in expr:
            assert 'job="tocsin"' in expr, expr
