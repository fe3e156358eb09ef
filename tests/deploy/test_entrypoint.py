"""The container's start, run on the host: the command line the Deployment gives the image (its ENTRYPOINT/CMD or
the container's command/args), with the image's ENV and the overlay's ConfigMap, serves the model repository,
passes the image's HEALTHCHECK, answers GetModelInfo as configured, and drains to exit 0 on SIGTERM.

Only what cannot carry over to the host is replaced: loopback address, free ports, the repository path, the
venv's location, and the device (this host may have no GPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.deploy.conftest import SERVER_DOCKERFILES, config_of, container, find
from tests.deploy.dockerfile import Stage, healthcheck, read_stages
from tests.harness import health_status, vaeserve
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

START_TIMEOUT_S = 60
IMAGE_VENV = "/opt/venv/bin"


def container_argv(image: Stage, spec: dict[str, Any]) -> list[str]:
    """Kubernetes' rule: command replaces ENTRYPOINT (and drops CMD), args replace CMD."""
    if "command" in spec:
        return spec["command"] + spec.get("args", [])
    return image.exec_form("ENTRYPOINT") + spec.get("args", image.exec_form("CMD"))


def container_env(image: Stage, config: dict[str, str]) -> dict[str, str]:
    env = image.env()
    # The image's venv on PATH becomes this host's venv, the one `vaeserve` is installed in.
    assert env["PATH"].startswith(IMAGE_VENV + ":"), env["PATH"]
    env["PATH"] = env["PATH"].replace(IMAGE_VENV, str(Path(sys.executable).parent)).replace("$PATH", os.environ["PATH"])
    return {**env, **config}


@pytest.mark.slow
@pytest.mark.parametrize("overlay", SERVER_DOCKERFILES)
def test_container_command_serves_passes_healthcheck_and_drains(
    overlay: str, built: dict[str, list[dict[str, Any]]], model_repo: Path, tmp_path: Path
) -> None:
    image = {s.name: s for s in read_stages(SERVER_DOCKERFILES[overlay])}["runtime"]
    pod = find(built[overlay], "Deployment", "vaeserve")["spec"]["template"]["spec"]
    server = container(pod, "server")
    config = config_of(built[overlay], server)
    process = vaeserve(model_repo, tmp_path / "serve.log", argv=container_argv(image, server))
    host_only = {"VAESERVE_HOST": "127.0.0.1", "VAESERVE_PORT": str(process.port),
                 "VAESERVE_METRICS_PORT": str(process.metrics_port), "VAESERVE_REPO": str(model_repo),
                 "VAESERVE_DEVICE": "cpu"}  # fmt: skip
    assert host_only.keys() <= config.keys(), "the Deployment no longer sets these; the test would not replace them"
    env = {**container_env(image, config), **host_only}
    process.env = env  # exactly the container's environment, not this process's
    with process:
        target = process.target

        # The readiness probe asks for a named service: the server must report that one too.
        readiness_service = server["readinessProbe"]["grpc"]["service"]
        assert health_status(target, readiness_service) == health_pb2.HealthCheckResponse.SERVING

        _, check = healthcheck(image.last("HEALTHCHECK"))
        done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"HEALTHCHECK failed on a SERVING server:\n{done.stderr}"

        with grpc.insecure_channel(target) as channel:
            info = vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
        assert info.name == config["VAESERVE_NAME"] and info.version == 1  # VAESERVE_VERSION=latest of vae/1
        assert info.max_batch_size == int(config["VAESERVE_MAX_BATCH_SIZE"])
        assert info.execution_provider == "CPUExecutionProvider"

        process.signal(signal.SIGTERM)
        assert process.wait(timeout=float(config["VAESERVE_GRACE_PERIOD"]) + 15) == 0, process.output()
    if config["VAESERVE_LOG_FORMAT"] == "json":
        lines = [line for line in process.output().splitlines() if line.strip()]
        assert lines and all(isinstance(json.loads(line), dict) for line in lines), process.output()
