"""The images run as the rendered Deployment (overlays/cpu) runs them: the models initContainer copies the model
into the emptyDir, the server starts with the ConfigMap's settings, the TLS and token Secrets as files, uid 10001,
a read-only root, no capabilities and no privilege escalation (tests/deploy/containers.py), and answers over TLS
with a token; its HEALTHCHECK passes inside it; SIGTERM under load drains it."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.deploy.conftest import config_of, container
from tests.deploy.containers import (
    MODELS_IMAGE,
    SERVER_IMAGE,
    Container,
    dev_secrets,
    entrypoint,
    on_loopback,
    podman,
    render,
    run_flags,
    server_pod,
    volumes,
    wait_serving,
)
from tests.harness import wait_until
from vaeserve.client.api import AsyncVaeClient, VaeClient

PORTS = ("VAESERVE_PORT", "VAESERVE_HEALTH_PORT", "VAESERVE_METRICS_PORT")
LOAD_CLIENTS = 16


@dataclass
class Pod:
    server: Container
    ports: dict[str, int]
    models: Path  # the emptyDir the initContainer filled
    certs: Path

    @property
    def health(self) -> str:
        return f"127.0.0.1:{self.ports['VAESERVE_HEALTH_PORT']}"

    def client(self, cls: type = VaeClient, token: str | None = None) -> Any:
        """A client over TLS, checked against the dev CA, with the client's token (or `token`)."""
        token = (self.certs / "client.token").read_text().strip() if token is None else token
        target = f"127.0.0.1:{self.ports['VAESERVE_PORT']}"
        return cls(target, timeout=30, tls_ca=self.certs / "ca.crt", token=token or None)


@pytest.fixture(scope="module")
def objects(kubectl: str, dev_certs: Path) -> list[dict[str, Any]]:
    """overlays/cpu rendered, with the Secrets deploy/README.md creates from deploy/dev-certs.sh's files."""
    return render(kubectl, "k8s/overlays/cpu") + dev_secrets(kubectl, dev_certs)


def start_pod(objects: list[dict[str, Any]], certs: Path, workdir: Path, name: str) -> Pod:
    """The Deployment's pod: its initContainer run to completion, then the server, not yet started."""
    pod = server_pod(objects)
    paths = volumes(pod, objects, workdir)
    init = container(pod, "models", init=True)
    with Container(f"{name}-models", MODELS_IMAGE, [*run_flags(pod, init, paths), *entrypoint(init)], {},
                   init.get("args", [])) as copier:  # fmt: skip
        assert copier.wait() == 0, copier.logs()
    spec = container(pod, "server")
    env, ports = on_loopback(config_of(objects, spec), *PORTS)
    flags = [*run_flags(pod, spec, paths), *entrypoint(spec)]
    return Pod(Container(name, SERVER_IMAGE, flags, env, spec.get("args", [])), ports, paths["models"], certs)


@pytest.fixture(scope="module")
def deployed(
    images: float, objects: list[dict[str, Any]], dev_certs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pod]:
    pod = start_pod(objects, dev_certs, tmp_path_factory.mktemp("pod"), "vaeserve-test-pod")
    with pod.server:
        wait_serving(pod.health, pod.server.running, "the server container")
        yield pod


def test_init_container_copies_the_models_image_into_the_empty_dir(deployed: Pod, model_repo: Path) -> None:
    copied = deployed.models / "vae" / "1"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in (model_repo / "vae" / "1").iterdir())
    assert copied.stat().st_uid == 10001, "the initContainer runs as 10001"
    with deployed.client() as client:
        info = client.info()
    assert info.name == "vae" and info.version == 1


def test_server_as_the_deployment_runs_it_answers_over_tls_with_the_token(deployed: Pod) -> None:
    with deployed.client() as client:
        images, latents = client.sample(4, seed=0)
        mean, log_variance, z = client.encode(images, seed=0)
        assert log_variance.shape == mean.shape
        scores = client.score(images, k=8, seed=0)
    assert images.shape[0] == 4 and latents.shape == mean.shape == z.shape
    assert np.isfinite(next(iter(scores.values()))).all()
    with deployed.client(token="") as anonymous, pytest.raises(grpc.RpcError) as refused:
        anonymous.sample(1)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_logs_are_one_json_object_a_line(deployed: Pod) -> None:
    # VAESERVE_LOG_FORMAT=json: a log shipper reads every line; a stray line from a library breaks that.
    lines = [line for line in deployed.server.logs().splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_healthcheck_of_the_image_passes_inside_the_container(deployed: Pod) -> None:
    # The Dockerfile's HEALTHCHECK, as the engine runs it: with TLS on the gRPC port it must ask the plaintext
    # health port (VAESERVE_HEALTH_PORT from the ConfigMap).
    done = podman("healthcheck", "run", deployed.server.name, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sigterm_under_load_fails_no_call_started_before_it(
    images: float, objects: list[dict[str, Any]], dev_certs: Path, tmp_path: Path
) -> None:
    pod = start_pod(objects, dev_certs, tmp_path, "vaeserve-test-sigterm")
    with pod.server:
        wait_serving(pod.health, pod.server.running, "the server container")
        statuses = asyncio.run(through_sigterm(pod))
        wait_until(lambda: not pod.server.running(), "the container to exit", timeout=60, poll=0.1)
        code = pod.server.wait()
        logs = pod.server.logs()
    assert code == 0, logs[-3000:]
    before = {status: n for (when, status), n in statuses.items() if when == "before"}
    after = {status for (when, status) in statuses if when == "after"}
    assert set(before) == {"OK"} and before["OK"] >= LOAD_CLIENTS, statuses
    assert after <= {"OK", "UNAVAILABLE"}, statuses
    assert "draining" in logs


async def through_sigterm(pod: Pod) -> collections.Counter:
    """LOAD_CLIENTS closed-loop Encode callers; SIGTERM once each has had an answer; each caller stops at its first
    error. Counts (sent before or after the signal, status)."""
    statuses: collections.Counter = collections.Counter()
    signalled = asyncio.Event()
    answered = 0
    everyone_answered = asyncio.Event()

    async def caller(client: AsyncVaeClient) -> None:
        nonlocal answered
        for i in range(100_000):  # bounded: the drain ends the loop long before
            when = "after" if signalled.is_set() else "before"
            try:
                await client.encode(image)
            except grpc.aio.AioRpcError as exc:
                statuses[when, exc.code().name] += 1
                return
            statuses[when, "OK"] += 1
            if i == 0:
                answered += 1
                if answered == LOAD_CLIENTS:
                    everyone_answered.set()

    async with pod.client(AsyncVaeClient) as client:
        image = np.full((1, *(await client.info()).image_shape), 0.5, dtype=np.float32)
        tasks = [asyncio.create_task(caller(client)) for _ in range(LOAD_CLIENTS)]
        await asyncio.wait_for(everyone_answered.wait(), 60)
        signalled.set()
        await asyncio.to_thread(pod.server.signal, "TERM")
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return statuses
