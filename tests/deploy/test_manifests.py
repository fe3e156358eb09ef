"""The rendered manifests: valid Kubernetes objects, and the serving contract they encode (access control, probes,
drain, scaling, load balancing, model delivery, GPU placement) consistent with the server's own flags."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.conftest import KUSTOMIZATIONS, config_of, container, find, kustomize_build, mounted_volume
from vaeserve.cli import build_parser
from vaeserve.flags import env_name

# The oldest Kubernetes the manifests promise to fit (native gRPC probes are GA since 1.27, the preStop sleep
# action is on by default since 1.30), and the newest schema kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Custom resources: kubernetes-validate knows only built-in kinds, so these are checked against their CRD's schema.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime.schema.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.schema.json",
}
SERVER_OVERLAYS = ("base", "cpu", "gpu", "mtls")
# The label a pod, and its namespace, must carry for the NetworkPolicy to let it call the gRPC port.
CLIENT_LABEL = ("vaeserve.io/client", "true")


def serve_env_names() -> set[str]:
    """VAESERVE_<FLAG> for every flag `vaeserve serve` has."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {env_name(s) for a in sub.choices["serve"]._actions for s in a.option_strings if s.startswith("--")}


def server_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "vaeserve")["spec"]["template"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_validates_strictly(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    for obj in built[name]:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            validator = jsonschema.Draft202012Validator(json.loads(Path(__file__).with_name(schema).read_text()))
            errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
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
    assert ports == {"grpc": int(config["VAESERVE_PORT"]), "health": int(config["VAESERVE_HEALTH_PORT"]),
                     "metrics": int(config["VAESERVE_METRICS_PORT"])}  # fmt: skip
    # The gRPC port speaks TLS and the kubelet's gRPC probes do not: they must ask the plaintext health listener.
    assert config["VAESERVE_TLS_CERT"] and config["VAESERVE_TLS_KEY"]
    assert len(set(ports.values())) == len(ports)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == ports["health"], f"{probe} is not a gRPC probe of the health port"
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
def test_secrets_are_mounted_whole_and_reflection_is_off(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    spec = server_pod(built[name])["spec"]
    server = container(spec, "server")
    config = config_of(built[name], server)
    # Each file the server reads comes from the Secret (and key) deploy/README.md tells people to create.
    files = {
        "VAESERVE_TLS_CERT": ("vaeserve-tls", "tls.crt"),
        "VAESERVE_TLS_KEY": ("vaeserve-tls", "tls.key"),
        "VAESERVE_TLS_CLIENT_CA": ("vaeserve-tls", "ca.crt"),
        "VAESERVE_AUTH_TOKEN_FILE": ("vaeserve-auth", "tokens"),
    }
    for key, (secret, file) in files.items():
        if key == "VAESERVE_TLS_CLIENT_CA" and key not in config:
            continue  # mTLS is the mtls overlay's
        volume = mounted_volume(spec, server, config[key])
        assert volume["secret"]["secretName"] == secret and Path(config[key]).name == file, (key, volume)
        assert "items" not in volume["secret"], "the whole Secret, so a key added later (ca.crt) appears too"
    assert config["VAESERVE_REFLECTION"] == "false", "reflection would describe the API to any caller"


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_services_reach_the_server_pods(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = built[name]
    labels = server_pod(objects)["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Service"}
    assert services.keys() == {"vaeserve", "vaeserve-headless", "vaeserve-metrics"}
    assert services["vaeserve-headless"]["spec"]["clusterIP"] == "None", "round_robin needs one DNS record per pod"
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= labels.items()
    # Clients get the gRPC port only; the unauthenticated /metrics and the plaintext health port are on no Service
    # of theirs.
    for name_ in ("vaeserve", "vaeserve-headless"):
        assert [p["targetPort"] for p in services[name_]["spec"]["ports"]] == ["grpc"], name_
    assert [p["targetPort"] for p in services["vaeserve-metrics"]["spec"]["ports"]] == ["metrics"]
    for selector in (find(objects, "PodDisruptionBudget", "vaeserve")["spec"]["selector"],
                     find(objects, "NetworkPolicy", "vaeserve")["spec"]["podSelector"]):  # fmt: skip
        assert selector["matchLabels"].items() <= labels.items()
    hpa = find(objects, "HorizontalPodAutoscaler", "vaeserve")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vaeserve"}
    # The ServiceMonitor selects Services by label and scrapes a port by name: the metrics Service alone, so each
    # pod is scraped once.
    monitor = find(objects, "ServiceMonitor", "vaeserve")["spec"]
    wanted = monitor["selector"]["matchLabels"].items()
    assert [n for n, s in services.items() if wanted <= s["metadata"]["labels"].items()] == ["vaeserve-metrics"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in services["vaeserve-metrics"]["spec"]["ports"]}


def admits(policy: dict[str, Any], port: dict[str, Any], pod: dict[str, str], namespace: dict[str, str]) -> bool:
    """Whether a NetworkPolicy's ingress rules let a pod with these labels, in a namespace with these labels, reach
    the container port `port` of the pods it selects (the API's rules: peers of a rule are ORed, a peer's
    namespaceSelector and podSelector are ANDed, a missing selector means the policy's own namespace / any pod)."""

    def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
        assert not (selector or {}).get("matchExpressions"), "not implemented: matchExpressions"
        return (selector or {}).get("matchLabels", {}).items() <= labels.items()

    own = {"kubernetes.io/metadata.name": policy["metadata"]["namespace"]}
    for rule in policy["spec"].get("ingress", []):
        if not any(p.get("port") in (port["name"], port["containerPort"]) for p in rule.get("ports", [{}])):
            continue
        for peer in rule.get("from", [{}]):
            assert "ipBlock" not in peer, "not implemented: ipBlock"
            ns_ok = matches(peer["namespaceSelector"], namespace) if "namespaceSelector" in peer else namespace == own
            if ns_ok and matches(peer.get("podSelector"), pod):
                return True
    return False


@pytest.mark.parametrize("name", SERVER_OVERLAYS)
def test_network_policy_admits_only_labelled_clients_and_prometheus(built: dict[str, list[dict[str, Any]]],
                                                                    name: str) -> None:  # fmt: skip
    objects = built[name]
    policy = find(objects, "NetworkPolicy", "vaeserve")
    ports = {p["name"]: p for p in container(server_pod(objects)["spec"], "server")["ports"]}
    client, monitoring = dict([CLIENT_LABEL]), {"kubernetes.io/metadata.name": "monitoring"}
    elsewhere = {"kubernetes.io/metadata.name": "other"}
    assert admits(policy, ports["grpc"], client, {**elsewhere, **client})
    assert not admits(policy, ports["grpc"], client, elsewhere), "a pod label alone must not be enough"
    assert not admits(policy, ports["grpc"], {}, {**elsewhere, **client}), "nor a namespace label alone"
    assert not admits(policy, ports["grpc"], {}, monitoring)
    # /metrics: the monitoring namespace only. Health: no pod at all (the kubelet's probes come from the node).
    assert admits(policy, ports["metrics"], {}, monitoring)
    assert not admits(policy, ports["metrics"], client, {**elsewhere, **client})
    for pod, namespace in ((client, {**elsewhere, **client}), ({}, monitoring), ({}, elsewhere)):
        assert not admits(policy, ports["health"], pod, namespace)
    # The server's own namespace is a client namespace, so labelled pods there (the Locust workers) get in.
    assert admits(policy, ports["grpc"], client, namespace_labels(objects))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []


def namespace_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The labels of the one Namespace the objects create, with the one the API server adds to every namespace."""
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    return namespace["metadata"]["labels"] | {"kubernetes.io/metadata.name": namespace["metadata"]["name"]}


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
    worker_pod = find(objects, "Deployment", "locust-worker")["spec"]["template"]
    worker = container(worker_pod["spec"], "locust")
    assert "--master" in master["args"] and "--worker" in worker["args"]
    host = next(a.split("=", 1)[1] for a in master["args"] if a.startswith("--host="))
    service_name, port = host.split(":")
    service = find(built["cpu"], "Service", service_name)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    master_host = next(a.split("=", 1)[1] for a in worker["args"] if a.startswith("--master-host="))
    master_service = find(objects, "Service", master_host)
    assert 5557 in {p["port"] for p in master_service["spec"]["ports"]}
    assert {o["metadata"]["namespace"] for o in objects} == {"vaeserve"}


def test_locust_workers_may_call_the_secured_server(built: dict[str, list[dict[str, Any]]]) -> None:
    # Only the workers call vaeserve (the master runs no users): through its NetworkPolicy, with TLS and a token.
    worker_pod = find(built["locust"], "Deployment", "locust-worker")["spec"]["template"]
    worker = container(worker_pod["spec"], "locust")
    policy = find(built["cpu"], "NetworkPolicy", "vaeserve")
    grpc_port = next(p for p in container(server_pod(built["cpu"])["spec"], "server")["ports"] if p["name"] == "grpc")
    namespace = namespace_labels(built["cpu"])
    assert {o["metadata"]["namespace"] for o in built["locust"]} == {namespace["kubernetes.io/metadata.name"]}
    assert admits(policy, grpc_port, worker_pod["metadata"]["labels"], namespace)
    # What the locustfile reads (deploy/README.md): the CA that signed the server's certificate, from a ConfigMap
    # (the server's key never reaches a client), and the worker's own token, from a Secret, both as files.
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env.keys() == {"VAESERVE_TLS_CA", "VAESERVE_TOKEN_FILE"}
    ca = mounted_volume(worker_pod["spec"], worker, env["VAESERVE_TLS_CA"])
    assert ca["configMap"]["name"] == "vaeserve-ca" and Path(env["VAESERVE_TLS_CA"]).name == "ca.crt"
    token = mounted_volume(worker_pod["spec"], worker, env["VAESERVE_TOKEN_FILE"])
    assert token["secret"]["secretName"] == "vaeserve-locust-token" and Path(env["VAESERVE_TOKEN_FILE"]).name == "token"
    # A 0440 file is readable through the group only: the pod's fsGroup must be the worker's group.
    security = worker_pod["spec"]["securityContext"]
    assert token["secret"].get("defaultMode", 0o644) & 0o004 or security["fsGroup"] == security["runAsGroup"]


def test_mtls_overlay_only_adds_the_client_ca(built: dict[str, list[dict[str, Any]]]) -> None:
    cpu, mtls = (config_of(built[n], container(server_pod(built[n])["spec"], "server")) for n in ("cpu", "mtls"))
    # ca.crt beside tls.crt: the key of the vaeserve-tls Secret the Deployment already mounts.
    assert mtls.pop("VAESERVE_TLS_CLIENT_CA") == str(Path(cpu["VAESERVE_TLS_CERT"]).with_name("ca.crt"))
    assert mtls == cpu

    def without_config(objects: list[dict[str, Any]]) -> str:
        """The objects but the ConfigMap, with the ConfigMap's hashed name blanked out where it is referenced."""
        (config,) = [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"]
        return json.dumps([o for o in objects if o["kind"] != "ConfigMap"], sort_keys=True).replace(config, "CONFIG")

    assert without_config(built["mtls"]) == without_config(built["cpu"]), "the overlay changes the ConfigMap only"
