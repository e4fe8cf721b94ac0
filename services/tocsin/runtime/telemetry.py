"""OpenTelemetry set-up and trace-context helpers.

Exporters follow the standard `OTEL_*` variables: OTLP when an endpoint is set, nothing
exported otherwise. Metrics have their own set-up (runtime/metrics.py: Prometheus, plus
OTLP when an endpoint is set). The trace context travels inside stream entries and timer payloads as
a W3C `traceparent` string, so a page sent minutes later still joins the alert's trace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def setup_tracing(
    service_name: str,
    env: Mapping[str, str] | None = None,
    extra_processor: SpanProcessor | None = None,
) -> TracerProvider:
    """Install the global tracer provider (OTLP export with an endpoint).

    Spans are recorded only where they can go somewhere: with an exporter (or
    `extra_processor`) every span is recorded (`ALWAYS_ON`: also under a parent that was
    not, so one service exporting traces its hops whatever the others do); without one,
    none is (`ALWAYS_OFF`): the trace and span ids are still made and carried in every
    traceparent, so stream entries, timers and timeline entries still join one trace,
    but no span object, attributes or end are built for nothing (3-8% of a service's CPU
    per page at saturation). `OTEL_TRACES_SAMPLER`, when set, decides instead."""
    env = os.environ if env is None else env
    name = env.get("OTEL_SERVICE_NAME", f"tocsin-{service_name}")
    enabled = env.get("OTEL_SDK_DISABLED", "").lower() != "true"
    exporting = enabled and any(env.get(v) for v in _OTLP_VARIABLES)
    recording = exporting or extra_processor is not None
    sampler = None  # the SDK's default, from OTEL_TRACES_SAMPLER
    if not env.get("OTEL_TRACES_SAMPLER"):
        sampler = ALWAYS_ON if recording else ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create({"service.name": name}), sampler=sampler)
    if exporting:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    trace.set_tracer_provider(provider)
    return provider


def current_traceparent() -> str:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def traceparent_of(span: trace.Span) -> str:
    """The W3C traceparent naming `span` (a span started without being made current)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def is_traceparent(value: str) -> bool:
    """Whether `value` is a W3C traceparent naming a valid span."""
    context = context_from_traceparent(value)
    return trace.get_current_span(context).get_span_context().is_valid


def context_from_traceparent(traceparent: str) -> otel_context.Context:
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({"traceparent": traceparent})


def link_from_traceparent(traceparent: str) -> list[trace.Link]:
    """A span link to the hop that armed a timer, for work that runs minutes later."""
    span_context = trace.get_current_span(context_from_traceparent(traceparent)).get_span_context()
    return [trace.Link(span_context)] if span_context.is_valid else []
