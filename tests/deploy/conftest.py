"""deploy/ as the cluster would get it: every kustomization rendered once by the real `kubectl kustomize`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
KUSTOMIZATIONS = {
    "base": DEPLOY / "k8s" / "base",
    "cpu": DEPLOY / "k8s" / "overlays" / "cpu",
    "gpu": DEPLOY / "k8s" / "overlays" / "gpu",
    "mtls": DEPLOY / "k8s" / "overlays" / "mtls",
    "locust": DEPLOY / "k8s" / "locust",
    "kserve": DEPLOY / "kserve" / "base",
    "kserve-canary": DEPLOY / "kserve" / "canary",
}
# Which server image each overlay runs.
SERVER_DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed and could not be (make system-deps installs it with apt-get as root)")
    return path


def kustomize_build(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


@pytest.fixture(scope="session")
def built(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Kustomization name -> the objects it renders."""
    return {name: kustomize_build(kubectl, path) for name, path in KUSTOMIZATIONS.items()}


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    (match,) = [c for c in pod_spec["initContainers" if init else "containers"] if c["name"] == name]
    return match


def config_of(objects: list[dict[str, Any]], server: dict[str, Any]) -> dict[str, str]:
    """The environment the server container gets from its ConfigMap(s) (envFrom) and env entries."""
    env: dict[str, str] = {}
    for source in server.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in server.get("env", [])})
    return env


def mounted_volume(pod_spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume that holds the file `path` in the container: mounted whole at the file's directory, read-only,
    not through subPath (whose files the kubelet never updates, so a rotated Secret would not reach the process)."""
    directory = str(Path(path).parent)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True and "subPath" not in mount and "subPathExpr" not in mount, mount
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
    return volume


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What deploy/dev-certs.sh writes (the throwaway CA, certificates and tokens deploy/README.md uses)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (make system-deps installs it with apt-get as root)")
    out = tmp_path_factory.mktemp("dev-certs")
    done = subprocess.run([str(DEPLOY / "dev-certs.sh"), str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="session")
def podman_ok() -> None:
    """Skips (saying why) where containers cannot run: no podman, or not root."""
    from tests.deploy.containers import problem  # it imports this module

    reason = problem()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def images(podman_ok: None, model_repo: Path) -> float:
    """The server (runtime), models and Locust images, built once a session by `make` from the working tree (the
    models image from the session's model repository, since a fresh clone has no models/); the build's seconds."""
    from tests.deploy.containers import build

    return build(model_repo, "image-cpu", "image-models", "image-locust")
