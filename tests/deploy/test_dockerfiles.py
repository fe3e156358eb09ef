"""The images as their Dockerfiles define them (no Docker engine here): pinned bases, an unprivileged user, a gRPC
HEALTHCHECK, no torch in what runs, and a build context (.dockerignore) that holds everything the builds copy."""

from __future__ import annotations

import re
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.deploy.conftest import DOCKER, ROOT, SERVER_DOCKERFILES
from tests.deploy.dockerfile import Stage, global_args, healthcheck, read_stages

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
# name:exact.version[-variant]@sha256:<64 hex>: a moving tag (latest, 3.12-slim) or a bare tag is not a pin.
PINNED = re.compile(r"^[\w./-]+:\d+(\.\d+)+[\w.-]*@sha256:[0-9a-f]{64}$")
# The vaeserve extras each image's builder installs: onnxruntime-gpu only where CUDA is.
IMAGE_EXTRAS = {
    "Dockerfile.cpu": ["serve-cpu"],
    "Dockerfile.gpu": ["serve"],
    "Dockerfile.locust": ["serve-cpu", "load"],
}
# The images are Linux; the GPU one is x86_64 only (onnxruntime-gpu ships CUDA wheels for nothing else).
IMAGE_PLATFORM = {"sys_platform": "linux", "platform_machine": "x86_64"}


def installed_extras(builder: Stage) -> list[str]:
    """The extras of the builder's one `pip install ... '.[extra,...]'` line."""
    (install,) = [r for r in builder.all("RUN") if "pip install" in r]
    return re.search(r"'\.\[([\w,-]+)\]'", install).group(1).split(",")


def distributions(extras: list[str]) -> set[str]:
    """The distributions `vaeserve[extras]` asks for on the images' platform, following self-references such as
    vaeserve[serve-core], read from the installed package's metadata (what pip resolves)."""
    wanted, seen, names = list(extras), set(), set()
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in requires("vaeserve") or []:
            req = Requirement(line)
            # A base dependency (no marker, or a platform marker only) comes with every extra.
            if req.marker and not req.marker.evaluate({**default_environment(), **IMAGE_PLATFORM, "extra": extra}):
                continue
            if req.name == "vaeserve":
                wanted += sorted(req.extras)
            else:
                names.add(req.name)
    return names


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
def test_bases_are_build_args_so_a_local_base_can_stand_in(path: Path) -> None:
    # Where the registry is out of reach, `make images` passes the local Debian base (deploy/base-image.sh).
    stages = read_stages(path)
    names = {s.name for s in stages}
    args = global_args(path)
    for stage in stages:
        if stage.base not in names:  # (checked pinned above, through the ARG's default)
            match = re.fullmatch(r"\$\{(\w+_IMAGE)\}", stage.base_as_written)
            assert match and match.group(1) in args, f"{path.name}: {stage.name} FROM {stage.base_as_written}"


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
    installed = distributions(installed_extras(builder))
    assert "grpcio" in installed and not {n for n in installed if re.match(r"torch\b", n)}, installed
    assert not [r for r in runtime.all("RUN") if re.search(r"\b(gcc|g\+\+|build-essential|python3-dev)\b", r)]
    options, command = healthcheck(runtime.last("HEALTHCHECK"))
    assert command[:2] == ["python", "-c"] and "grpc_health" in command[2] and "SERVING" in command[2]
    # With TLS on the gRPC port, only the plaintext health listener answers an insecure channel.
    assert "VAESERVE_HEALTH_PORT" in command[2]
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
        if path.name == "Dockerfile.models":
            continue  # its context is a model repository (below), not the project
        for args in (a for s in read_stages(path) for a in s.all("COPY") if not a.startswith("--from")):
            for source in args.split()[:-1]:
                source = re.sub(r"\$\{\w+\}.*", "", source).rstrip("/")  # models/${NAME}/... -> models
                assert any(source == a or source.startswith(a + "/") for a in allowed), f"{path.name}: {source}"
                assert source.startswith("models") or (ROOT / source).exists(), f"{path.name}: {source} missing"


def test_models_image_copies_one_version_from_the_repository_it_is_built_from() -> None:
    # `make image-models REPO=...` builds with the model repository as the context: NAME/VERSION is all it copies.
    (stage,) = read_stages(DOCKER / "Dockerfile.models")
    assert stage.all("COPY") == ["${NAME}/${VERSION}/ /models/${NAME}/${VERSION}/"]


def test_locust_image_runs_the_repository_locustfile() -> None:
    runtime = {s.name: s for s in read_stages(DOCKER / "Dockerfile.locust")}["runtime"]
    entrypoint = runtime.exec_form("ENTRYPOINT")
    locustfile = entrypoint[entrypoint.index("-f") + 1]
    workdir = runtime.last("WORKDIR")
    copied = {args.split()[-1].rstrip("/") for args in runtime.all("COPY") if not args.startswith("--from")}
    assert f"{workdir}/{Path(locustfile).parent}" in copied, "the locustfile's folder is not in the image"
    assert (ROOT / locustfile).is_file()


@pytest.mark.parametrize("path", [DOCKER / name for name in IMAGE_EXTRAS], ids=lambda p: p.name)
def test_only_the_gpu_image_installs_the_cuda_onnxruntime(path: Path) -> None:
    builder = {s.name: s for s in read_stages(path)}["builder"]
    assert installed_extras(builder) == IMAGE_EXTRAS[path.name]
    installed = distributions(IMAGE_EXTRAS[path.name])
    # Exactly one onnxruntime build: both wheels provide the `onnxruntime` package and overwrite each other.
    expected = "onnxruntime-gpu" if path.name == "Dockerfile.gpu" else "onnxruntime"
    assert installed & {"onnxruntime", "onnxruntime-gpu"} == {expected}, installed


def test_cpu_extra_is_the_gpu_extra_with_the_other_onnxruntime() -> None:
    # Existing `pip install vaeserve[serve]` users keep what they had; serve-cpu only swaps the runtime.
    assert distributions(["serve-cpu"]) - {"onnxruntime"} == distributions(["serve"]) - {"onnxruntime-gpu"}
    assert distributions(["serve-core"]) == distributions(["serve-cpu"]) - {"onnxruntime"}
