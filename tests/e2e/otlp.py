"""A tiny OTLP/gRPC collector: what an OpenTelemetry Collector would receive from tocsin.

It implements `opentelemetry.proto.collector.trace.v1.TraceService/Export` (and accepts
and drops metrics, which the same endpoint receives) with the stubs the
`opentelemetry-proto` package ships, and keeps every span with its service name and
instance (`service.instance.id`, from `OTEL_RESOURCE_ATTRIBUTES`), kind and start time.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    instance: str = ""
    """The resource's `service.instance.id` ("" when the process sets none)."""
    kind: int = 0
    """The OTLP span kind (2 = SERVER: a call this process received)."""
    start_ns: int = 0
    """Wall-clock start (Unix ns), as the exporting process saw it."""


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: OtlpCollector) -> None:
        self.collector = collector

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attributes.get("service.name", ""))
            instance = str(attributes.get("service.instance.id", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            instance=instance,
                            kind=span.kind,
                            start_ns=span.start_time_unix_nano,
                        )
                    )
        with self.collector.lock:
            self.collector.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpCollector:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.spans: list[ReceivedSpan] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(), self.server)
        self.port = self.server.add_insecure_port(f"{host}:0")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def wait_for(self, found: Any, timeout_s: float, what: str) -> Any:
        """Poll the received spans until `found(spans)` is truthy (exports are batched)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = found(self.received())
            if result or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not result:
            names = sorted({(s.service, s.name) for s in self.received()})
            raise AssertionError(f"no {what} after {timeout_s}s; received: {names}")
        return result
