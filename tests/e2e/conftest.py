"""One running tocsin for the end-to-end scenarios of the whole session.

`tocsin up` (embedded Redis, every service and the gateway as processes) with Twilio as
`tocsin fake-twilio` in its own process, a clock 60 times faster than the wall, spans
exported over OTLP to a collector the tests run, and escalation's instance named
replica-a (so a second replica can join it). The configuration is the example
examples/oncall.yaml plus one file per test module with that module's own people,
schedules, policies and services, so scenarios share the stack without sharing pagers.
Starting a stack costs seconds on a busy machine; paying it once keeps the suite short.
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
CONFIGS = (EXAMPLE_CONFIG, HERE / "acceptance.yaml", HERE / "failover.yaml", HERE / "chaos.yaml")


@pytest.fixture(scope="session")
def collector() -> Iterator[OtlpCollector]:
    collector = OtlpCollector()
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture(scope="session")
def tocsin(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpCollector
) -> Iterator[PagingStack]:
    """The running stack; fails the session on any page no test expected."""
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
