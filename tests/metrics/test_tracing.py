"""Optional tracing: spans per RPC and per batch reach a real OTLP/gRPC receiver on loopback, metrics unchanged.

Runs where the `tracing` extra is installed (the `dev` extra pulls it in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed: pip install 'vaeserve[tracing]'")

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.metrics.probe import call, probe_server
from vaeserve.errors import VaeserveError
from vaeserve.server.metrics import Metrics
from vaeserve.server.tracing import Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver keeping every span it is sent, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, object], object]] = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(resource, span) for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    receiver = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(None)


def _attributes(span) -> dict[str, object]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_rpc_and_batch_spans_reach_the_collector(receiver):
    collector, port = receiver
    metrics, tracing = Metrics(), Tracing(f"http://127.0.0.1:{port}", service_name="vaeserve-test")

    async def scenario() -> None:
        async with probe_server(metrics, tracing.interceptor()) as (_, channel):
            assert await call(channel, "Ok", metadata=(("traceparent", TRACEPARENT),)) == grpc.StatusCode.OK
            assert await call(channel, "Invalid") == grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(scenario())
    tracing.observer("decoder", metrics.graph("decoder")).batch(16, 0.004, [0.001, 0.002])
    tracing.close()  # flushes

    spans = {span.name: (resource, span) for resource, span in collector.spans}
    assert set(spans) == {"/test.v1.Probe/Ok", "/test.v1.Probe/Invalid", "decoder batch"}
    assert {resource["service.name"] for resource, _ in spans.values()} == {"vaeserve-test"}

    ok, invalid, batch = (spans[name][1] for name in ("/test.v1.Probe/Ok", "/test.v1.Probe/Invalid", "decoder batch"))
    assert ok.trace_id.hex() == TRACE_ID  # the client's trace goes on in the server
    assert _attributes(ok)["rpc.method"] == "Ok"
    assert _attributes(ok)["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert _attributes(invalid)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert invalid.trace_id.hex() != TRACE_ID
    assert _attributes(batch) == {
        "vaeserve.graph": "decoder",
        "vaeserve.batch.rows": 16,
        "vaeserve.batch.requests": 2,
        "vaeserve.batch.max_queue_wait_seconds": 0.002,
    }
    assert batch.end_time_unix_nano - batch.start_time_unix_nano == pytest.approx(4_000_000, abs=1000)
    assert not batch.parent_span_id

    # The metrics see the same calls and the same batch.
    assert metrics.registry.get_sample_value("vaeserve_requests_total", {"method": "Ok", "code": "OK"}) == 1
    invalid_labels = {"method": "Invalid", "code": "INVALID_ARGUMENT"}
    assert metrics.registry.get_sample_value("vaeserve_requests_total", invalid_labels) == 1
    assert metrics.registry.get_sample_value("vaeserve_images_generated_total") == 16


def test_health_checks_are_not_traced(receiver):
    collector, port = receiver
    tracing = Tracing(f"http://127.0.0.1:{port}")

    async def scenario() -> None:
        async with probe_server(None, tracing.interceptor()) as (_, channel):
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            await call(channel, "Ok")

    asyncio.run(scenario())
    tracing.close()
    assert [span.name for _, span in collector.spans] == ["/test.v1.Probe/Ok"]


def test_endpoint_needs_a_scheme():
    with pytest.raises(VaeserveError, match="--otlp-endpoint: expected http://HOST:PORT"):
        Tracing("collector:4317")
