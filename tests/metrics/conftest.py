"""A real `vaeserve serve` process on loopback (JSON logs, metrics on their own port), shared by the metrics tests.

Tests that use it compare scrapes before and after their own RPCs, so they do not depend on each other's traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.harness import ServerProcess, serving
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc


@dataclass
class RunningServer:
    target: str
    metrics_port: int
    process: ServerProcess
    log: Path
    stub: vae_pb2_grpc.VaeServiceStub
    info: vae_pb2.ModelInfo


@pytest.fixture(scope="session")
def vaeserve_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("vaeserve-metrics") / "serve.log"
    with serving(model_repo, log, "--log-format", "json") as server, grpc.insecure_channel(server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
        yield RunningServer(server.target, server.metrics_port, server, log, stub, info)
