"""Reading Prometheus text in tests (prometheus-client's own parser)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    wanted = dict(labels or {})
    total = 0.0
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in wanted.items()):
                total += item.value
    return total


def names(text: str) -> set[str]:
    """Every sample name in `text` (a histogram's _bucket, _count and _sum included)."""
    return {item.name for family in text_string_to_metric_families(text) for item in family.samples}


def scrape(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = httpx.get(url, headers=headers, timeout=10)
    reply.raise_for_status()
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    return reply.text
