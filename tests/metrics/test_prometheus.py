"""A real Prometheus scrapes the running vaeserve: the request counter rises after RPCs, every dashboard query
answers with data.

Skips only where the prometheus binary is not installed (`make system-deps` installs it where apt-get works).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from tests.metrics import dashboard
from tests.metrics.conftest import RunningServer
from tests.metrics.exposition import parse, scrape
from tests.metrics.prometheus import Prometheus, prometheus
from vaeserve.client.api import to_tensor
from vaeserve.protos.vae.v1 import vae_pb2

REQUESTS = 'sum(vaeserve_requests_total{job="vaeserve"})'


@pytest.fixture(scope="module")
def scraping(vaeserve_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with prometheus([f"127.0.0.1:{vaeserve_server.metrics_port}"], tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def _scalar(server: Prometheus, expr: str) -> float | None:
    answer = server.query(expr)
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _traffic(server: RunningServer) -> None:
    """One of each outcome the dashboard shows: Encode and Sample OK, a Decode rejected."""
    images = np.random.default_rng(0).random((4, *server.info.image_shape))
    server.stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(images), seed=0), timeout=30)
    server.stub.Sample(vae_pb2.SampleRequest(num_samples=8, seed=0), timeout=30)
    with pytest.raises(grpc.RpcError):
        server.stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(np.zeros((1, server.info.latent_dim + 1)))))


def _served_requests(server: RunningServer) -> float:
    """sum(vaeserve_requests_total) as the server itself exposes it now."""
    samples = parse(scrape(server.metrics_port))
    return sum(v for (name, _), v in samples.items() if name == "vaeserve_requests_total")


def test_prometheus_sees_the_request_counter_rise(scraping, vaeserve_server):
    assert scraping.wait_for("a successful scrape", lambda: _scalar(scraping, 'up{job="vaeserve"}') == 1)
    _traffic(vaeserve_server)  # so the counter has series, whatever ran before

    def caught_up() -> tuple[float] | None:
        # The server's own count is read again each time: an aborted call is counted just after its client
        # sees the status, so a count read once right after _traffic can be one short.
        served = _served_requests(vaeserve_server)
        return (served,) if _scalar(scraping, REQUESTS) == served else None

    (baseline,) = scraping.wait_for(f"{REQUESTS} == the server's own count", caught_up)
    for _ in range(5):
        vaeserve_server.stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
    scraping.wait_for(f"{REQUESTS} == {baseline + 5:g}", lambda: _scalar(scraping, REQUESTS) == baseline + 5)


def test_every_dashboard_query_answers_with_data(scraping, vaeserve_server):
    _traffic(vaeserve_server)
    for panel, expr in dashboard.expressions(dashboard.load()).items():
        answer = scraping.query(expr)
        assert answer["status"] == "success", f"{panel}: {answer}"
        # Rates need two scrapes of a series; a panel with no series after that queries the wrong thing.
        scraping.wait_for(f"data for {panel}: {expr}", lambda e=expr: scraping.query(e)["data"]["result"])


def test_scrape_target_is_the_metrics_port_and_healthy(scraping, vaeserve_server):
    url = f"http://127.0.0.1:{vaeserve_server.metrics_port}/metrics"
    assert not vaeserve_server.target.endswith(f":{vaeserve_server.metrics_port}")
    healthy = scraping.wait_for("target health up", lambda: [t for t in scraping.targets() if t["health"] == "up"])
    assert [t["scrapeUrl"] for t in healthy] == [url]
