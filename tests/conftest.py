"""Fixtures shared across the suite: a small real digits run, the model repository exported from it, a plain
`vaeserve serve` of it shared by the whole session (`default_server`), and one with small limits per module with a
client, for the server and client tests (tests/harness.py starts them; directories with servers of other settings
define their own `server`).

They go through the real CLI (`vaeserve.cli.main`), so every test downstream stands on what a user runs.
Session-scoped: trained and exported once per `pytest` run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServerProcess, serving
from vaeserve.cli import main as vaeserve
from vaeserve.client.api import VaeClient

FIXTURE_EPOCHS = "15"
# The shared runs are the Bernoulli digits models the export and server tests were written against (the Gaussian
# likelihood has its own run below), pinned so a change of `vaeserve train`'s defaults
# leaves them as they were.
FIXTURE_FLAGS = ("--likelihood", "bernoulli", "--batch-size", "64")


def run_cli(*argv: str) -> None:
    code = vaeserve(list(argv))
    assert code == 0, f"vaeserve {' '.join(argv)} exited {code}"


def _export(tmp_path_factory: pytest.TempPathFactory, run: Path, folder: str) -> Path:
    """A model repository holding vae/1 exported from `run`'s best.pt."""
    repo = tmp_path_factory.mktemp(folder)
    run_cli("export", "--checkpoint", str(run / "best.pt"), "--repo", str(repo), "--name", "vae")
    return repo


def _train(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    out = tmp_path_factory.mktemp("runs") / f"digits-{arch}"
    run_cli("train", "--dataset", "digits", "--arch", arch, "--epochs", FIXTURE_EPOCHS, "--seed", "0",
            *FIXTURE_FLAGS, "--out", str(out))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/NAME of a short MLP training on the bundled digits."""
    return _train(tmp_path_factory, "mlp")


@pytest.fixture(scope="session")
def digits_conv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/NAME of a short conv training on the bundled digits."""
    return _train(tmp_path_factory, "conv")


@pytest.fixture(scope="session")
def model_repo(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding vae/1 exported from `digits_run` (MLP)."""
    return _export(tmp_path_factory, digits_run, "models")


@pytest.fixture(scope="session")
def conv_model_repo(digits_conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding vae/1 exported from `digits_conv_run` (conv)."""
    return _export(tmp_path_factory, digits_conv_run, "models-conv")


@pytest.fixture(scope="session")
def gaussian_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/NAME of a short Gaussian-likelihood conv training (latent 4) on the bundled digits."""
    out = tmp_path_factory.mktemp("runs") / "digits-gaussian"
    run_cli("train", "--dataset", "digits", "--arch", "conv", "--likelihood", "gaussian", "--latent-dim", "4",
            "--epochs", "5", "--seed", "0", "--no-report", "--out", str(out))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def gaussian_model_repo(gaussian_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding vae/1 exported from `gaussian_run`."""
    return _export(tmp_path_factory, gaussian_run, "models-gaussian")


@pytest.fixture(scope="session")
def default_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A plain `vaeserve serve` of `model_repo` (default flags), started once and shared by every module that needs
    nothing else of it. Its tests must not depend on a fresh server: no metric counted from zero (compare scrapes
    before and after), no reliance on its admission or drain state, no signals; those start their own."""
    with serving(model_repo, tmp_path_factory.mktemp("default-server") / "serve.log") as s:
        yield s
    assert s.returncode == 0, s.output()


# The shared server: small limits so the limit cases are cheap to provoke.
MAX_NUM_SAMPLES = 512
MAX_MESSAGE_MB = 1


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    flags = (
        "--max-batch-size",
        "32",
        "--max-num-samples",
        str(MAX_NUM_SAMPLES),
        "--max-message-mb",
        str(MAX_MESSAGE_MB),
    )
    with serving(model_repo, log, *flags) as s:
        yield s
    assert s.returncode == 0, s.output()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[VaeClient]:
    with VaeClient(server.target, timeout=30) as c:
        yield c
