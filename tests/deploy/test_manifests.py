"""The rendered manifests: valid Kubernetes objects, and the serving contract they encode (probes, drain, scaling,
load balancing, model delivery, GPU placement) consistent with the server's own flags."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.conftest import KUSTOMIZATIONS, config_of, container, find, kustomize_build
from vaeserve.cli import build_parser
from vaeserve.server.cli import env_name

# The oldest Kubernetes the manifests promise to fit (native gRPC probes are GA since 1.27, the preStop sleep
# action is on by default since 1.30), and the newest schema kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
SERVICEMONITOR_SCHEMA = Path(__file__).with_name("servicemonitor.schema.json")
SERVER_OVERLAYS = ("base", "cpu", "gpu")


def serve_env_names() -> set[str]:
    """VAESERVE_<FLAG> for every flag `vaeserve serve` has."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {env_name(s) for a in sub.choices["serve"]._actions for s in a.option_strings if s.startswith("--")}


def server_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "vaeserve")["spec"]["template"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_validates_strictly(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    servicemonitor = jsonschema.Draft202012Validator(json.loads(SERVICEMONITOR_SCHEMA.read_text()))
    for obj in built[name]:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            # A CRD: kubernetes-validate has only built-in schemas, so check it against the operator's CRD schema.
            errors = [e.message for e in servicemonitor.iter_errors(obj)]
            assert not errors, f"{where}: {errors}"
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where} against Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_configmap_sets_only_real_server_flags(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    # The server reads VAESERVE_<FLAG> for its own flags only: a misspelt key would be silently ignored.
    config = config_of(built[name], container(server_pod(built[name])["spec"], "server"))
    unknown = {k for k in config if k.startswith("VAESERVE_")} - serve_env_names()
    assert not unknown, f"{name}: not flags of `vaeserve serve`: {sorted(unknown)}"
    assert config["VAESERVE_HOST"] == "0.0.0.0"
    assert float(config["VAESERVE_MAX_CONNECTION_AGE_S"]) > 0, "clients would never rebalance onto new replicas"


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_probes_drain_and_ports_match_the_server(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    pod = server_pod(built[name])
    server = container(pod["spec"], "server")
    config = config_of(built[name], server)
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": int(config["VAESERVE_PORT"]), "metrics": int(config["VAESERVE_METRICS_PORT"])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == ports["grpc"], f"{probe} is not a native gRPC probe of the server"
    assert server["readinessProbe"]["grpc"]["service"] == "vae.v1.VaeService"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too little time to load and warm a model"
    # SIGKILL must not land before endpoint removal (preStop) and the server's own drain are over.
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + float(config["VAESERVE_GRACE_PERIOD"])
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_pods_are_locked_down(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    spec = server_pod(built[name])["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert find(built[name], "ServiceAccount", spec["serviceAccountName"])["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
    mounts = {m["mountPath"] for m in container(spec, "server")["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root needs a writable /tmp"


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_services_reach_the_server_pods(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = built[name]
    labels = server_pod(objects)["metadata"]["labels"]
    service, headless = find(objects, "Service", "vaeserve"), find(objects, "Service", "vaeserve-headless")
    assert headless["spec"]["clusterIP"] == "None", "client-side round_robin needs one DNS record per pod"
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= labels.items()
    for selector in (find(objects, "PodDisruptionBudget", "vaeserve")["spec"]["selector"],
                     find(objects, "NetworkPolicy", "vaeserve")["spec"]["podSelector"],
                     find(objects, "ServiceMonitor", "vaeserve")["spec"]["selector"]):  # fmt: skip
        assert selector["matchLabels"].items() <= labels.items()
    hpa = find(objects, "HorizontalPodAutoscaler", "vaeserve")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vaeserve"}
    # The ServiceMonitor scrapes by port name: exactly one Service carries it, so each pod is scraped once.
    (endpoint,) = find(objects, "ServiceMonitor", "vaeserve")["spec"]["endpoints"]
    with_port = [s for s in (service, headless) if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
    assert with_port == [service]


def test_gpu_overlay_places_one_gpu_per_replica_and_batches_more(built: dict[str, list[dict[str, Any]]]) -> None:
    gpu, cpu = server_pod(built["gpu"])["spec"], server_pod(built["cpu"])["spec"]
    resources = container(gpu, "server")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    gpu_config = config_of(built["gpu"], container(gpu, "server"))
    cpu_config = config_of(built["cpu"], container(cpu, "server"))
    assert gpu_config["VAESERVE_DEVICE"] == "cuda" and cpu_config["VAESERVE_DEVICE"] == "cpu"
    assert int(gpu_config["VAESERVE_MAX_BATCH_SIZE"]) > int(cpu_config["VAESERVE_MAX_BATCH_SIZE"])
    assert container(gpu, "server")["image"].endswith("-gpu") and container(cpu, "server")["image"].endswith("-cpu")


def test_a_new_model_version_is_one_image_edit(kubectl: str, built: dict[str, list[dict[str, Any]]],
                                               tmp_path: Path) -> None:  # fmt: skip
    # What `kustomize edit set image vaeserve-models=...:vae-2` writes, in an overlay of the cpu overlay.
    overlay = os.path.relpath(KUSTOMIZATIONS["cpu"], tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {overlay}\nimages:\n  - name: vaeserve-models\n    newTag: vae-2\n"
    )
    rolled = server_pod(kustomize_build(kubectl, tmp_path))
    before = server_pod(built["cpu"])
    assert container(before["spec"], "models", init=True)["image"] == "vaeserve-models:vae-1"
    assert container(rolled["spec"], "models", init=True)["image"] == "vaeserve-models:vae-2"
    # The init container copies into the volume the server reads its repository from.
    models = container(rolled["spec"], "models", init=True)
    target = next(m for m in models["volumeMounts"] if m["mountPath"] in models["command"][-1])
    server = container(rolled["spec"], "server")
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == target["name"]]
    assert mount["mountPath"] == config_of(built["cpu"], server)["VAESERVE_REPO"]


def test_locust_targets_the_in_cluster_services(built: dict[str, list[dict[str, Any]]]) -> None:
    objects = built["locust"]
    master = container(find(objects, "Deployment", "locust-master")["spec"]["template"]["spec"], "locust")
    worker = container(find(objects, "Deployment", "locust-worker")["spec"]["template"]["spec"], "locust")
    assert "--master" in master["args"] and "--worker" in worker["args"]
    host = next(a.split("=", 1)[1] for a in master["args"] if a.startswith("--host="))
    service_name, port = host.split(":")
    service = find(built["cpu"], "Service", service_name)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    master_host = next(a.split("=", 1)[1] for a in worker["args"] if a.startswith("--master-host="))
    master_service = find(objects, "Service", master_host)
    assert 5557 in {p["port"] for p in master_service["spec"]["ports"]}
    assert {o["metadata"]["namespace"] for o in objects} == {"vaeserve"}
