"""The cost of event rules on the ingest path: alerts per second with 100 rules vs none.

Two figures:

- `rules.evaluate` alone, in process: one alert against 100 rules that all miss (the
  worst case: every condition of every rule is read; a quarter of them regular
  expressions, each searched with its time limit);
- alerts per second through the incidents gRPC server (real Redis, real gRPC, client and
  server in this process, `TriggerBatch` calls of 200 alerts, 4 in flight; mostly repeats
  of 50 open incidents), with no rules, then with 100 (50 global, 50 on the service), all
  missing.

Run with `.venv/bin/pytest tests/benchmarks/test_rules_bench.py --benchmark-enable -s`;
without --benchmark-enable each runs briefly, as a smoke test.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pytest_benchmark.fixture import BenchmarkFixture

from tests.incidents.harness import create_payments, serve_incidents, trigger_request
from tocsin.incidents import rules
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import connect_redis
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2

RULES = 100
ALERTS = 6000
BATCH = 200
IN_FLIGHT = 4


def _rules(service_id: str, count: int, offset: int = 0) -> routing_pb2.EventRuleSet:
    """`count` rules that miss the benchmark's alerts: equals, contains, regex and exists
    in turn, each with two conditions (the second is read only when the first holds)."""
    kinds = (
        ("source", routing_pb2.MATCH_OPERATOR_EQUALS, "db-{i}.eu"),
        ("summary", routing_pb2.MATCH_OPERATOR_CONTAINS, "certificate {i} expires"),
        ("details.host", routing_pb2.MATCH_OPERATOR_REGEX, r"^web-{i}\d+\.(eu|us)$"),
        ("details.team_{i}", routing_pb2.MATCH_OPERATOR_EXISTS, ""),
    )
    rule_set = routing_pb2.EventRuleSet(service_id=service_id)
    for n in range(offset, offset + count):
        field, operator, value = kinds[n % len(kinds)]
        rule_set.rules.append(
            routing_pb2.EventRule(
                id=f"r{n}",
                conditions=[
                    routing_pb2.EventCondition(
                        field=field.format(i=n), operator=operator, value=value.format(i=n)
                    ),
                    routing_pb2.EventCondition(
                        field="severity", operator=routing_pb2.MATCH_OPERATOR_EQUALS, value="info"
                    ),
                ],
                actions=routing_pb2.EventRuleActions(severity=common_pb2.SEVERITY_WARNING),
            )
        )
    return rule_set


def _alert(i: int) -> incidents_pb2.TriggerRequest:
    request = trigger_request(f"disk full on db-{i % 50}", dedup_key=f"disk-{i % 50}")
    request.source = f"db-{i % 50}.internal"
    request.details.update({"host": f"db-{i % 50}.internal", "mount": "/var", "used": 97})
    return request


def test_evaluating_100_rules_that_all_miss(benchmark: BenchmarkFixture) -> None:
    sets = {
        "": rules.compile_rule_set(_rules("", RULES // 2)),
        "payments-api": rules.compile_rule_set(_rules("payments-api", RULES // 2, RULES // 2)),
    }
    alert = incidents_pb2.Alert()
    request = _alert(7)
    alert.summary, alert.source = request.summary, request.source
    alert.details.CopyFrom(request.details)
    alert.severity = common_pb2.SEVERITY_CRITICAL
    outcome = benchmark(rules.evaluate, sets.get, "payments-api", alert, "disk-7")
    assert not outcome.changes and not outcome.failures


async def _ingest(redis_url: str, rule_count: int, alerts: int) -> dict[str, Any]:
    redis = await connect_redis(redis_url)
    await redis.flushall()
    try:
        async with serve_incidents(redis, ManualClock()) as served:
            await create_payments(served.stub)
            if rule_count:
                half = rule_count // 2
                for rule_set in (_rules("", half), _rules("payments-api", half, half)):
                    await served.stub.SetEventRules(
                        routing_pb2.SetEventRulesRequest(rule_set=rule_set)
                    )
            batches = [
                incidents_pb2.TriggerBatchRequest(
                    items=[
                        incidents_pb2.TriggerBatchItem(request=_alert(i))
                        for i in range(start, min(start + BATCH, alerts))
                    ]
                )
                for start in range(0, alerts, BATCH)
            ]
            await served.stub.TriggerBatch(batches[0])  # warm: open the incidents
            gate = asyncio.Semaphore(IN_FLIGHT)
            errors = 0

            async def send(batch: incidents_pb2.TriggerBatchRequest) -> None:
                nonlocal errors
                async with gate:
                    reply = await served.stub.TriggerBatch(batch)
                    errors += sum(1 for r in reply.results if r.HasField("error"))

            cpu, started = time.process_time(), time.perf_counter()
            await asyncio.gather(*(send(b) for b in batches))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await redis.aclose()
    return {
        "rules": rule_count,
        "alerts": alerts,
        "errors": errors,
        "alerts_per_s": round(alerts / elapsed),
        "process_cpu_us_per_alert": round(cpu / alerts * 1e6),
    }


def test_ingest_with_100_rules_vs_none(benchmark: BenchmarkFixture, redis_url: str) -> None:
    alerts = 400 if benchmark.disabled else ALERTS
    runs: list[dict[str, Any]] = []

    def run_both() -> None:
        for count in (0, RULES, 0, RULES):  # interleaved: drift on a shared machine shows
            runs.append(asyncio.run(_ingest(redis_url, count, alerts)))

    benchmark.pedantic(run_both, rounds=1, iterations=1)
    benchmark.extra_info["ingest_rules"] = runs
    print()
    for run in runs:
        print(run)
    assert not any(run["errors"] for run in runs)
