"""`make deploy-smoke`: the rendered manifests run on this machine.

1. overlays/cpu rendered by `kubectl kustomize`; its Deployment and ConfigMap, and the Secrets deploy/README.md
   creates (from deploy/dev-certs.sh's files), played as a pod by `podman kube play` with the local images; wait
   until the server is SERVING; the Locust image, started as deploy/k8s/locust's worker is, drives it headless
   for 20 s over TLS with its token and must report 0 failures; `podman kube down`.
2. deploy/kserve's ServingRuntime container, started as its args and env say with the models image where KServe
   puts a modelcar (/mnt/models), answers one Open Inference Protocol ModelInfer with the bearer token.

What changes for one machine without a cluster, and why: one replica; the host's network (the server listens on
127.0.0.1 and on ports reserved for the run instead of 0.0.0.0:50051, so container ports are dropped); the images
are the local builds. And three podman 4.3 (Debian bookworm) limits: a pod's restartPolicy Always restarts its
initContainers forever, so the pod gets Never; Secret volumes come out still base64-encoded (and stringData is
lost), and emptyDirs become named volumes that outlive `kube down`, so every volume is a host directory filled as
the kubelet fills it (tests/deploy/containers.py `volumes`).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from tests.deploy.conftest import DEPLOY, config_of, container, find
from tests.deploy.containers import (
    LOCUST_IMAGE,
    MODELS_IMAGE,
    SERVER_IMAGE,
    Container,
    dev_secrets,
    image_mounted,
    on_loopback,
    podman,
    problem,
    render,
    run_flags,
    server_pod,
    volumes,
    wait_serving,
)
from vaeserve.protos.inference import grpc_service_pb2 as pb
from vaeserve.protos.inference import grpc_service_pb2_grpc as pb_grpc

LOCAL_IMAGES = {"vaeserve": SERVER_IMAGE, "vaeserve-models": MODELS_IMAGE, "vaeserve-locust": LOCUST_IMAGE}
LOAD_USERS, LOAD_SECONDS = 8, 20
SERVER_PORTS = ("VAESERVE_PORT", "VAESERVE_HEALTH_PORT", "VAESERVE_METRICS_PORT")


def local_image(image: str) -> str:
    """The local build of a rendered image reference (vaeserve:0.1.0-cpu -> localhost/vaeserve:0.1.0-cpu)."""
    name = image.rsplit(":", 1)[0]
    assert LOCAL_IMAGES[name].rsplit(":", 1)[1] == image.rsplit(":", 1)[1], f"{image}: not the tag make builds"
    return LOCAL_IMAGES[name]


def pod_manifest(objects: list[dict[str, Any]], workdir: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The Deployment and its ConfigMap, adapted for one machine (module docstring); the reserved ports."""
    deployment = copy.deepcopy(find(objects, "Deployment", "vaeserve"))
    pod = deployment["spec"]["template"]["spec"]
    server = container(pod, "server")
    (ref,) = server["envFrom"]
    config = copy.deepcopy(find(objects, "ConfigMap", ref["configMapRef"]["name"]))
    config["data"], ports = on_loopback(config["data"], *SERVER_PORTS)
    deployment["spec"]["replicas"] = 1
    pod.update(hostNetwork=True, restartPolicy="Never")
    for spec in pod["containers"] + pod["initContainers"]:
        spec["image"] = local_image(spec["image"])
        spec.pop("ports", None)
    paths = volumes(pod, objects, workdir)
    pod["volumes"] = [{"name": n, "hostPath": {"path": str(path), "type": "Directory"}} for n, path in paths.items()]
    return [config, deployment], ports


def played(kubectl: str, objects: list[dict[str, Any]], certs: Path, workdir: Path) -> dict[str, Any]:
    """Step 1; what it measured."""
    manifest, ports = pod_manifest(objects, workdir / "pod")
    kube = workdir / "pod.yaml"
    kube.write_text(yaml.safe_dump_all(manifest))
    server = Container("vaeserve-pod-0-server", SERVER_IMAGE, [], {})  # a handle on what kube play starts
    health = f"127.0.0.1:{ports['VAESERVE_HEALTH_PORT']}"
    start = time.monotonic()
    podman("kube", "play", "--replace", str(kube), timeout=300)
    try:
        wait_serving(health, server.running, "the pod's server container")
        serving_s = time.monotonic() - start
        print(f"pod: SERVING {serving_s:.1f} s after `podman kube play` began", flush=True)
        stats = load(kubectl, objects, workdir / "locust", ports["VAESERVE_PORT"])
        assert server.running() and server.rss_bytes() > 0
    except BaseException:
        print(server.logs()[-5000:], file=sys.stderr)
        raise
    finally:
        podman("kube", "down", str(kube), check=False)
    return {"pod_serving_s": serving_s, "played_s": time.monotonic() - start, **stats}


def load(kubectl: str, objects: list[dict[str, Any]], workdir: Path, port: int) -> dict[str, Any]:
    """The Locust image as deploy/k8s/locust's worker runs (its securityContext, env, CA and token volumes), in
    one headless process against the pod; its totals. Fails on any failed call."""
    # The CA ConfigMap and the token Secret come with the server's objects.
    locust = render(kubectl, "k8s/locust") + [o for o in objects if o["kind"] in ("Secret", "ConfigMap")]
    pod = server_pod(locust, "locust-worker")
    spec = container(pod, "locust")
    flags = run_flags(pod, spec, volumes(pod, locust, workdir))
    env = {e["name"]: e["value"] for e in spec["env"]}
    args = ["--headless", "--only-summary", "--json", "--skip-log", "-u", str(LOAD_USERS), "-r", str(LOAD_USERS),
            "-t", f"{LOAD_SECONDS}s", "--stop-timeout", "5", "--host", f"127.0.0.1:{port}"]  # fmt: skip
    with Container("vaeserve-smoke-locust", LOCUST_IMAGE, flags, env, args) as run:
        code = run.wait(timeout=LOAD_SECONDS + 120)
        logs = podman("logs", run.name)
    out = logs.stdout  # the JSON totals; errors, if any, on stderr
    stats = json.loads(out)
    requests = sum(s["num_requests"] for s in stats)
    failures = sum(s["num_failures"] for s in stats)
    print(f"locust: {requests} calls in {LOAD_SECONDS} s by {LOAD_USERS} users, {failures} failures", flush=True)
    assert code == 0 and failures == 0 and requests > 0, logs.stderr[-3000:]
    return {"locust_requests": requests, "locust_failures": failures}


def kserve(kubectl: str, objects: list[dict[str, Any]], certs: Path, workdir: Path) -> dict[str, Any]:
    """Step 2: the ServingRuntime's container with the models image as /mnt/models; one ModelInfer."""
    rendered = render(kubectl, "kserve/base")
    runtime = find(rendered, "ServingRuntime", "vaeserve")["spec"]
    name = find(rendered, "InferenceService", "vae")["metadata"]["name"]
    (spec,) = runtime["containers"]
    # {{.Name}}: KServe's template for the InferenceService's name.
    env = {k: v.replace("{{.Name}}", name) for k, v in config_of(rendered, spec).items()}
    env, ports = on_loopback(env, "VAESERVE_PORT", "VAESERVE_METRICS_PORT")
    secrets = [o for o in objects if o["kind"] == "Secret"]
    flags = run_flags(runtime, spec, volumes(runtime, secrets, workdir))
    target = f"127.0.0.1:{ports['VAESERVE_PORT']}"
    token = (certs / "client.token").read_text().strip()
    with image_mounted(MODELS_IMAGE) as modelcar:
        flags += ["-v", f"{modelcar / 'models'}:{env['VAESERVE_REPO']}:ro"]  # KServe's modelcar mount
        with Container("vaeserve-smoke-kserve", local_image(spec["image"]), flags, env) as server:
            try:
                serving_s = wait_serving(target, server.running, "the ServingRuntime container")
                outputs = model_infer(target, f"{name}-decoder", token)
            except BaseException:
                print(server.logs()[-5000:], file=sys.stderr)
                raise
    print(f"kserve: SERVING after {serving_s:.1f} s; ModelInfer {name}-decoder -> {outputs}", flush=True)
    return {"kserve_serving_s": serving_s}


def model_infer(target: str, model: str, token: str) -> list[str]:
    """One ModelInfer of `model` (one latent row of zeros) with the bearer token; the outputs' names."""
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        (latent,) = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=10, metadata=metadata).inputs
        z = np.zeros((1, *latent.shape[1:]), dtype="<f4")
        tensor = pb.ModelInferRequest.InferInputTensor(name=latent.name, datatype="FP32", shape=z.shape)
        request = pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[z.tobytes()])
        reply = stub.ModelInfer(request, timeout=10, metadata=metadata)
    assert reply.outputs and len(reply.raw_output_contents) == len(reply.outputs), reply
    return [o.name for o in reply.outputs]


def run() -> dict[str, Any]:
    """Both steps; their figures."""
    kubectl = shutil.which("kubectl")
    reason = problem() or (None if kubectl and shutil.which("openssl") else "kubectl and openssl are needed")
    if reason:
        raise SystemExit(f"deploy-smoke: {reason} (make system-deps installs what is missing)")
    with tempfile.TemporaryDirectory(prefix="vaeserve-smoke-") as tmp:
        workdir = Path(tmp)
        certs = workdir / "certs"
        subprocess.run([str(DEPLOY / "dev-certs.sh"), str(certs)], check=True, capture_output=True, timeout=60)
        objects = render(kubectl, "k8s/overlays/cpu") + dev_secrets(kubectl, certs)
        return {**played(kubectl, objects, certs, workdir), **kserve(kubectl, objects, certs, workdir / "kserve")}


def main() -> int:
    figures = run()
    print(f"deploy-smoke passed: {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
