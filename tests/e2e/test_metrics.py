"""Metrics of the pager itself, scraped from a real `tocsin up` paging through the fake
Twilio: every process serves Prometheus text on loopback, the alert -> first page
histogram moves when a page goes out, Twilio's error code is counted when it refuses a
number, gRPC and HTTP requests are counted; and every metric name the shipped alert rules
and Grafana dashboard read is one these processes export."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.deploy.promql import SYNTHETIC, deploy_exprs, metric_names
from tests.e2e.paging_stack import PagingStack, paging_stack
from tests.e2e.stack import free_port_run
from tests.metrics import names, sample, scrape
from tocsin.runtime.config import DEFAULT_METRICS_PORTS
from tocsin.runtime.supervisor import STACK

pytestmark = pytest.mark.slow

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
MEASURED_KEY = "7" * 32
REFUSED_KEY = "8" * 32
MONA, NICK = "+12025550161", "+15005550001"
FIRST_PAGE = "tocsin_alert_to_first_page_seconds_count"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PagingStack, int]]:
    base = free_port_run(len(DEFAULT_METRICS_PORTS))
    env = {"TOCSIN_METRICS_ADDR": f"127.0.0.1:{base}"}
    configs = (Path(__file__).parent / "metrics.yaml",)
    with paging_stack(
        tmp_path_factory.mktemp("metrics"), start=START, configs=configs, extra_env=env
    ) as tocsin:
        yield tocsin, base


def _url(base: int, process: str) -> str:
    return f"http://127.0.0.1:{base + list(DEFAULT_METRICS_PORTS).index(process)}/metrics"


def _eventually(read: Callable[[], float], wanted: Callable[[float], bool]) -> float:
    """Poll a scraped value until `wanted` (the page's metric is written in the background
    right after the send); fails after 15 s."""
    deadline = time.monotonic() + 15
    value = read()
    while not wanted(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    assert wanted(value), value
    return value


def test_every_process_serves_metrics_on_loopback(stack: tuple[PagingStack, int]) -> None:
    tocsin, base = stack
    for process in STACK:
        text = scrape(_url(base, process))
        assert "process_cpu_seconds_total" in names(text), process
        # Bound to 127.0.0.1 only: the wildcard is not used.
        port = base + list(DEFAULT_METRICS_PORTS).index(process)
        listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
        local = {line.split()[1] for line in listening if line.split()[3] == "0A"}
        assert f"0100007F:{port:04X}" in local and f"00000000:{port:04X}" not in local
    assert "metrics" in tocsin.stack.output()


def test_a_page_moves_the_first_page_histogram_and_the_page_counter(
    stack: tuple[PagingStack, int],
) -> None:
    tocsin, base = stack
    notification = _url(base, "notification")

    def first_pages() -> float:
        return sample(scrape(notification), FIRST_PAGE, {"channel": "sms"})

    def sent() -> float:
        labels = {"channel": "sms", "outcome": "sent"}
        return sample(scrape(notification), "tocsin_pages_total", labels)

    before, sent_before = first_pages(), sent()
    pager = tocsin.pager()
    pager.person("mona", MONA)
    tocsin.enqueue(MEASURED_KEY, "trigger", "metrics-1", "queue stuck on worker3")
    pager.expect_sms("mona", "queue stuck on worker3")
    assert _eventually(first_pages, lambda n: n >= before + 1) == before + 1
    assert sent() == sent_before + 1
    text = scrape(notification)
    assert sample(text, "tocsin_alert_to_first_page_seconds_sum", {"channel": "sms"}) > 0
    # A repeat of the alert pages nobody again and records no second first page.
    tocsin.enqueue(MEASURED_KEY, "trigger", "metrics-1", "queue stuck on worker3")
    tocsin.enqueue(MEASURED_KEY, "resolve", "metrics-1")
    assert first_pages() == before + 1
    # No phone number, user or incident in any label.
    assert MONA not in text and "mona" not in text and "worker3" not in text

    gateway = scrape(_url(base, "gateway"))
    labels = {"route": "/v2/enqueue", "method": "POST", "status": "202"}
    assert sample(gateway, "tocsin_http_server_duration_seconds_count", labels) >= 3
    incidents = scrape(_url(base, "incidents"))
    triggers = sum(
        sample(incidents, "tocsin_grpc_server_duration_seconds_count", {"method": m, "code": "OK"})
        for m in ("/tocsin.v1.IncidentService/Trigger", "/tocsin.v1.IncidentService/TriggerBatch")
    )
    assert triggers >= 2
    escalation = scrape(_url(base, "escalation"))
    assert sample(escalation, "tocsin_timer_lateness_seconds_count", {"kind": "escalation"}) >= 1
    handled = {"stream": "incident-events", "group": "escalation"}
    assert sample(escalation, "tocsin_consumer_events_total", handled) >= 1
    assert "tocsin_consumer_lag_seconds" in names(escalation)


def test_a_twilio_error_is_counted_by_its_code(stack: tuple[PagingStack, int]) -> None:
    tocsin, base = stack
    notification = _url(base, "notification")
    labels = {"code": "21211", "channel": "sms", "source": "request"}

    def refused() -> float:
        return sample(scrape(notification), "tocsin_twilio_errors_total", labels)

    def failed() -> float:
        outcome = {"channel": "sms", "outcome": "failed"}
        return sample(scrape(notification), "tocsin_pages_total", outcome)

    before, failed_before = refused(), failed()
    tocsin.enqueue(REFUSED_KEY, "trigger", "metrics-2", "certificate expires")
    _eventually(refused, lambda n: n >= before + 1)
    _eventually(failed, lambda n: n >= failed_before + 1)
    tocsin.enqueue(REFUSED_KEY, "resolve", "metrics-2")
    assert NICK not in scrape(notification)


def test_the_alert_rules_and_dashboard_read_only_metrics_tocsin_exports(
    stack: tuple[PagingStack, int],
) -> None:
    """Run after the tests above: counters appear once they have been touched."""
    _, base = stack
    exported = set(SYNTHETIC)
    for process in STACK:
        exported |= names(scrape(_url(base, process)))
    for expr in deploy_exprs():
        missing = metric_names(expr) - exported
        assert not missing, f"{sorted(missing)} in {expr!r} is exported by no tocsin process"
