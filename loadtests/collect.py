"""Reading back what happened: the SMS the fake Twilio received, and each incident's
escalation as the escalation service recorded it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtests.scenario import PRIMARY_NUMBER, SECONDARY_NUMBER, SmsKey, sms_key
from tocsin.client.client import TocsinClient
from tocsin.v1 import escalation_pb2, incidents_pb2

_CONCURRENCY = 32


async def fake_get(base_url: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.get(f"{base_url}{path}") as response,
    ):
        response.raise_for_status()
        return await response.json()


async def accepted_sms_count(base_url: str) -> int:
    stats = await fake_get(base_url, "/_fake/stats")
    return int(stats["accepted"]["sms"])


@dataclass
class SmsLog:
    """This run's SMS, by the alert they page for and the user they went to."""

    primary: dict[SmsKey, list[int]] = field(default_factory=dict)
    """Arrival times (CLOCK_MONOTONIC ns) of SMS to lt-primary."""
    secondary: dict[SmsKey, list[int]] = field(default_factory=dict)
    rejected: int = 0
    """SMS of this run the fake refused (it only refuses on request, so: a bug)."""
    other_number: int = 0


async def read_sms(base_url: str, run_id: str) -> SmsLog:
    log = SmsLog()
    for record in await fake_get(base_url, "/_fake/requests?kind=sms"):
        key = sms_key(record.get("body"), run_id)
        if key is None:
            continue
        if record["http_status"] != 201:
            log.rejected += 1
            continue
        received = int(record["received_monotonic_ns"])
        if record["to"] == PRIMARY_NUMBER:
            log.primary.setdefault(key, []).append(received)
        elif record["to"] == SECONDARY_NUMBER:
            log.secondary.setdefault(key, []).append(received)
        else:
            log.other_number += 1
    return log


async def run_incidents(
    client: TocsinClient, service_id: str, run_id: str, since_ms: int
) -> dict[str, tuple[str, int]]:
    """This run's new incidents on `service_id`: dedup key -> (incident id, created_at ms)."""
    request = incidents_pb2.ListIncidentsRequest(
        service_ids=[service_id], summary_contains=f"lt {run_id} ", page_size=500
    )
    request.created_after.FromMilliseconds(since_ms)
    found: dict[str, tuple[str, int]] = {}
    while True:
        reply = await client.incidents.ListIncidents(request, timeout=60)
        found.update((i.dedup_key, (i.id, i.created_at.ToMilliseconds())) for i in reply.incidents)
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


async def fire_times(client: TocsinClient, ids: list[str]) -> dict[str, dict[int, int]]:
    """When each level fired in each incident's first loop (its page's `at`, clock ms)."""
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(incident_id: str) -> tuple[str, dict[int, int]]:
        async with limit:
            reply = await client.escalation.GetEscalation(
                escalation_pb2.GetEscalationRequest(incident_id=incident_id), timeout=60
            )
        pages = reply.escalation.pages
        return incident_id, {p.level: p.at.ToMilliseconds() for p in pages if p.loop == 0}

    return dict(await asyncio.gather(*(one(i) for i in ids)))


async def alert_counts(client: TocsinClient, ids: list[str]) -> list[int]:
    """How many alerts each incident has taken."""
    replies = [
        await client.incidents.GetIncident(
            incidents_pb2.GetIncidentRequest(incident_id=incident_id), timeout=60
        )
        for incident_id in ids
    ]
    return [reply.incident.alert_count for reply in replies]
