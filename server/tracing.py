"""Optional OpenTelemetry tracing: a span per RPC and one per onnxruntime batch, exported over OTLP/gRPC.

Off unless an OTLP endpoint is configured. The opentelemetry packages (`pip install 'vaeserve[tracing]'`) are
imported only then, so the server runs without them. RPC spans come from the OpenTelemetry gRPC
instrumentation (W3C `traceparent` from the client continues its trace; status code as `rpc.grpc.status_code`);
gRPC's own services (health, reflection) are not traced, as they are not counted in the metrics.
Batch spans are roots of their own traces: one run serves many requests, each of which has its own trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from grpc import aio

from vaeserve.errors import VaeserveError

from .batcher import BatchObserver


class Tracing:
    """A tracer provider sending spans to `endpoint` (http://HOST:4317 plain, https://HOST:4317 TLS)."""

    def __init__(self, endpoint: str, service_name: str = "vaeserve") -> None:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise VaeserveError(
                f"--otlp-endpoint: tracing needs the OpenTelemetry packages ({exc.name} is missing): "
                "pip install 'vaeserve[tracing]'"
            ) from exc
        if not endpoint.startswith(("http://", "https://")):
            raise VaeserveError(f"--otlp-endpoint: expected http://HOST:PORT or https://HOST:PORT, got {endpoint!r}")
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        # Spans leave in batches from a background thread: an RPC never waits for the collector.
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self.provider.get_tracer("vaeserve.server")

    def interceptor(self) -> aio.ServerInterceptor:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        return aio_server_interceptor(self.provider, filters.negate(filters.service_prefix("grpc.")))

    def observer(self, graph: str, inner: BatchObserver) -> BatchObserver:
        """`inner` (the graph's metrics) plus a span per batch."""
        return _TracedBatches(self._tracer, graph, inner)

    def close(self) -> None:
        """Sends the spans still queued, then stops the exporter."""
        self.provider.shutdown()


class _TracedBatches:
    def __init__(self, tracer: Any, graph: str, inner: BatchObserver) -> None:
        from opentelemetry.context import Context

        self._tracer = tracer
        self._name = f"{graph} batch"
        self._graph = graph
        self._inner = inner
        self._root = Context()  # a batch is never a child of whichever RPC happens to be current

    def watch_queue(self, length: Callable[[], int]) -> None:
        self._inner.watch_queue(length)

    def unwatch_queue(self, length: Callable[[], int]) -> None:
        self._inner.unwatch_queue(length)

    def batch(self, rows: int, inference_seconds: float, queue_waits: Sequence[float]) -> None:
        self._inner.batch(rows, inference_seconds, queue_waits)
        end = time.time_ns()
        attributes = {
            "vaeserve.graph": self._graph,
            "vaeserve.batch.rows": rows,
            "vaeserve.batch.requests": len(queue_waits),
            "vaeserve.batch.max_queue_wait_seconds": max(queue_waits, default=0.0),
        }
        span = self._tracer.start_span(
            self._name, context=self._root, start_time=end - int(inference_seconds * 1e9), attributes=attributes
        )
        span.end(end_time=end)
