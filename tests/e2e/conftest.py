"""One running tocsin for the end-to-end scenarios of this package.

`tocsin up` (embedded Redis, every service and the gateway as processes) with Twilio as
`tocsin fake-twilio` in its own process, a clock 60 times faster than the wall, spans
exported over OTLP to a collector the tests run, and escalation's instance named
replica-a (so a second replica can join it). The configuration is the example
examples/oncall.yaml plus one file per test module with that module's own people,
schedules, policies and services, so scenarios share the stack without sharing pagers.
Starting a stack costs seconds on a busy machine; paying it once keeps the suite short.
An idle stack on a 60x clock still polls its timers 60 times as often, so it lives only
while this package's tests run, and the tests that start stacks of their own go first.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.otlp import OtlpCollector
from tests.e2e.paging_stack import (
    ESCALATION_INSTANCE,
    EXAMPLE_CONFIG,
    PagingStack,
    paging_stack,
)

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
"""The virtual start: Friday 04:00 in New York; alice is on call for `primary` until 09:00
local, bob for `secondary` until 20:00Z."""
HERE = Path(__file__).parent
CONFIGS = (
    EXAMPLE_CONFIG,
    HERE / "acceptance.yaml",
    HERE / "failover.yaml",
    HERE / "chaos.yaml",
    HERE / "heartbeats.yaml",
    HERE / "urgency.yaml",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within this package, tests that do not use the shared stack run before it starts."""
    mine = [i for i, item in enumerate(items) if HERE in item.path.parents]
    ordered = sorted((items[i] for i in mine), key=lambda item: "tocsin" in _fixtures(item))
    for index, item in zip(mine, ordered, strict=True):
        items[index] = item


def _fixtures(item: pytest.Item) -> list[str]:
    return list(getattr(item, "fixturenames", ()))


@pytest.fixture(scope="package")
def collector() -> Iterator[OtlpCollector]:
    collector = OtlpCollector()
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture(scope="package")
def tocsin(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpCollector
) -> Iterator[PagingStack]:
    """The running stack; fails on any page no test expected when it stops."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "TOCSIN_INSTANCE": ESCALATION_INSTANCE,
    }
    with paging_stack(
        tmp_path_factory.mktemp("e2e"), start=START, configs=CONFIGS, extra_env=env
    ) as stack:
        yield stack
