"""Webhook subscriptions lose nothing and keep each incident's order when the notification
process is killed -9 mid-delivery, and the receiver answers 500 twice.

`tocsin up` (every service its own process, a fast test clock so the retry backoff passes
in a fraction of a second) on the tests' standalone Redis, then on their 3-master Cluster;
a real HTTP receiver (stdlib ThreadingHTTPServer) that verifies every signature the way
the README says, answers the first two requests 500, and holds one later request open
while the test kills the notification process (the supervisor restarts it). Afterwards
the receiver has, after de-duplication by event id, every event of both incidents exactly
once, in each incident's order, and saw the held event again (the kill really was
mid-delivery).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack, clock_env, fast_clock, wait_for
from tocsin.client.client import SyncTocsinClient
from tocsin.client.endpoints import Endpoints
from tocsin.notification.channels.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from tocsin.v1 import incidents_pb2

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "oncall.yaml"
SECRET = "whsec-e2e-kill-0123456789abcdef"


class Receiver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.answers = [500, 500]
        self.hold_request = 5
        """The request (counting from 0) held open until `release` is set."""
        self.holding = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    number = len(receiver.requests)
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.requests.append({})
                if number == receiver.hold_request:
                    receiver.holding.set()
                    receiver.release.wait(60)
                receiver.requests[number] = {
                    "status": status,
                    "verified": verify_signature(
                        SECRET,
                        self.headers.get(TIMESTAMP_HEADER, ""),
                        raw,
                        self.headers.get(SIGNATURE_HEADER, ""),
                    ),
                    "event_id": self.headers.get(EVENT_ID_HEADER),
                    "body": json.loads(raw),
                }
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:
                    pass  # the sender was killed meanwhile

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/e2e"

    def accepted(self) -> list[dict[str, Any]]:
        """Bodies answered 200, each event id once, in the order they first came."""
        seen: set[str] = set()
        out = []
        with self.lock:
            done = [r for r in self.requests if r]
        for request in done:
            if request["status"] == 200 and request["event_id"] not in seen:
                seen.add(request["event_id"])
                out.append(request["body"])
        return out

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


def _client(stack: Stack) -> SyncTocsinClient:
    env = stack.env
    names = ("scheduling", "incidents", "escalation", "notification", "history")
    return SyncTocsinClient(
        Endpoints(
            http=env["TOCSIN_HTTP_ADDR"],
            **{n: env[f"TOCSIN_{n.upper()}_ADDR"] for n in names},
        )
    )


LIFECYCLE = [
    "incident.triggered",
    "incident.acknowledged",
    "incident.note_added",
    "incident.status_update",
    "incident.note_added",
    "incident.resolved",
]


def test_killing_notification_mid_delivery_loses_nothing_and_keeps_order(
    tmp_path: Path, any_redis_url: str
) -> None:
    receiver = Receiver()
    clock = fast_clock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    stack = Stack(tmp_path / "data")
    stack.start(
        {
            **clock_env(clock),
            "TOCSIN_REDIS_URL": any_redis_url,
            "OPS_SECRET": SECRET,
            # 6 s of real time at the fast clock's 60x: longer than the HTTP timeout
            "TOCSIN_WEBHOOK_LEASE": "6m",
            "TOCSIN_WEBHOOK_TIMEOUT": "5s",
        }
    )
    try:
        stack.wait_healthy(60)
        stack.cli("apply", "-f", str(EXAMPLE))
        kinds = ["triggered", "acknowledged", "note_added", "status_update", "resolved"]
        events = [arg for kind in kinds for arg in ("--event", kind)]  # not escalation hops
        stack.cli("webhooks", "add", "ops", receiver.url, "--secret-env", "OPS_SECRET", *events)
        client = _client(stack)
        incidents = client.incidents

        def step(incident_id: str, n: int) -> None:
            if n == 1:
                incidents.Acknowledge(incidents_pb2.AcknowledgeRequest(incident_id=incident_id))
            elif n in (2, 4):
                incidents.AddNote(
                    incidents_pb2.AddNoteRequest(incident_id=incident_id, text=f"note {n}")
                )
            elif n == 3:
                incidents.PostStatusUpdate(
                    incidents_pb2.PostStatusUpdateRequest(incident_id=incident_id, text="eta 10m")
                )
            elif n == 5:
                incidents.Resolve(incidents_pb2.ResolveRequest(incident_id=incident_id))

        opened = []
        for name in ("db1", "db2"):
            reply = incidents.Trigger(
                incidents_pb2.TriggerRequest(
                    service_id="payments-api", summary=f"disk full on {name}", dedup_key=name
                ),
                timeout=10,
            )
            opened.append(reply.incident.id)
        for n in (1, 2):
            for incident_id in opened:
                step(incident_id, n)
        # The receiver holds one request open: kill the process that sent it.
        assert receiver.holding.wait(60), "no request came to hold"
        killed = stack.kill_child("notification")
        receiver.release.set()
        for n in (3, 4, 5):  # events written while notification is down or restarting
            for incident_id in opened:
                step(incident_id, n)
        stack.wait_restarted("notification", killed, 60)

        def complete() -> bool:
            return len(receiver.accepted()) == len(LIFECYCLE) * len(opened)

        wait_for(complete, 120, "every event accepted")
        time.sleep(1)  # anything more that came would be a duplicate or an extra: checked
        accepted = receiver.accepted()
        assert len(accepted) == len(LIFECYCLE) * len(opened)
        for incident_id in opened:
            mine = [b["type"] for b in accepted if b["incident"]["id"] == incident_id]
            assert mine == LIFECYCLE, (incident_id, mine)
        done = [r for r in receiver.requests if r]
        assert all(r["verified"] for r in done)
        assert [r["status"] for r in done[:2]] == [500, 500]
        held = receiver.requests[receiver.hold_request]["event_id"]
        assert sum(r["event_id"] == held for r in done) >= 2  # sent again after the kill
        log = stack.cli("webhooks", "deliveries", "ops", "--json", "--limit", "500")
        deliveries = json.loads(log)["deliveries"]
        assert {d["outcome"] for d in deliveries} == {"delivered", "retrying"}
        assert json.loads(log)["pending"] == 0
        client.close()
    finally:
        receiver.stop()
        stack.stop()
