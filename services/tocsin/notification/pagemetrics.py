"""What the notification service counts (runtime/metrics.py has the instruments).

- Pages by channel and outcome: `sent` (the provider accepted it), `failed`, `unknown`
  (no answer from the provider; not resent), `retry_later` (refused without being
  processed; its timer tries again), `unreachable` (contact method deleted or STOPped),
  `skipped` (the incident had stopped).
- Provider errors by code (Twilio's for SMS and voice; each channel's own for email,
  Slack, webhooks), from requests and from delivery status callbacks.
- Alert -> first page: once per incident, when the provider accepts its first page, the
  time since the incident was opened (its `created_at`, when the alert that opened it was
  accepted; the same injectable clock). "First" is decided in Redis, so replicas and
  retries record it once: `SET tocsin:T:notify:inc:<id>:first-page NX` (kept for the
  retention), sent with the page's other records (store.remember_page), and only the
  winner asks incidents for `created_at` when the mirror did not give it (one GetIncident
  per incident, in the background, after the page is recorded: it never delays a page).

Labels are words and codes only: never a number, a user or an incident.
"""

from __future__ import annotations

import logging

from tocsin.notification import keys
from tocsin.notification.channels import channel_name
from tocsin.notification.contacts import KeyWrite
from tocsin.notification.peers import IncidentsPeer
from tocsin.notification.providers import ProviderError
from tocsin.runtime.events import incident_shard
from tocsin.runtime.metrics import FIRST_PAGE_LATENCY, PAGES, TWILIO_ERRORS

log = logging.getLogger(__name__)


def page(channel: int, outcome: str) -> None:
    PAGES.add(1, {"channel": channel_name(channel), "outcome": outcome})


def error_code(error: ProviderError) -> str:
    """The `code` label: Twilio's error code, else the HTTP status, else no response."""
    if error.code:
        return str(error.code)
    if error.http_status:
        return f"http_{error.http_status}"
    return "no_response"


def provider_error(channel: int, code: str, source: str) -> None:
    TWILIO_ERRORS.add(1, {"code": code, "channel": channel_name(channel), "source": source})


def first_page_key(incident_id: str) -> str:
    return f"{keys.prefix(incident_shard(incident_id))}inc:{incident_id}:first-page"


def first_page_write(incident_id: str, accepted_ms: int, retention_ms: int) -> KeyWrite:
    """The write (SET NX, with the page's record: store.remember_page) that decides which
    page of the incident was its first accepted."""
    return KeyWrite(first_page_key(incident_id), str(accepted_ms), retention_ms)


async def first_page_sent(
    incidents: IncidentsPeer,
    incident_id: str,
    channel: int,
    accepted_ms: int,
    created_ms: int = 0,
) -> bool:
    """Record alert -> first page for the incident's first page accepted by the provider
    (its `first_page_write` was set; True), unless the incident cannot be read.
    `created_ms` is the incident's creation time as the status mirror had it; only when it
    is not known (0) is the incident read from the incidents service."""
    if created_ms <= 0:
        incident = await incidents.get_incident(incident_id)
        if incident is None or not incident.HasField("created_at"):
            log.debug("incident %s: no created_at; first page latency not recorded", incident_id)
            return False
        created_ms = incident.created_at.ToMilliseconds()
    latency_ms = max(0, accepted_ms - created_ms)
    FIRST_PAGE_LATENCY.record(latency_ms / 1000, {"channel": channel_name(channel)})
    return True
