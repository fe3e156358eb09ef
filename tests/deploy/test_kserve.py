"""deploy/kserve as KServe and Knative would take it: the ServingRuntime's container is a valid, hardened core/v1
container that fits Knative's rules and vaeserve's flags; the InferenceService passes the checks KServe's controller
makes before it picks a runtime; the canary changes only the model and the traffic split. (The objects' own schemas
are checked in test_manifests.py against the KServe CRDs.)"""

from __future__ import annotations

import copy
import json
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest

from tests.deploy.conftest import DOCKER, SERVER_DOCKERFILES, container, find, mounted_volume
from tests.deploy.dockerfile import read_stages
from tests.deploy.test_entrypoint import container_env, container_process
from tests.deploy.test_manifests import KUBERNETES_VERSIONS, serve_env_names, server_pod
from tests.harness import free_ports
from vaeserve.repository import FORMAT, FORMAT_VERSION

# Where KServe puts the model (storage initializer or modelcar) and the name it gives the serving container.
MODEL_MOUNT = "/mnt/models"
KSERVE_CONTAINER = "kserve-container"
# Knative's Revision validation: one container port, named h2c for HTTP/2 (gRPC) or http1, and none of the ports
# its queue-proxy takes.
KNATIVE_PORT_NAMES = {"h2c", "http1"}
QUEUE_PROXY_PORTS = {8012, 8013, 8022, 8112, 9090, 9091}


def runtime(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "ServingRuntime", "vaeserve")


def with_template(runtime_container: dict[str, Any], isvc: dict[str, Any]) -> dict[str, Any]:
    """The container as KServe's controller fills it for an InferenceService: Go templates over its JSON, with the
    InferenceService's metadata as data (only {{.Name}} and {{.Namespace}} are used here)."""
    text = json.dumps(runtime_container)
    fields = {"Name": isvc["metadata"]["name"], "Namespace": isvc["metadata"]["namespace"]}
    text = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: fields[m.group(1)], text)
    return json.loads(text)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    assert "envFrom" not in c, "every setting is written in the runtime"
    return {e["name"]: e["value"] for e in c["env"]}


@pytest.mark.parametrize("name", ["kserve", "kserve-canary"])
def test_runtime_pod_is_a_valid_core_pod(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    # The CRD's schema leaves containers and volumes to Kubernetes' own types: validate them as the Pod they become.
    spec = runtime(built[name])["spec"]
    isvc = find(built[name], "InferenceService", "vae")
    containers = [with_template(c, isvc) for c in spec["containers"]]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vae-predictor"},
           "spec": {"containers": containers, "volumes": spec["volumes"]}}  # fmt: skip
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: ServingRuntime containers as a Pod, Kubernetes {version}: {e.path}: {e.message}")


def test_runtime_serves_vaeserve_repositories_over_grpc(built: dict[str, list[dict[str, Any]]]) -> None:
    spec = runtime(built["kserve"])["spec"]
    isvc = find(built["kserve"], "InferenceService", "vae")
    (server,) = spec["containers"]
    assert server["name"] == KSERVE_CONTAINER, "KServe finds the serving container, and fills its storage, by name"
    env = env_of(with_template(server, isvc))
    # The format `vaeserve export` writes, and only the gRPC flavour of the Open Inference Protocol.
    assert {(f["name"], f["version"]) for f in spec["supportedModelFormats"]} == {(FORMAT, str(FORMAT_VERSION))}
    assert spec["protocolVersions"] == ["grpc-v2"]
    # Knative: a single port, named for HTTP/2 so gRPC passes its proxies, the one the server listens on.
    (port,) = server["ports"]
    assert port["name"] == "h2c" and port["name"] in KNATIVE_PORT_NAMES
    assert port["containerPort"] == int(env["VAESERVE_PORT"]) and port["containerPort"] not in QUEUE_PROXY_PORTS
    assert int(env["VAESERVE_METRICS_PORT"]) not in QUEUE_PROXY_PORTS | {port["containerPort"]}
    # The model: the InferenceService's name is the model's NAME under the repository KServe mounts.
    assert env["VAESERVE_REPO"] == MODEL_MOUNT and env["VAESERVE_NAME"] == isvc["metadata"]["name"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == port["containerPort"], probe
    assert server["readinessProbe"]["grpc"]["service"] == "vae.v1.VaeService"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too little time to load and warm a model"


def test_runtime_sets_only_real_server_flags(built: dict[str, list[dict[str, Any]]]) -> None:
    env = env_of(runtime(built["kserve"])["spec"]["containers"][0])
    unknown = {k for k in env if k.startswith("VAESERVE_")} - serve_env_names()
    assert not unknown, f"not flags of `vaeserve serve`: {sorted(unknown)}"


def test_runtime_container_is_locked_down_like_the_deployment(built: dict[str, list[dict[str, Any]]]) -> None:
    spec = runtime(built["kserve"])["spec"]
    (server,) = spec["containers"]
    deployment_pod = server_pod(built["cpu"])["spec"]
    deployment = container(deployment_pod, "server")
    # The same image and resources, and at least the Deployment's container hardening; what the Deployment sets
    # for the whole pod is set on the container here (Knative rejects a pod securityContext by default).
    assert server["image"] == deployment["image"] and server["resources"] == deployment["resources"]
    security = server["securityContext"]
    assert deployment["securityContext"].items() <= security.items()
    pod_security = deployment_pod["securityContext"]
    for key in ("runAsUser", "seccompProfile"):
        assert security[key] == pod_security[key], key
    # KServe gives the server and an oci:// modelcar one user (uidModelcar); a group set here would differ from the
    # modelcar's, and Linux lets a process into another's /proc/PID/root (the model) only with both equal.
    assert "runAsGroup" not in security
    assert "lifecycle" not in server, "Knative rejects lifecycle hooks (its queue-proxy drains the pod)"
    assert {m["mountPath"] for m in server["volumeMounts"]} >= {"/tmp"}, "a read-only root needs a writable /tmp"
    env = env_of(server)
    # The token file from a whole Secret volume, reflection off, /metrics on loopback for the queue-proxy only.
    auth = mounted_volume(spec, server, env["VAESERVE_AUTH_TOKEN_FILE"])
    assert auth["secret"]["secretName"] == "vaeserve-auth" and env["VAESERVE_AUTH_TOKEN_FILE"].endswith("/tokens")
    assert env["VAESERVE_REFLECTION"] == "false"
    assert env["VAESERVE_METRICS_HOST"] == "127.0.0.1"
    assert spec["annotations"]["prometheus.kserve.io/port"] == env["VAESERVE_METRICS_PORT"]


@pytest.mark.parametrize("name", ["kserve", "kserve-canary"])
def test_inferenceservice_resolves_to_the_runtime(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    # What KServe's controller checks before it builds the predictor (reconcileModel: an explicit runtime).
    isvc = find(built[name], "InferenceService", "vae")
    model = isvc["spec"]["predictor"]["model"]
    sr = find(built[name], "ServingRuntime", model["runtime"])
    assert sr["metadata"]["namespace"] == isvc["metadata"]["namespace"]
    assert not sr["spec"].get("disabled", False)
    assert model["protocolVersion"] in sr["spec"]["protocolVersions"], "the default (v1) is REST, which vaeserve lacks"
    wanted = f"{model['modelFormat']['name']}:{model['modelFormat'].get('version', '')}".rstrip(":")
    offered = {f"{f['name']}:{f['version']}" for f in sr["spec"]["supportedModelFormats"]}
    offered |= {f["name"] for f in sr["spec"]["supportedModelFormats"]}
    assert wanted in offered
    # canaryTrafficPercent splits traffic between Knative revisions: Knative mode only.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc["spec"]["predictor"]["minReplicas"] >= 1, "no scale to zero: a cold start loads and warms the model"


def test_model_comes_from_the_models_image(built: dict[str, list[dict[str, Any]]]) -> None:
    # The same artefact and version the plain Deployment's initContainer copies, used as a KServe modelcar: an
    # image whose /models holds NAME/VERSION, NAME being the InferenceService's.
    isvc = find(built["kserve"], "InferenceService", "vae")
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    models_init = container(server_pod(built["cpu"])["spec"], "models", init=True)
    image = re.fullmatch(r"oci://(?:[\w.-]+/)*([\w.-]+):([\w.-]+)", uri)
    assert image, uri
    assert f"{image.group(1)}:{image.group(2)}" == models_init["image"]
    stage = read_stages(DOCKER / "Dockerfile.models")[-1]
    args = dict(a.split("=", 1) for a in stage.all("ARG"))
    assert args["NAME"] == isvc["metadata"]["name"]
    # A modelcar image's models live under /models, the repository layout under it.
    assert "/models/${NAME}/${VERSION}/" in " ".join(stage.all("COPY"))


def test_canary_changes_only_the_model_and_the_split(built: dict[str, list[dict[str, Any]]]) -> None:
    base, canary = built["kserve"], built["kserve-canary"]
    stable, candidate = (copy.deepcopy(find(objs, "InferenceService", "vae")) for objs in (base, canary))
    split = candidate["spec"]["predictor"].pop("canaryTrafficPercent")
    assert 0 < split < 100
    old_uri, new_uri = (o["spec"]["predictor"]["model"]["storageUri"] for o in (stable, candidate))
    assert old_uri.rsplit(":", 1)[0] == new_uri.rsplit(":", 1)[0] and old_uri != new_uri, "a new tag of one image"
    # The same InferenceService (so applying it updates the running one), with nothing else changed.
    stable["spec"]["predictor"]["model"]["storageUri"] = new_uri
    assert candidate == stable
    others = lambda objs: [o for o in objs if o["kind"] != "InferenceService"]  # noqa: E731
    assert others(canary) == others(base)


def model_ready_request(name: str) -> bytes:
    """inference.ModelReadyRequest{name} in protobuf wire format (field 1, length-delimited): the test needs no
    generated stubs of KServe's grpc_predict_v2.proto for one call."""
    encoded = name.encode()
    assert len(encoded) < 128  # a one-byte varint length
    return b"\x0a" + bytes([len(encoded)]) + encoded


@pytest.mark.slow
def test_runtime_command_serves_the_oip_models(
    built: dict[str, list[dict[str, Any]]], model_repo: Path, tmp_path: Path
) -> None:
    # The image's ENTRYPOINT with the runtime's environment, as KServe fills it for the InferenceService `vae`,
    # serving what the storage URI puts at /mnt/models; Knative's view (plaintext h2c health) and a client's (OIP
    # through the queue-proxy, with a bearer token).
    image = {s.name: s for s in read_stages(SERVER_DOCKERFILES["cpu"])}["runtime"]
    isvc = find(built["kserve"], "InferenceService", "vae")
    (server,) = [with_template(c, isvc) for c in runtime(built["kserve"])["spec"]["containers"]]
    env = env_of(server)
    token = "kserve-test-token"
    (tmp_path / "tokens").write_text(f"{token}\n")
    port, metrics_port = free_ports(2)
    host_only = {"VAESERVE_PORT": str(port), "VAESERVE_METRICS_PORT": str(metrics_port),
                 "VAESERVE_REPO": str(model_repo), "VAESERVE_AUTH_TOKEN_FILE": str(tmp_path / "tokens"),
                 "VAESERVE_DEVICE": "cpu"}  # fmt: skip
    assert host_only.keys() <= env.keys()
    process_env = {**container_env(image, env), **host_only, "VAESERVE_HOST": "127.0.0.1"}
    target = f"127.0.0.1:{port}"
    # Ready when Knative's readiness probe (plaintext gRPC health on the h2c port) says so.
    with container_process(image, server, process_env, target, port, tmp_path / "serve.log") as process:
        name, bearer = env["VAESERVE_NAME"], [("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(target) as channel:
            ready = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")
            for model in (f"{name}-encoder", f"{name}-decoder"):
                # ModelReadyResponse{ready: true}
                assert ready(model_ready_request(model), timeout=10, metadata=bearer) == b"\x08\x01", model
            with pytest.raises(grpc.RpcError) as denied:
                ready(model_ready_request(f"{name}-encoder"), timeout=10)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # /metrics answers on loopback, where the queue-proxy scrapes it.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            assert b"vaeserve_" in reply.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.output()
