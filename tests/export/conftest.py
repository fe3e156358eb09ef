"""Checkpoints and exported versions for the export tests, all made by the real CLI on the bundled digits:
the shared MLP and conv runs and repositories, plus a short Gaussian-likelihood run of our own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="session")
def gaussian_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits-gaussian"
    run_cli("train", "--dataset", "digits", "--likelihood", "gaussian", "--latent-dim", "4", "--epochs", "5",
            "--seed", "0", "--no-report", "--out", str(out))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def checkpoints(digits_run: Path, digits_conv_run: Path, gaussian_run: Path) -> dict[str, Path]:
    """{"mlp" | "conv" | "gaussian": best.pt of a digits run}."""
    return {kind: run / "best.pt" for kind, run in (("mlp", digits_run), ("conv", digits_conv_run),
                                                    ("gaussian", gaussian_run))}  # fmt: skip


@pytest.fixture(scope="session")
def exported(
    model_repo: Path, conv_model_repo: Path, gaussian_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """{kind: REPO/vae/1} written by `vaeserve export` from `checkpoints[kind]`."""
    gaussian_repo = tmp_path_factory.mktemp("models-gaussian")
    run_cli("export", "--checkpoint", str(gaussian_run / "best.pt"), "--repo", str(gaussian_repo), "--name", "vae")
    return {"mlp": model_repo / "vae" / "1", "conv": conv_model_repo / "vae" / "1",
            "gaussian": gaussian_repo / "vae" / "1"}  # fmt: skip
