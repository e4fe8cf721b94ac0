"""Where a lone alert's time goes: what one step costs when the stack is idle (issue 17).

`python -m loadtests.idle` starts its own stack (`tocsin up` plus the fake Twilio, as
`python -m loadtests run` does), applies loadtests/oncall.yaml and then times, one call
at a time, each of:

- `redis GET`: one round trip to the stack's Redis from this process (redis-py asyncio);
- `grpc health Check`: one gRPC hop to the incidents process that does nothing;
- `Trigger repeat`: an alert that joins an open incident (the handler plus one script);
- `Trigger new`: an alert that opens an incident (the handler plus `trigger.lua`; its
  page goes on without the caller);

first with `--gap` seconds between calls (1 s by default: a lone alert's rate, every
process asleep between them), then back to back, so the difference is what waking the
processes costs. A lone alert's first SMS waits for two gRPC hops, four or five Redis
round trips one after another and the request to Twilio, each paying that wake-up.
Writes a JSON report (`--out`) with the p50 / p99 / max of each in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtests.scenario import INTEGRATION_KEYS, SINGLE, apply_config
from loadtests.stack import LocalStack
from loadtests.stats import histogram_of_ns, machine, summary_ms
from tocsin.client.client import TocsinClient
from tocsin.v1 import common_pb2, incidents_pb2, incidents_pb2_grpc


async def timed(
    call: Callable[[int], Awaitable[object]], count: int, gap_s: float
) -> dict[str, Any]:
    """`count` calls one at a time, `gap_s` apart; their latencies' summary."""
    latencies: list[int] = []
    for i in range(count):
        if gap_s:
            await asyncio.sleep(gap_s)
        started = time.perf_counter_ns()
        await call(i)
        latencies.append(time.perf_counter_ns() - started)
    figures = summary_ms(histogram_of_ns(latencies))
    figures.pop("hdr", None)
    return figures


async def measure(count: int, gap_s: float, out: Path) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="tocsin-idle-"))
    stack = LocalStack(data_dir, out / "logs")
    target = await asyncio.to_thread(stack.start)
    token = os.environ.get("TOCSIN_API_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    run_id = secrets.token_hex(4)
    results: dict[str, Any] = {"machine": machine(), "count": count, "gap_s": gap_s}
    try:
        async with TocsinClient(target.endpoints, token) as client:
            await apply_config(client)
        assert target.redis_url is not None
        redis = aioredis.Redis.from_url(target.redis_url)
        # A bare channel, as an outside alert source has (no client interceptors).
        channel = grpc.aio.insecure_channel(target.endpoints.incidents)
        try:
            await channel.channel_ready()
            health = health_pb2_grpc.HealthStub(channel)
            incidents = incidents_pb2_grpc.IncidentServiceStub(channel)

            def alert(key: str) -> incidents_pb2.TriggerRequest:
                return incidents_pb2.TriggerRequest(
                    integration_key=INTEGRATION_KEYS[SINGLE],
                    dedup_key=key,
                    summary=f"idle {run_id} {key}",
                    source="loadtest",
                    severity=common_pb2.SEVERITY_CRITICAL,
                )

            async def trigger(key: str, created: bool) -> None:
                reply = await incidents.Trigger(alert(key), metadata=metadata)
                if reply.created != created:  # not the step this measures
                    raise RuntimeError(f"Trigger {key}: created={reply.created}")

            await redis.get("tocsin:idle-probe")
            await trigger(f"{run_id}-repeat", created=True)
            steps: dict[str, Callable[[int], Awaitable[object]]] = {
                "redis GET": lambda i: redis.get("tocsin:idle-probe"),
                "grpc health Check": lambda i: health.Check(
                    health_pb2.HealthCheckRequest(), metadata=metadata
                ),
                "Trigger repeat": lambda i: trigger(f"{run_id}-repeat", created=False),
            }
            for label, gap in (("idle", gap_s), ("back to back", 0.0)):
                figures = {name: await timed(step, count, gap) for name, step in steps.items()}

                def new(i: int, label: str = label) -> Awaitable[None]:
                    return trigger(f"{run_id}-{label}-{i}", created=True)

                figures["Trigger new"] = await timed(new, count, gap)
                results[label] = figures
                for name, figure in figures.items():
                    print(
                        f"{label:>12} {name:18} p50 {figure['p50']:7.3f} ms  "
                        f"p99 {figure['p99']:7.3f}  max {figure['max']:7.3f}",
                        flush=True,
                    )
        finally:
            await channel.close()
            await redis.aclose()
    finally:
        await asyncio.to_thread(stack.stop)
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.idle", description=__doc__)
    parser.add_argument("--count", type=int, default=30, help="calls of each step (30)")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between idle calls")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/idle"))
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(measure(options.count, options.gap, options.out))
    (options.out / "result.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
