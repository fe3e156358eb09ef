"""The container's start, run on the host: the command line the Deployment gives the image (its ENTRYPOINT/CMD or
the container's command/args), with the image's ENV, the overlay's ConfigMap and its Secrets laid out as the kubelet
mounts them, serves the model repository with TLS and bearer tokens on the gRPC port and plaintext health on the
health port, passes the image's HEALTHCHECK, picks up a rotated token file, answers GetModelInfo as configured, and
drains to exit 0 on SIGTERM.

Only what cannot carry over to the host is replaced: loopback address, free ports, the repository and Secret mount
paths, the venv's location, and the device (this host may have no GPU). The Secrets' contents come from
deploy/dev-certs.sh, as in deploy/README.md."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.deploy.conftest import SERVER_DOCKERFILES, config_of, container, find
from tests.deploy.dockerfile import Stage, healthcheck, read_stages
from tests.harness import POLL_S, ServerProcess, free_ports, health_status
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

# The kubelet syncs a changed Secret into running pods within about a minute; the server then has this long.
ROTATION_TIMEOUT_S = 30
IMAGE_VENV = "/opt/venv/bin"
# The image each server overlay runs (overlays/mtls is the cpu overlay plus a client CA).
OVERLAY_IMAGES = {**SERVER_DOCKERFILES, "mtls": SERVER_DOCKERFILES["cpu"]}
# The keys `kubectl create secret` (deploy/README.md, Security) puts into each Secret, from dev-certs.sh's files of
# the same names; with mTLS, vaeserve-tls holds ca.crt too.
SECRET_KEYS = {"vaeserve-tls": ["tls.crt", "tls.key"], "vaeserve-auth": ["tokens"]}


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


class SecretVolume:
    """A folder laid out as the kubelet writes a Secret volume (its AtomicWriter): each key is a symlink into `..data`,
    itself a symlink to a timestamped folder, and an update swaps `..data` in one rename. A server that watches the
    file it was given, rather than the folder, must follow this to see a rotation."""

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        root.mkdir(parents=True)
        self._generation = 0
        self.update(files)
        for name in files:
            (root / name).symlink_to(Path("..data") / name)

    def update(self, files: dict[str, bytes]) -> None:
        self._generation += 1
        payload = self.root / f"..2026_01_01_00_00_{self._generation:02d}.000000000"
        payload.mkdir()
        for name, content in files.items():
            (payload / name).write_bytes(content)
        data, staged = self.root / "..data", self.root / "..data_tmp"
        old = data.resolve() if data.exists() else None
        staged.symlink_to(payload.name)
        staged.rename(data)
        if old is not None:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()


def mount_secrets(pod: dict[str, Any], server: dict[str, Any], keys: dict[str, list[str]], dev_certs: Path,
                  root: Path) -> dict[str, SecretVolume]:  # fmt: skip
    """Each Secret volume the server mounts, under `root`, keyed by its mountPath in the container."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {}
    for mount in server["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            contents = {key: (dev_certs / key).read_bytes() for key in keys[secret["secretName"]]}
            mounted[mount["mountPath"]] = SecretVolume(root / mount["name"], contents)
    return mounted


def on_host(path: str, secrets: dict[str, SecretVolume]) -> str:
    """A file path in the container -> the same file in the host's Secret folders."""
    directory, name = os.path.split(path)
    return str(secrets[directory].root / name)


def probes_pass(target: str, service: str) -> Callable[[ServerProcess], bool]:
    """Ready as the kubelet sees it: the readiness probe's health check answers SERVING at `target`."""
    return lambda _: health_status(target, service, timeout=2) == health_pb2.HealthCheckResponse.SERVING


def container_process(image: Stage, spec: dict[str, Any], env: dict[str, str], ready_at: str, port: int,
                      log: Path) -> ServerProcess:  # fmt: skip
    """The container's command with exactly the container's environment (not this process's)."""
    ready = probes_pass(ready_at, spec["readinessProbe"]["grpc"]["service"])
    process = ServerProcess(container_argv(image, spec), log, port, ready, name="container")
    process.env = env
    return process


def model_info(channel: grpc.Channel) -> vae_pb2.ModelInfo:
    return vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)


def rpc_error(call) -> grpc.StatusCode:  # call: () -> anything
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code()


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAY_IMAGES)
def test_container_command_serves_passes_healthcheck_and_drains(
    overlay: str, built: dict[str, list[dict[str, Any]]], model_repo: Path, dev_certs: Path, tmp_path: Path
) -> None:
    image = {s.name: s for s in read_stages(OVERLAY_IMAGES[overlay])}["runtime"]
    pod = find(built[overlay], "Deployment", "vaeserve")["spec"]["template"]["spec"]
    server = container(pod, "server")
    config = config_of(built[overlay], server)
    keys = dict(SECRET_KEYS)
    if "VAESERVE_TLS_CLIENT_CA" in config:
        keys["vaeserve-tls"] = [*keys["vaeserve-tls"], "ca.crt"]
    secrets = mount_secrets(pod, server, keys, dev_certs, tmp_path / "secrets")
    port, health_port, metrics_port = free_ports(3)
    files = [k for k in ("VAESERVE_TLS_CERT", "VAESERVE_TLS_KEY", "VAESERVE_TLS_CLIENT_CA", "VAESERVE_AUTH_TOKEN_FILE")
             if k in config]  # fmt: skip
    host_only = {"VAESERVE_HOST": "127.0.0.1", "VAESERVE_PORT": str(port), "VAESERVE_HEALTH_PORT": str(health_port),
                 "VAESERVE_METRICS_PORT": str(metrics_port), "VAESERVE_REPO": str(model_repo), "VAESERVE_DEVICE": "cpu",
                 **{k: on_host(config[k], secrets) for k in files}}  # fmt: skip
    assert host_only.keys() <= config.keys(), "the Deployment no longer sets these; the test would not replace them"
    env = {**container_env(image, config), **host_only}
    # Ready when the kubelet's view says so: plaintext gRPC health on the health port, as the probes ask it.
    health = f"127.0.0.1:{health_port}"
    with container_process(image, server, env, health, port, tmp_path / "serve.log") as process:
        assert health_status(health) == health_pb2.HealthCheckResponse.SERVING  # the liveness probe's question
        # ... and nothing but health there: the model is not reachable without TLS and a token.
        with grpc.insecure_channel(health) as channel:
            assert rpc_error(lambda: model_info(channel)) == grpc.StatusCode.UNIMPLEMENTED

        _, check = healthcheck(image.last("HEALTHCHECK"))
        done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"HEALTHCHECK failed on a SERVING server:\n{done.stderr}"

        # A client's view: TLS, verified against the CA, with a bearer token (and a client certificate for mTLS).
        target = f"127.0.0.1:{port}"
        client_cert = {}
        if "VAESERVE_TLS_CLIENT_CA" in config:
            client_cert = {"private_key": (dev_certs / "client.key").read_bytes(),
                           "certificate_chain": (dev_certs / "client.crt").read_bytes()}  # fmt: skip
        tls = grpc.ssl_channel_credentials((dev_certs / "ca.crt").read_bytes(), **client_cert)
        locust_token, client_token = ((dev_certs / f"{c}.token").read_text().strip() for c in ("locust", "client"))

        def channel(token: str | None = None, credentials: grpc.ChannelCredentials = tls) -> grpc.Channel:
            if token is not None:
                credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
            return grpc.secure_channel(target, credentials)

        with channel(client_token) as c:
            info = model_info(c)
            # Reflection is off: the server does not describe its API to whoever connects.
            stub = reflection_pb2_grpc.ServerReflectionStub(c)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            assert rpc_error(lambda: list(stub.ServerReflectionInfo(iter([request]), timeout=10))) == (
                grpc.StatusCode.UNIMPLEMENTED
            )
        assert info.name == config["VAESERVE_NAME"] and info.version == 1  # VAESERVE_VERSION=latest of vae/1
        assert info.max_batch_size == int(config["VAESERVE_MAX_BATCH_SIZE"])
        assert info.execution_provider == "CPUExecutionProvider"
        with channel() as c:
            assert rpc_error(lambda: model_info(c)) == grpc.StatusCode.UNAUTHENTICATED
            # Health stays open on the gRPC port too (clients' health checking needs no token).
            reply = health_pb2_grpc.HealthStub(c).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with channel("not-a-listed-token") as c:
            assert rpc_error(lambda: model_info(c)) in {grpc.StatusCode.UNAUTHENTICATED,
                                                        grpc.StatusCode.PERMISSION_DENIED}  # fmt: skip
        with grpc.insecure_channel(target) as c:
            assert rpc_error(lambda: model_info(c)) == grpc.StatusCode.UNAVAILABLE, "plaintext on the TLS port"
        if client_cert:
            anonymous = grpc.ssl_channel_credentials((dev_certs / "ca.crt").read_bytes())
            with channel(client_token, anonymous) as c:
                assert rpc_error(lambda: model_info(c)) == grpc.StatusCode.UNAVAILABLE, "mTLS without a certificate"

        # Rotation as `kubectl apply` of a new vaeserve-auth does it: the kubelet swaps the Secret's folder and the
        # running server picks the new token list up; the Locust token is revoked, the other one kept.
        tokens_on_host = Path(on_host(config["VAESERVE_AUTH_TOKEN_FILE"], secrets))
        secrets[os.path.dirname(config["VAESERVE_AUTH_TOKEN_FILE"])].update(
            {tokens_on_host.name: f"{client_token}\nrotated-token\n".encode()}
        )
        deadline = time.monotonic() + ROTATION_TIMEOUT_S
        while True:
            with channel("rotated-token") as c:
                try:
                    model_info(c)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
            assert time.monotonic() < deadline, f"a rotated token file was not picked up in {ROTATION_TIMEOUT_S} s"
            time.sleep(POLL_S)
        with channel(client_token) as c:
            model_info(c)
        with channel(locust_token) as c:
            assert rpc_error(lambda: model_info(c)) in {grpc.StatusCode.UNAUTHENTICATED,
                                                        grpc.StatusCode.PERMISSION_DENIED}  # fmt: skip

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=float(config["VAESERVE_GRACE_PERIOD"]) + 15) == 0, process.output()
    if config["VAESERVE_LOG_FORMAT"] == "json":
        lines = [line for line in process.output().splitlines() if line.strip()]
        assert lines and all(isinstance(json.loads(line), dict) for line in lines), process.output()
