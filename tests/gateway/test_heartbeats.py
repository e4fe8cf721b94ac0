"""`POST`/`GET /v1/heartbeat/{token}` in front of a real incidents service: a ping resets
the monitor, a ping after a miss resolves its incident, an unknown token is 404."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.incidents.harness import Served, gateway_for
from tocsin.v1 import incidents_pb2, routing_pb2


@pytest.fixture
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_for(served) as (client, _app):
        yield client


async def test_pings_reset_the_monitor_and_end_a_missed_heartbeat(
    served: Served, http: httpx.AsyncClient
) -> None:
    created = await served.stub.CreateHeartbeatMonitor(
        routing_pb2.CreateHeartbeatMonitorRequest(
            monitor=routing_pb2.HeartbeatMonitor(
                id="backup", service_id="payments-api", interval=Duration(seconds=3600)
            )
        )
    )
    token = created.monitor.token
    served.clock.advance(minutes=50)
    reply = await http.post(f"/v1/heartbeat/{token}")
    assert reply.status_code == 200
    assert reply.json() == {"monitor": "backup", "recovered": False}
    served.clock.advance(minutes=50)
    assert await served.running.heartbeat_worker.run_once() == 0  # the POST reset it
    served.clock.advance(minutes=11)
    assert await served.running.heartbeat_worker.run_once() == 1
    open_id = await served.running.store.find_open("payments-api", "heartbeat:backup")
    assert open_id is not None
    reply = await http.get(f"/v1/heartbeat/{token}")  # GET works too (curl in a cron job)
    assert reply.json() == {"monitor": "backup", "recovered": True}
    got = await served.stub.GetIncident(incidents_pb2.GetIncidentRequest(incident_id=open_id))
    assert got.incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED


async def test_an_unknown_token_is_404(http: httpx.AsyncClient) -> None:
    assert (await http.post("/v1/heartbeat/" + "z" * 32)).status_code == 404
    assert (await http.get("/v1/heartbeat/short")).status_code == 404
