"""Prometheus metrics of the server: the metric families, the handler wrappers that count every RPC, the exposition.

Counting happens in two places only: method handlers wrapped by `Metrics.counted` (the server wraps each of
its own services' handlers once, when it registers them) see every call (requests, latency, in-flight) and
`GraphMetrics.batch()` sees every onnxruntime run (batch size, inference time, queue waits, images). Handlers
count nothing themselves; refusals by the token check and admission are counted like any call. Calls that gRPC
answers before any handler runs are not: over the message size limit (RESOURCE_EXHAUSTED), unknown methods
(UNIMPLEMENTED); nor are gRPC's own health and reflection services, which are added to the server directly:
kubelet probes every few seconds would dominate the RPS of an idle server, and Health/Watch or reflection
streams would sit in vaeserve_inflight_requests while connected.

Names are part of the operators' contract (dashboards, alerts): see deploy/grafana/vaeserve-dashboard.json.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from threading import Thread
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc import aio
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from vaeserve.errors import VaeserveError
from vaeserve.repository import DECODER, ENCODER

from .graphs import GRAPHS, LIKELIHOOD
from .loop_metrics import CounterChild, HistogramChild, LoopCounter, LoopHistogram

if TYPE_CHECKING:
    from .auth import Tokens

# 0.5 ms (a cached small call) to 10 s (a huge Sample on CPU); roughly x2-x2.5 per step so p99 stays readable.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Powers of two: batches are integer row counts and max batch sizes are usually powers of two.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# Why a model version was refused while serving: the step that failed (models.py).
LOAD_FAILURE_REASONS = ("not_found", "verify", "limits", "session", "warm_up")

# context.code() is a grpc.StatusCode once set (by set_code or abort), None when the handler never set one.
_CODE_NAMES: dict[grpc.StatusCode | None, str] = {code: code.name for code in grpc.StatusCode}
_CODE_NAMES[None] = "OK"


class Metrics:
    """Every vaeserve_* metric family, registered in one registry (fresh per instance unless one is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            # A fresh registry, so tests and several servers in one process never share counters; it gets the
            # collectors prometheus_client puts in its global REGISTRY (process_*, python_info, python_gc_*).
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        # Written per call or per batch, on the event loop's thread: loop_metrics.py's lock-free families.
        self.requests = LoopCounter(
            "vaeserve_requests_total", "RPCs finished, by method and gRPC status code.", ("method", "code"), registry
        )
        self.request_duration = LoopHistogram(
            "vaeserve_request_duration_seconds",
            "RPC time from handler start to response, by method.",
            ("method",),
            LATENCY_BUCKETS,
            registry,
        )
        self.inflight = Gauge("vaeserve_inflight_requests", "RPCs being handled now.", registry=registry)
        self.queue_wait = LoopHistogram(
            "vaeserve_queue_wait_seconds",
            "Time a request waited in the batching queue before its batch ran.",
            ("graph",),
            LATENCY_BUCKETS,
            registry,
        )
        self.batch_size = LoopHistogram(
            "vaeserve_batch_size", "Rows per onnxruntime run.", ("graph",), BATCH_BUCKETS, registry
        )
        self.inference_duration = LoopHistogram(
            "vaeserve_inference_duration_seconds",
            "onnxruntime session.run time per batch.",
            ("graph",),
            LATENCY_BUCKETS,
            registry,
        )
        self.queue_depth = Gauge(
            "vaeserve_queue_depth", "Requests waiting to be batched.", ("graph",), registry=registry
        )
        self.images_generated = LoopCounter(
            "vaeserve_images_generated_total", "Images produced by the decoder.", (), registry
        ).labels()
        self.images_encoded = LoopCounter(
            "vaeserve_images_encoded_total", "Images run through the encoder.", (), registry
        ).labels()
        self.images_scored = LoopCounter(
            "vaeserve_images_scored_total", "Images scored by the Score RPC (each with K samples).", (), registry
        ).labels()
        self.score_samples = LoopCounter(
            "vaeserve_score_samples_total", "Posterior samples decoded for the Score RPC.", (), registry
        ).labels()
        self.model_info = Gauge(
            "vaeserve_model_info",
            "The served model versions, one series each; always 1.",
            ("name", "version", "provider", "variant"),
            registry=registry,
        )
        self.model_load_failures = Counter(
            "vaeserve_model_load_failures",
            "Model versions refused while serving, by the step that failed (LOAD_FAILURE_REASONS).",
            ("reason",),
            registry=registry,
        )
        for reason in LOAD_FAILURE_REASONS:  # zeros from the start, so an alert's increase() sees the first one
            self.model_load_failures.labels(reason)
        self._graphs: dict[str, GraphMetrics] = {}
        self._inflight = _Inflight()  # one count for every service this Metrics counts
        self.inflight.set_function(lambda: self._inflight.n)
        for graph in GRAPHS:  # series exist from the start, so rate() and dashboards see zeros rather than no data
            self.graph(graph)

    def graph(self, name: str) -> GraphMetrics:
        """The metrics of one graph (GRAPHS), label children bound once."""
        if name not in GRAPHS:
            raise ValueError(f"graph must be one of {GRAPHS}, got {name!r}")
        if name not in self._graphs:
            images = {ENCODER: self.images_encoded, DECODER: self.images_generated,
                      LIKELIHOOD: self.score_samples}[name]  # fmt: skip
            self._graphs[name] = GraphMetrics(
                self.queue_wait.labels(name),
                self.batch_size.labels(name),
                self.inference_duration.labels(name),
                self.queue_depth.labels(name),
                images,
            )
        return self._graphs[name]

    def set_model_info(self, name: str, served: Sequence[tuple[int, str, str]]) -> None:
        """The versions served now, each (version, provider, variant): a retired version's series goes."""
        self.model_info.clear()
        for version, provider, variant in served:
            self.model_info.labels(name, str(version), provider, variant).set(1)

    def counted(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` of the RPC method named `method` (e.g. "Encode"), counting its calls.

        Wrapped once, at registration, with grpc's public handler constructors: an interceptor reaches the same
        wrapper through a coroutine and a lookup per call. Measured: 254 vs 276 us of server CPU per Encode(1)
        at 32 clients (BENCHMARKS.md, "Design measurements"); one client's sequential calls cannot tell the two
        apart (BENCHMARKS.md, "Cost of counting RPCs": both within the run's noise)."""
        m = _MethodMetrics(self, self._inflight, method)
        serializers = (handler.request_deserializer, handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_count_unary_response(m, handler.unary_unary), *serializers)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_count_unary_response(m, handler.stream_unary), *serializers)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_count_stream_response(m, handler.unary_stream), *serializers)
        return grpc.stream_stream_rpc_method_handler(_count_stream_response(m, handler.stream_stream), *serializers)

    def watch_tokens(self, tokens: Tokens) -> None:
        """vaeserve_auth_tokens and vaeserve_auth_reload_failures_total, read from `tokens` at scrape time."""
        self.registry.register(_TokensCollector(tokens))

    def serve_http(self, host: str, port: int) -> MetricsHttpServer | None:
        """Serves http://HOST:PORT/metrics (and 404 for other paths) from a daemon thread; port 0 disables it
        (returns None)."""
        if port == 0:
            return None
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise VaeserveError(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        server.set_app(_metrics_only(server.get_app()))  # before the server reports SERVING: nothing asked yet
        return MetricsHttpServer(server, thread)


def _metrics_only(metrics_app: Callable) -> Callable:
    """A WSGI app answering /metrics with `metrics_app`, / with a line saying where the metrics are, and 404 for
    any other path (prometheus_client's own app answers every path with the metrics)."""
    index = b"vaeserve: Prometheus metrics at /metrics\n"
    not_found = b"not found: the metrics are at /metrics\n"

    def app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        status, body = ("200 OK", index) if path == "/" else ("404 Not Found", not_found)
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@dataclass
class MetricsHttpServer:
    """The running exposition server; close() stops it and frees the port."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _TokensCollector:
    """The bearer tokens' state (auth.py): how many are accepted, and how many reloads left none."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("vaeserve_auth_tokens", "Bearer tokens accepted now (0: every call is refused).",
                                value=self.tokens.count)  # fmt: skip
        yield CounterMetricFamily("vaeserve_auth_reload_failures", "Token file reloads that left no token accepted "
                                  "(the file gone, unreadable or empty).", value=self.tokens.failures)  # fmt: skip


class GraphMetrics:
    """Metrics of one graph's batching queue and onnxruntime runs."""

    def __init__(
        self,
        queue_wait: HistogramChild,
        batch_size: HistogramChild,
        inference: HistogramChild,
        depth: Gauge,
        images: CounterChild,
    ):
        self._queue_wait = queue_wait
        self._batch_size = batch_size
        self._inference = inference
        self._depth = depth
        self._images = images
        self._lengths: list[Callable[[], int]] = []  # one per batcher of this graph: a version each
        depth.set_function(lambda: sum(length() for length in self._lengths))

    def watch_queue(self, length: Callable[[], int]) -> None:
        """The queue depth is read from `length` (with every other watched queue of the graph) at scrape time:
        nothing to update per request."""
        self._lengths.append(length)

    def unwatch_queue(self, length: Callable[[], int]) -> None:
        """A queue that is gone (its model version freed)."""
        self._lengths.remove(length)

    def batch(self, rows: int, inference_seconds: float, queue_waits: Sequence[float]) -> None:
        """One onnxruntime run of `rows` rows, merging requests that waited `queue_waits` seconds each."""
        self._batch_size.observe(rows)
        self._inference.observe(inference_seconds)
        for wait in queue_waits:
            self._queue_wait.observe(wait)
        self._images.inc(rows)


class _MethodMetrics:
    """Bound label children of one RPC method: the per-call path does no label lookup and builds no tuple."""

    __slots__ = ("_incs", "_method", "_requests", "inflight", "observe")

    def __init__(self, metrics: Metrics, inflight: _Inflight, method: str) -> None:
        self._requests = metrics.requests
        self._method = method
        # status (a grpc.StatusCode, or None when the handler set none) -> bound inc of its series
        self._incs: dict[grpc.StatusCode | None, Callable[[], None]] = {}
        self.observe = metrics.request_duration.labels(method).observe
        self.inflight = inflight

    def start(self) -> float:
        """A call begins: it is in flight from now; returns its start time for `finish`."""
        self.inflight.n += 1
        return time.perf_counter()

    def finish(self, start: float, code: grpc.StatusCode | None) -> None:
        """A call that began at `start` ended with `code`: its duration and status are counted."""
        self.observe(time.perf_counter() - start)
        self.inflight.n -= 1
        inc = self._incs.get(code)
        if inc is None:
            inc = self._incs[code] = self._requests.labels(self._method, _CODE_NAMES.get(code, "UNKNOWN")).inc
        inc()


class _Inflight:
    """RPCs being handled. A plain int, not Gauge.inc/dec (a lock each): handlers all run on the event loop
    thread, and the gauge reads it at scrape time."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


# A client's deadline fires on its own clock, which started when it sent the call; the server's copy of it starts
# when the call arrives, later by the call's transit (tens of milliseconds on a loaded machine). So a call that
# runs out of time is usually cancelled by its client while the server still sees a little time left: a
# cancellation this close to the deadline is the deadline.
DEADLINE_SLACK_S = 0.5


def _cancelled_status(context: aio.ServicerContext) -> grpc.StatusCode:
    # gRPC cancels the handler both when the client cancels and when the deadline passes.
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= DEADLINE_SLACK_S
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def _status(exc: BaseException, context: aio.ServicerContext) -> grpc.StatusCode | None:
    """The status of a call whose handler raised `exc`: the handler's own (`context.code()`, None meaning OK)
    when it aborted, CANCELLED or DEADLINE_EXCEEDED when gRPC cancelled it or the call ended under it (answering a
    call whose client has gone raises), and UNKNOWN (what gRPC sends) for any other exception."""
    if isinstance(exc, aio.AbortError):
        return context.code()
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) or context.done():
        return _cancelled_status(context)
    return grpc.StatusCode.UNKNOWN


# The wrappers count a call with a try block of their own rather than a context manager: no object and no
# __enter__/__exit__ calls per call.
def _count_unary_response(m: _MethodMetrics, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request_or_iterator: Any, context: aio.ServicerContext) -> Any:
        start = m.start()
        try:
            response = await behavior(request_or_iterator, context)
        except BaseException as exc:
            m.finish(start, _status(exc, context))
            raise
        m.finish(start, context.code())
        return response

    return handler


def _count_stream_response(m: _MethodMetrics, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    # Streaming handlers are either async generators or coroutines that call context.write(); both end here.
    async def handler(request_or_iterator: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        start = m.start()
        try:
            responses = behavior(request_or_iterator, context)
            if hasattr(responses, "__aiter__"):
                async for response in responses:
                    yield response
            else:
                await responses
        except BaseException as exc:
            m.finish(start, _status(exc, context))
            raise
        m.finish(start, context.code())

    return handler
