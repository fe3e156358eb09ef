"""The /metrics page served by `Metrics.serve_http`: every family there, batching observations, promtool's verdict."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from tests.harness import free_port
from tests.metrics.exposition import families, parse, promtool_check, scrape, value
from vaeserve.errors import VaeserveError
from vaeserve.server.metrics import Metrics

# Families of the contract, as the parser names them (counters without their _total suffix).
VAESERVE_FAMILIES = {
    "vaeserve_requests",
    "vaeserve_request_duration_seconds",
    "vaeserve_queue_wait_seconds",
    "vaeserve_batch_size",
    "vaeserve_inference_duration_seconds",
    "vaeserve_inflight_requests",
    "vaeserve_queue_depth",
    "vaeserve_images_generated",
    "vaeserve_images_encoded",
    "vaeserve_model_info",
}
# What prometheus_client's default collectors add: process_*, python_info, python_gc_*.
DEFAULT_FAMILIES = {"process_cpu_seconds", "process_resident_memory_bytes", "python_info", "python_gc_collections"}


@pytest.fixture
def served():
    """A fresh Metrics with its exposition on a free loopback port."""
    metrics = Metrics()
    http = metrics.serve_http("127.0.0.1", free_port())
    yield metrics, http.port
    http.close()


def test_every_family_is_exposed_from_the_start(served):
    _, port = served
    text = scrape(port)
    missing = (VAESERVE_FAMILIES | DEFAULT_FAMILIES) - families(text)
    assert not missing, missing
    samples = parse(text)
    for graph in ("encoder", "decoder"):  # zero series exist before the first batch, so rate() has a baseline
        assert value(samples, "vaeserve_batch_size_count", graph=graph) == 0
        assert ("vaeserve_queue_depth", frozenset({("graph", graph)})) in samples


def test_batches_change_the_histograms_and_image_counters(served):
    metrics, port = served
    decoder, encoder = metrics.graph("decoder"), metrics.graph("encoder")
    decoder.batch(16, 0.004, [0.001, 0.002, 0.0005])
    decoder.batch(3, 0.002, [0.0001])
    encoder.batch(5, 0.001, [0.003])
    decoder.watch_queue(lambda: 7)

    samples = parse(scrape(port))
    assert value(samples, "vaeserve_images_generated_total") == 19
    assert value(samples, "vaeserve_images_encoded_total") == 5
    assert value(samples, "vaeserve_batch_size_count", graph="decoder") == 2
    assert value(samples, "vaeserve_batch_size_sum", graph="decoder") == 19
    assert value(samples, "vaeserve_batch_size_bucket", graph="decoder", le="2.0") == 0
    assert value(samples, "vaeserve_batch_size_bucket", graph="decoder", le="4.0") == 1
    assert value(samples, "vaeserve_batch_size_bucket", graph="decoder", le="16.0") == 2
    assert value(samples, "vaeserve_queue_wait_seconds_count", graph="decoder") == 4  # one per request
    assert value(samples, "vaeserve_queue_wait_seconds_count", graph="encoder") == 1
    assert value(samples, "vaeserve_inference_duration_seconds_count", graph="decoder") == 2
    assert value(samples, "vaeserve_inference_duration_seconds_sum", graph="decoder") == pytest.approx(0.006)
    assert value(samples, "vaeserve_queue_depth", graph="decoder") == 7
    assert value(samples, "vaeserve_queue_depth", graph="encoder") == 0


def test_graph_is_encoder_or_decoder():
    with pytest.raises(ValueError, match="encoder"):
        Metrics().graph("generator")


def test_model_info_names_only_the_versions_served_now(served):
    metrics, port = served

    def labels(version: str, provider: str) -> frozenset:
        return frozenset({("name", "vae"), ("version", version), ("provider", provider), ("variant", "plain")})

    metrics.set_model_info("vae", [(1, "CPUExecutionProvider", "plain")])
    metrics.set_model_info("vae", [(2, "CUDAExecutionProvider", "plain")])
    info = {k: v for k, v in parse(scrape(port)).items() if k[0] == "vaeserve_model_info"}
    assert info == {("vaeserve_model_info", labels("2", "CUDAExecutionProvider")): 1.0}
    metrics.set_model_info("vae", [(2, "CPUExecutionProvider", "plain"), (3, "CPUExecutionProvider", "plain")])
    info = {k: v for k, v in parse(scrape(port)).items() if k[0] == "vaeserve_model_info"}
    assert info == {("vaeserve_model_info", labels(v, "CPUExecutionProvider")): 1.0 for v in ("2", "3")}


def test_exposition_passes_promtool(served):
    metrics, port = served
    metrics.set_model_info("vae", [(1, "CPUExecutionProvider", "plain")])
    metrics.model_load_failures.labels("verify").inc()
    metrics.requests.labels("Encode", "OK").inc()
    metrics.request_duration.labels("Encode").observe(0.003)
    metrics.graph("decoder").batch(64, 0.01, [0.002] * 4)
    result = promtool_check(scrape(port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == result.stderr == ""  # not even a lint warning


def test_port_zero_disables_the_exposition():
    assert Metrics().serve_http("127.0.0.1", 0) is None


def test_close_frees_the_port():
    metrics = Metrics()
    http = metrics.serve_http("127.0.0.1", free_port())
    port = http.port
    http.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # a restarted server can listen there again


def test_busy_port_is_a_clear_error_naming_the_flag():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(VaeserveError, match=rf"--metrics-port: cannot listen on 127\.0\.0\.1:{port}"):
            Metrics().serve_http("127.0.0.1", port)
