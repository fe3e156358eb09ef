"""Checkpoints and exported versions for the export tests, all made by the real CLI on the bundled digits:
the shared MLP, conv and Gaussian-likelihood runs and repositories (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def checkpoints(digits_run: Path, digits_conv_run: Path, gaussian_run: Path) -> dict[str, Path]:
    """{"mlp" | "conv" | "gaussian": best.pt of a digits run}."""
    return {kind: run / "best.pt" for kind, run in (("mlp", digits_run), ("conv", digits_conv_run),
                                                    ("gaussian", gaussian_run))}  # fmt: skip


@pytest.fixture(scope="session")
def exported(model_repo: Path, conv_model_repo: Path, gaussian_model_repo: Path) -> dict[str, Path]:
    """{kind: REPO/vae/1} written by `vaeserve export` from `checkpoints[kind]`."""
    return {"mlp": model_repo / "vae" / "1", "conv": conv_model_repo / "vae" / "1",
            "gaussian": gaussian_model_repo / "vae" / "1"}  # fmt: skip
