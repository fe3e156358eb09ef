"""The metrics of a real `vaeserve serve` after known RPCs: each family moves by exactly what the calls imply."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest

from tests.metrics.conftest import RunningServer
from tests.metrics.exposition import Samples, parse, promtool_check, scrape, value
from vaeserve.client.api import to_tensor
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc


def _encode(server: RunningServer, n: int, seed: int) -> None:
    images = np.random.default_rng(seed).random((n, *server.info.image_shape))
    server.stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(images), seed=seed), timeout=30)


def _bad_decode(server: RunningServer) -> None:
    latents = np.zeros((2, server.info.latent_dim + 1))  # one dimension too many
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(latents)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


def test_known_rpcs_change_the_metrics_exactly(vaeserve_server):
    server = vaeserve_server
    before = parse(scrape(server.metrics_port))
    for seed, n in enumerate((1, 2, 5)):  # sequential: three encoder runs that cannot merge
        _encode(server, n, seed)
    _bad_decode(server)
    _bad_decode(server)
    server.stub.Sample(vae_pb2.SampleRequest(num_samples=16, seed=0), timeout=30)
    after = parse(scrape(server.metrics_port))

    def delta(name: str, **labels: str) -> float:
        return _delta(before, after, name, **labels)

    assert delta("vaeserve_requests_total", method="Encode", code="OK") == 3
    assert delta("vaeserve_requests_total", method="Decode", code="INVALID_ARGUMENT") == 2
    assert delta("vaeserve_requests_total", method="Sample", code="OK") == 1
    assert _total(after, "vaeserve_requests_total") - _total(before, "vaeserve_requests_total") == 6
    for method, calls in (("Encode", 3), ("Decode", 2), ("Sample", 1)):
        assert delta("vaeserve_request_duration_seconds_count", method=method) == calls
        assert delta("vaeserve_request_duration_seconds_bucket", method=method, le="+Inf") == calls
        assert delta("vaeserve_request_duration_seconds_sum", method=method) > 0

    assert delta("vaeserve_images_encoded_total") == 8
    assert delta("vaeserve_images_generated_total") == 16  # the rejected Decodes never reached the decoder
    for graph, runs, rows in (("encoder", 3, 8), ("decoder", 1, 16)):
        assert delta("vaeserve_batch_size_count", graph=graph) == runs
        assert delta("vaeserve_batch_size_sum", graph=graph) == rows
        assert delta("vaeserve_inference_duration_seconds_count", graph=graph) == runs
        assert delta("vaeserve_queue_wait_seconds_count", graph=graph) == runs  # one request per run
        assert value(after, "vaeserve_queue_depth", graph=graph) == 0
    assert delta("vaeserve_batch_size_bucket", graph="decoder", le="8.0") == 0
    assert delta("vaeserve_batch_size_bucket", graph="decoder", le="16.0") == 1
    assert value(after, "vaeserve_inflight_requests") == 0


def test_model_info_and_default_collectors(vaeserve_server):
    server = vaeserve_server
    samples = parse(scrape(server.metrics_port))
    info = {dict(labels)["version"]: v for (name, labels), v in samples.items() if name == "vaeserve_model_info"}
    assert info == {str(server.info.version): 1.0}
    labels = {("name", "vae"), ("version", str(server.info.version)), ("provider", server.info.execution_provider),
              ("variant", "plain")}  # fmt: skip
    assert samples[("vaeserve_model_info", frozenset(labels))] == 1.0
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples)
    assert any(name == "python_gc_collections_total" for name, _ in samples)


def test_real_server_exposition_passes_promtool(vaeserve_server):
    _encode(vaeserve_server, 3, 0)
    _bad_decode(vaeserve_server)
    result = promtool_check(scrape(vaeserve_server.metrics_port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == result.stderr == ""


def test_json_logs_have_startup_facts_and_nothing_per_request(vaeserve_server):
    server = vaeserve_server
    lines_before = server.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines_before]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    startup = " ".join(entry["message"] for entry in entries)
    for fact in (server.info.execution_provider, server.target.rsplit(":", 1)[1], str(server.metrics_port)):
        assert fact in startup
    for seed in range(5):
        _encode(server, 1, seed)
    _bad_decode(server)
    assert server.log.read_text().splitlines() == lines_before


def test_concurrent_calls_are_each_counted_once_whatever_their_batching(vaeserve_server):
    server = vaeserve_server
    rows = [1 + i % 3 for i in range(40)]

    async def burst() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            rng = np.random.default_rng(0)
            requests = [
                vae_pb2.EncodeRequest(images=to_tensor(rng.random((n, *server.info.image_shape)))) for n in rows
            ]
            await asyncio.gather(*(stub.Encode(request, timeout=60) for request in requests))

    before = parse(scrape(server.metrics_port))
    asyncio.run(burst())
    after = parse(scrape(server.metrics_port))

    def delta(name: str, **labels: str) -> float:
        return _delta(before, after, name, **labels)

    assert delta("vaeserve_requests_total", method="Encode", code="OK") == 40
    assert delta("vaeserve_images_encoded_total") == sum(rows)
    assert delta("vaeserve_batch_size_sum", graph="encoder") == sum(rows)
    assert 1 <= delta("vaeserve_batch_size_count", graph="encoder") <= 40
    assert delta("vaeserve_inference_duration_seconds_count", graph="encoder") == delta(
        "vaeserve_batch_size_count", graph="encoder"
    )
    assert delta("vaeserve_queue_wait_seconds_count", graph="encoder") == 40  # one wait per request, merged or not
    assert value(after, "vaeserve_inflight_requests") == 0
    assert value(after, "vaeserve_queue_depth", graph="encoder") == 0
