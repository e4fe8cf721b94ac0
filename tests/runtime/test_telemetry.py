"""Tracing set-up (runtime/telemetry.py): spans are recorded only where they can go
somewhere (an exporter), yet the trace context is carried either way, and a service that
exports traces its hops under a parent from one that does not."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tocsin.runtime import telemetry
from tocsin.runtime.telemetry import (
    context_from_traceparent,
    current_traceparent,
    is_traceparent,
    setup_tracing,
)


@pytest.fixture(autouse=True)
def _keep_the_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup_tracing installs a global provider; the tests' own stays."""
    monkeypatch.setattr(telemetry.trace, "set_tracer_provider", lambda provider: None)


def test_without_an_exporter_no_span_is_recorded_but_the_trace_is_carried() -> None:
    provider = setup_tracing("escalation", env={})
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("escalation.start") as span:
        assert not span.is_recording()
        traceparent = current_traceparent()
    assert is_traceparent(traceparent)  # what stream entries and timers carry
    with tracer.start_as_current_span(
        "escalation.notify", context=context_from_traceparent(traceparent)
    ):
        child = current_traceparent()
    assert child.split("-")[1] == traceparent.split("-")[1]  # the same trace


def test_an_exporting_service_records_its_hops_under_a_parent_that_was_not_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet = setup_tracing("incidents", env={}).get_tracer("test")
    with quiet.start_as_current_span("incidents.trigger"):
        traceparent = current_traceparent()
    exported = InMemorySpanExporter()
    # an OTLP endpoint set; the exporter itself is replaced by one in memory
    monkeypatch.setattr(telemetry, "BatchSpanProcessor", lambda _: SimpleSpanProcessor(exported))
    provider = setup_tracing(
        "escalation", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    )
    try:
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span(
            "escalation.start", context=context_from_traceparent(traceparent)
        ) as span:
            assert span.is_recording()
        [recorded] = exported.get_finished_spans()
        assert recorded.context is not None
        assert format(recorded.context.trace_id, "032x") == traceparent.split("-")[1]
    finally:
        provider.shutdown()


def test_a_processor_alone_records_every_span() -> None:
    exported = InMemorySpanExporter()
    provider = setup_tracing("notification", env={}, extra_processor=SimpleSpanProcessor(exported))
    with provider.get_tracer("test").start_as_current_span("notification.send"):
        pass
    assert [s.name for s in exported.get_finished_spans()] == ["notification.send"]


def test_the_standard_sampler_variable_decides_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    env: dict[str, Any] = {"OTEL_TRACES_SAMPLER": "always_on"}
    provider: TracerProvider = setup_tracing("scheduling", env=env)
    with provider.get_tracer("test").start_as_current_span("scheduling.who") as span:
        assert span.is_recording()
