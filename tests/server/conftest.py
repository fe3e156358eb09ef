"""Real `vaeserve serve` processes on free loopback ports, and clients for them.

Servers run as subprocesses through the real CLI (`python -m vaeserve.cli serve ...`), so every test talks to
what a user runs; `start_server` waits until the standard health service reports SERVING and the process logged it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port
from vaeserve.server.client import VaeClient

START_TIMEOUT_S = 60
_SERVING = re.compile(r"\bSERVING\b")  # the start-up log line, not NOT_SERVING


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, default: float | None = None) -> float:
        """The value of one exposition line, e.g. 'vaeserve_batch_size_sum{graph="decoder"}'."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        if default is None:
            raise KeyError(name)
        return default


def serve_command(repo: Path, *flags: str, port: int, metrics_port: int) -> list[str]:
    return [sys.executable, "-m", "vaeserve.cli", "serve", "--repo", str(repo), "--name", "vae",
            "--port", str(port), "--metrics-port", str(metrics_port), *flags]  # fmt: skip


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return response.status


def start_server(
    repo: Path, log: Path, *flags: str, env: dict[str, str] | None = None, port: int | None = None
) -> ServerProcess:
    port, metrics_port = port or free_port(), free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(serve_command(repo, *flags, port=port, metrics_port=metrics_port),
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})  # fmt: skip
    server = ServerProcess(process, port, metrics_port, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode} while starting:\n{server.output()}")
        try:
            # Its own log too: with --reuse-port another process may answer on the same port.
            if health_status(server.target) == health_pb2.HealthCheckResponse.SERVING and _SERVING.search(
                server.output()
            ):
                return server
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server not SERVING after {START_TIMEOUT_S} s:\n{server.output()}")


def stop_server(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.wait()


@contextlib.contextmanager
def serving(
    repo: Path, log: Path, *flags: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[ServerProcess]:
    """A started server (on `port`, else a free one) that is stopped (if the test did not stop it) however the
    test ends."""
    server = start_server(repo, log, *flags, env=env, port=port)
    try:
        yield server
    finally:
        stop_server(server)


# The shared server: small limits so the limit cases are cheap to provoke.
MAX_NUM_SAMPLES = 512
MAX_MESSAGE_MB = 1


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    flags = (
        "--max-batch-size",
        "32",
        "--max-num-samples",
        str(MAX_NUM_SAMPLES),
        "--max-message-mb",
        str(MAX_MESSAGE_MB),
    )
    with serving(model_repo, log, *flags) as s:
        yield s
    assert s.process.returncode == 0, s.output()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[VaeClient]:
    with VaeClient(server.target, timeout=30) as c:
        yield c
