"""The images as their Dockerfiles define them (no Docker engine here): pinned bases, an unprivileged user, a gRPC
HEALTHCHECK, no torch in what runs, and a build context (.dockerignore) that holds everything the builds copy."""

from __future__ import annotations

import re
from importlib.metadata import requires
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKER, ROOT, SERVER_DOCKERFILES
from tests.deploy.dockerfile import healthcheck, read_stages

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
# name:exact.version[-variant]@sha256:<64 hex>: a moving tag (latest, 3.12-slim) or a bare tag is not a pin.
PINNED = re.compile(r"^[\w./-]+:\d+(\.\d+)+[\w.-]*@sha256:[0-9a-f]{64}$")


def test_all_dockerfiles_are_checked() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.models", "Dockerfile.locust"} <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned_by_version_and_digest(path: Path) -> None:
    stages = read_stages(path)
    names = {s.name for s in stages}
    for stage in stages:
        if stage.base not in names:  # FROM an earlier stage inherits that stage's pin
            assert PINNED.match(stage.base), f"{path.name}: {stage.name} FROM {stage.base} is not pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_final_stages_run_unprivileged_and_declare_a_healthcheck(path: Path) -> None:
    stages = read_stages(path)
    for stage in stages:
        if any(stage.base == s.name for s in stages) or stage.name == "builder":
            continue  # builders never run; a stage FROM another inherits its USER and HEALTHCHECK
        user = stage.last("USER")
        assert user and user.split(":")[0] not in {"0", "root"}, f"{path.name}: {stage.name} runs as root"
        assert stage.last("HEALTHCHECK"), f"{path.name}: {stage.name} has no HEALTHCHECK (or HEALTHCHECK NONE)"


@pytest.mark.parametrize("path", SERVER_DOCKERFILES.values(), ids=lambda p: p.name)
def test_server_runtime_has_no_torch_and_probes_grpc_health(path: Path) -> None:
    stages = {s.name: s for s in read_stages(path)}
    runtime, builder = stages["runtime"], stages["builder"]
    # What the runtime holds: its own instructions plus the venv copied from the builder, which installs
    # exactly the extras named on its pip line.
    assert "torch" not in " ".join(args for _, args in runtime.instructions)
    (install,) = [r for r in builder.all("RUN") if "pip install" in r]
    extras = re.search(r"'\.\[([\w,]+)\]'", install).group(1).split(",")
    assert extras == ["serve"]
    serve = [r for r in requires("vaeserve") or [] if re.search(r"extra\s*==\s*['\"]serve['\"]", r)]
    assert serve and not [r for r in serve if re.match(r"torch\b", r)], "the serve extra pulls torch"
    assert not [r for r in runtime.all("RUN") if re.search(r"\b(gcc|g\+\+|build-essential|python3-dev)\b", r)]
    options, command = healthcheck(runtime.last("HEALTHCHECK"))
    assert command[:2] == ["python", "-c"] and "grpc_health" in command[2] and "SERVING" in command[2]
    assert float(options["start-period"].rstrip("s")) >= 60, "model load and warm-up need a start period"


def test_gpu_and_cpu_servers_start_the_same_way() -> None:
    cpu, gpu = ({s.name: s for s in read_stages(p)}["runtime"] for p in SERVER_DOCKERFILES.values())
    for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK", "USER", "EXPOSE"):
        assert cpu.last(keyword) == gpu.last(keyword), keyword
    assert {k: v for k, v in cpu.env().items() if k != "VAESERVE_DEVICE"} == {
        k: v for k, v in gpu.env().items() if k != "VAESERVE_DEVICE"
    }


def test_build_context_holds_what_the_dockerfiles_copy() -> None:
    # .dockerignore is an allowlist ("*" then "!path"): every COPY source must be let back in.
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    for path in DOCKERFILES:
        for args in (a for s in read_stages(path) for a in s.all("COPY") if not a.startswith("--from")):
            for source in args.split()[:-1]:
                source = re.sub(r"\$\{\w+\}.*", "", source).rstrip("/")  # models/${NAME}/... -> models
                assert any(source == a or source.startswith(a + "/") for a in allowed), f"{path.name}: {source}"
                assert source.startswith("models") or (ROOT / source).exists(), f"{path.name}: {source} missing"


def test_locust_image_runs_the_repository_locustfile() -> None:
    runtime = {s.name: s for s in read_stages(DOCKER / "Dockerfile.locust")}["runtime"]
    entrypoint = runtime.exec_form("ENTRYPOINT")
    locustfile = entrypoint[entrypoint.index("-f") + 1]
    workdir = runtime.last("WORKDIR")
    copied = {args.split()[-1].rstrip("/") for args in runtime.all("COPY") if not args.startswith("--from")}
    assert f"{workdir}/{Path(locustfile).parent}" in copied, "the locustfile's folder is not in the image"
    assert (ROOT / locustfile).is_file()
