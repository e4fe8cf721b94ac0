"""A whole tocsin stack of real processes paging through a fake Twilio process, on a fast
clock: what the end-to-end scenarios share.

`paging_stack(...)` starts the fake Twilio, then `tocsin up` (Twilio credentials, the
fake's URL, the gateway as the public URL, rate limits off, TOCSIN_TEST_CLOCK), waits
until it is healthy, applies the configuration files with `tocsin apply -f`, and at the
end fails if any page was sent that no test expected.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.e2e.pager import PageLog, Pager
from tests.e2e.stack import (
    UNLIMITED_SENDING,
    FakeTwilioProcess,
    Stack,
    alive,
    clock_env,
    descendants,
    fast_clock,
    wait_for,
)
from tocsin.client.client import SyncTocsinClient
from tocsin.client.endpoints import resolve_endpoints
from tocsin.runtime.clock import ScaledClock
from tocsin.v1 import escalation_pb2, incidents_pb2

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "oncall.yaml"
"""The example configuration a team would keep in git (examples/oncall.yaml)."""
PAYMENTS_KEY = "0f8e9a6b2c4d4e1f9a0b1c2d3e4f5a6b"
"""payments-api's Events API routing key in the example configuration."""
ESCALATION_INSTANCE = "replica-a"
"""TOCSIN_INSTANCE of the stack's escalation process, so a second replica can join it."""


@dataclass
class PagingStack:
    stack: Stack
    fake: FakeTwilioProcess
    clock: ScaledClock
    log: PageLog
    client: SyncTocsinClient

    def pager(self) -> Pager:
        return Pager(self.log, f"{self.stack.http}/twilio/sms")

    def now(self) -> int:
        """Virtual milliseconds now, as every process of the stack reads them."""
        return self.clock.now_ms()

    def enqueue(
        self,
        routing_key: str,
        action: str,
        dedup_key: str,
        summary: str | None = None,
        severity: str = "critical",
    ) -> dict[str, Any]:
        """One Events API v2 event, as Alertmanager or Grafana would post it."""
        event: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": action,
            "dedup_key": dedup_key,
        }
        if summary is not None:
            event["payload"] = {"summary": summary, "source": "e2e", "severity": severity}
        reply = httpx.post(f"{self.stack.http}/v2/enqueue", json=event, timeout=10)
        assert reply.status_code == 202, reply.text
        body: dict[str, Any] = reply.json()
        return body

    def incident(self, service_id: str, dedup_key: str) -> incidents_pb2.Incident:
        """The newest incident of `service_id` with `dedup_key`, with its timeline."""
        listed = self.client.incidents.ListIncidents(
            incidents_pb2.ListIncidentsRequest(service_ids=[service_id], page_size=500)
        )
        found = [i for i in listed.incidents if i.dedup_key == dedup_key]
        assert found, f"no incident of {service_id} with dedup key {dedup_key}"
        return self.incident_by_id(found[0].id)

    def incident_by_id(self, incident_id: str) -> incidents_pb2.Incident:
        return self.client.incidents.GetIncident(
            incidents_pb2.GetIncidentRequest(
                incident_id=incident_id, include_timeline=True, include_alerts=True
            )
        ).incident

    def timeline(self, incident_id: str, *expected: str, timeout_s: float = 10) -> list[str]:
        """The incident's timeline lines; with `expected`, once they are all there (the
        notes of escalation and notification reach it through the timeline outbox,
        milliseconds after the page they record)."""

        def lines() -> list[str] | None:
            found = [entry.message for entry in self.incident_by_id(incident_id).timeline]
            return found if all(line in found for line in expected) else None

        if not expected:
            return lines() or []
        result: list[str] = wait_for(lines, timeout_s, f"{expected} in the timeline")
        return result

    def escalation(self, incident_id: str) -> escalation_pb2.Escalation:
        return self.client.escalation.GetEscalation(
            escalation_pb2.GetEscalationRequest(incident_id=incident_id)
        ).escalation

    def cli_json(self, *args: str) -> Any:
        """A `tocsin ... --json` command's output."""
        return json.loads(self.stack.cli(*args, "--json"))

    def redis_pid(self) -> int | None:
        """The pid of the embedded redis-server `tocsin up` runs now, if one is alive."""
        assert self.stack.process is not None
        for pid in descendants(self.stack.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"redis-server" in argv and alive(pid):
                return pid
        return None


def redis_answers(url: str) -> bool:
    """Whether the Redis at `url` answers a PING within half a second."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def paging_stack(
    workdir: Path,
    *,
    start: datetime,
    speed: float = 60.0,
    configs: Sequence[Path] = (EXAMPLE_CONFIG,),
    extra_env: dict[str, str] | None = None,
) -> Iterator[PagingStack]:
    fake = FakeTwilioProcess()
    fake.start()
    stack = Stack(workdir / "data")
    env = stack.plan()
    clock = fast_clock(start, speed)
    env |= {**fake.stack_env(stack.http), **UNLIMITED_SENDING, **clock_env(clock)}
    env |= extra_env or {}
    log = PageLog(fake.base_url, clock)
    client: SyncTocsinClient | None = None
    try:
        stack.start()
        stack.wait_healthy(timeout_s=60)
        stack.cli_all([["apply", "-f", str(config)] for config in configs])
        client = SyncTocsinClient(resolve_endpoints(env))
        yield PagingStack(stack, fake, clock, log, client)
        unexpected = log.unexpected()
        assert not unexpected, "pages nobody expected:\n" + "\n".join(map(str, unexpected))
    finally:
        if client is not None:
            client.close()
        log.close()
        if stack.process is not None:
            stack.stop()
        fake.stop()
