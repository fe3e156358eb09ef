"""A real `vaeserve serve` process on loopback (JSON logs, metrics on their own port), shared by the metrics tests.

Tests that use it compare scrapes before and after their own RPCs, so they do not depend on each other's traffic.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

START_TIMEOUT_S = 120.0


@dataclass
class RunningServer:
    target: str
    metrics_port: int
    process: subprocess.Popen[bytes]
    log: Path
    stub: vae_pb2_grpc.VaeServiceStub
    info: vae_pb2.ModelInfo


def tensor(array: np.ndarray) -> vae_pb2.Tensor:
    return vae_pb2.Tensor(shape=array.shape, data=array.astype("<f4").tobytes())


def _wait_serving(channel: grpc.Channel, process: subprocess.Popen[bytes], log: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"vaeserve serve exited {process.returncode} before SERVING:\n{log.read_text()[-3000:]}")
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            pytest.fail(f"vaeserve serve not SERVING after {START_TIMEOUT_S:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def vaeserve_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("vaeserve-metrics") / "serve.log"
    argv = [sys.executable, "-m", "vaeserve.cli", "serve", "--repo", str(model_repo), "--name", "vae",
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
            "--log-format", "json"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        _wait_serving(channel, process, log)
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
        yield RunningServer(f"127.0.0.1:{port}", metrics_port, process, log, stub, info)
    finally:
        channel.close()
        process.terminate()  # SIGTERM: the server drains and exits 0
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
