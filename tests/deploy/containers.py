"""deploy/'s images started for real with podman, as the rendered manifests say: the containers tests/deploy starts,
`make deploy-smoke` and the deploy benchmark. A container gets its pod's and its own securityContext, its env (the
ConfigMap) and its volumes as the kubelet would make them (Secrets as files with their defaultMode, owned by root
and the pod's fsGroup); the one change is the network: containers share the host's, so the server listens on
127.0.0.1 and on ports reserved for the run instead of 0.0.0.0:50051.

podman only (not docker): pods (`podman kube play`), `podman healthcheck run` and image mounts have no docker twin
that works without a daemon. Rootful: the Secret files belong to root, as on a node.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from tests.deploy.conftest import DEPLOY, ROOT, find, kustomize_build
from tests.harness import free_ports, health_status, wait_until

PODMAN = shutil.which("podman")
VERSION = "0.1.0"  # the server and Locust images' tag (IMAGE_VERSION in the Makefile, newTag in the overlays)
SERVER_IMAGE = f"localhost/vaeserve:{VERSION}-cpu"
BAKED_IMAGE = f"localhost/vaeserve:{VERSION}-cpu-baked"
MODELS_IMAGE = "localhost/vaeserve-models:vae-1"
LOCUST_IMAGE = f"localhost/vaeserve-locust:{VERSION}"
SERVICE = "vae.v1.VaeService"  # what the readiness probe asks the health service about
START_TIMEOUT_S = 120.0


def problem() -> str | None:
    """Why containers cannot run here, or None."""
    if PODMAN is None:
        return "podman is not installed (make system-deps installs it, with runc and catatonit, with apt-get as root)"
    if os.geteuid() != 0:
        return "the container tests run rootful podman, as root (Secret files belong to root, as on a node)"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def build(repo: Path, *targets: str) -> float:
    """`make TARGETS REPO=repo` (the images; cached layers make a rebuild take seconds); its wall time in s."""
    start = time.monotonic()
    done = subprocess.run(["make", "--no-print-directory", *targets, f"REPO={repo}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, f"make {' '.join(targets)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return time.monotonic() - start


def render(kubectl: str, kustomization: str) -> list[dict[str, Any]]:
    """deploy/<kustomization> (k8s/overlays/cpu, kserve/base, ...) as `kubectl kustomize` renders it."""
    return kustomize_build(kubectl, DEPLOY / kustomization)


def dev_secrets(kubectl: str, certs: Path, namespace: str = "vaeserve") -> list[dict[str, Any]]:
    """The Secrets and the CA ConfigMap deploy/README.md creates from deploy/dev-certs.sh's files, made by the same
    `kubectl create` commands (client-side only)."""
    commands = [
        ["secret", "tls", "vaeserve-tls", f"--cert={certs / 'tls.crt'}", f"--key={certs / 'tls.key'}"],
        ["secret", "generic", "vaeserve-auth", f"--from-file=tokens={certs / 'tokens'}"],
        ["secret", "generic", "vaeserve-locust-token", f"--from-file=token={certs / 'locust.token'}"],
        ["configmap", "vaeserve-ca", f"--from-file=ca.crt={certs / 'ca.crt'}"],
    ]
    objects = []
    for command in commands:
        argv = [kubectl, "-n", namespace, "create", *command, "--dry-run=client", "-o", "json"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        objects.append(json.loads(done.stdout))
    return objects


def server_pod(objects: list[dict[str, Any]], name: str = "vaeserve") -> dict[str, Any]:
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]


def volumes(pod_spec: dict[str, Any], objects: list[dict[str, Any]], workdir: Path) -> dict[str, Path]:
    """Each of the pod's volumes as a host directory, as the kubelet fills it: an emptyDir empty and writable by
    all; a Secret's or ConfigMap's keys as files with the volume's defaultMode (0644 unless set), owned by root
    and by the pod's fsGroup when there is one."""
    group = pod_spec.get("securityContext", {}).get("fsGroup", 0)
    made: dict[str, Path] = {}
    for volume in pod_spec["volumes"]:
        path = workdir / volume["name"]
        path.mkdir(parents=True)
        made[volume["name"]] = path
        if "emptyDir" in volume:
            path.chmod(0o777)
            continue
        kind, source = ("Secret", volume["secret"]) if "secret" in volume else ("ConfigMap", volume["configMap"])
        obj = find(objects, kind, source.get("secretName") or source.get("name"))
        # A Secret's data is base64 (stringData plain); a ConfigMap's data is plain (binaryData base64).
        encoded, plain = ("data", "stringData") if kind == "Secret" else ("binaryData", "data")
        files = {k: base64.b64decode(v) for k, v in obj.get(encoded, {}).items()}
        files.update({k: v.encode() for k, v in obj.get(plain, {}).items()})
        for key, data in files.items():
            (path / key).write_bytes(data)
            os.chown(path / key, 0, group)
            (path / key).chmod(source.get("defaultMode", 0o644))
        path.chmod(0o755)
    return made


def run_flags(pod_spec: dict[str, Any], spec: dict[str, Any], host_paths: dict[str, Path]) -> list[str]:
    """`podman run` flags for what the manifest asks of the container `spec` in the pod: its user and groups,
    root filesystem, capabilities, privilege escalation, seccomp profile and volume mounts."""
    pod = pod_spec.get("securityContext", {})
    ctx = {**pod, **spec.get("securityContext", {})}  # the container's settings win, as in Kubernetes
    flags = []
    if "runAsUser" in ctx:
        flags += ["--user", f"{ctx['runAsUser']}:{ctx['runAsGroup']}" if "runAsGroup" in ctx else str(ctx["runAsUser"])]
    if "fsGroup" in pod:
        flags += ["--group-add", str(pod["fsGroup"])]
    if ctx.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]  # only the volumes are writable, as in a pod
    flags += [f"--cap-drop={cap.lower()}" for cap in ctx.get("capabilities", {}).get("drop", [])]
    if ctx.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    # RuntimeDefault is podman's own default profile; anything else would need a profile file here.
    assert ctx.get("seccompProfile", {}).get("type", "RuntimeDefault") == "RuntimeDefault", ctx
    for mount in spec.get("volumeMounts", []):
        suffix = ":ro" if mount.get("readOnly") else ""
        flags += ["-v", f"{host_paths[mount['name']]}:{mount['mountPath']}{suffix}"]
    return flags


def entrypoint(spec: dict[str, Any]) -> list[str]:
    """The `podman run` flag for the container's `command`, which replaces the image's ENTRYPOINT (its `args`
    replace CMD: they go after the image)."""
    return [f"--entrypoint={json.dumps(spec['command'])}"] if "command" in spec else []


def on_loopback(env: dict[str, str], *port_keys: str) -> tuple[dict[str, str], dict[str, int]]:
    """`env` with the server on 127.0.0.1 and each of `port_keys` (VAESERVE_PORT, ...) on a port reserved now."""
    ports = dict(zip(port_keys, free_ports(len(port_keys)), strict=True))
    return {**env, "VAESERVE_HOST": "127.0.0.1", **{k: str(v) for k, v in ports.items()}}, ports


class Container:
    """`podman run -d` of `image` on the host's network, removed however the `with` block ends."""

    def __init__(self, name: str, image: str, flags: Sequence[str], env: dict[str, str], args: Sequence[str] = ()):
        self.name, self.image, self.flags, self.env, self.args = name, image, list(flags), env, list(args)

    def start(self) -> Container:
        podman("rm", "--force", "--ignore", self.name)  # a leftover of an interrupted run
        env = [f"--env={k}={v}" for k, v in self.env.items()]
        # No periodic health checks: they need systemd timers; `podman healthcheck run` runs the check on demand.
        podman("run", "--detach", "--name", self.name, "--network", "host", "--health-interval", "disable",
               *env, *self.flags, self.image, *self.args)  # fmt: skip
        return self

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", "--ignore", self.name, check=False)

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def signal(self, name: str = "TERM") -> None:
        podman("kill", "--signal", name, self.name)

    def wait(self, timeout: float = 60) -> int:
        return int(podman("wait", self.name, timeout=timeout).stdout.strip())

    def rss_bytes(self) -> int:
        """Resident memory of the container's main process (the server), from the host's /proc."""
        pid = podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip()
        (line,) = [x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:")]
        return int(line.split()[1]) * 1024


def serving(health_target: str) -> bool:
    """The readiness probe's question: is vae.v1.VaeService SERVING on the plaintext health port?"""
    with contextlib.suppress(Exception):
        return health_status(health_target, SERVICE, timeout=2) == health_pb2.HealthCheckResponse.SERVING
    return False


def wait_serving(health_target: str, alive: Callable[[], bool], what: str, timeout: float = START_TIMEOUT_S) -> float:
    """Polls until `health_target` says SERVING, failing at once when `alive()` turns false; the seconds taken."""
    start = time.monotonic()

    def ready() -> bool:
        assert alive(), f"{what} stopped before it was SERVING"
        return serving(health_target)

    wait_until(ready, f"{what} to be SERVING", timeout, poll=0.05)
    return time.monotonic() - start


@contextlib.contextmanager
def image_mounted(image: str) -> Iterator[Path]:
    """The root filesystem of `image` on the host, read-only, like a KServe modelcar's /proc/<pid>/root."""
    path = Path(podman("image", "mount", image).stdout.strip())
    try:
        yield path
    finally:
        podman("image", "unmount", image, check=False)
