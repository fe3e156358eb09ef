"""`vaeserve serve --variant`: every graph pair `vaeserve export --variants` writes is served, reported and
verified alone; a variant the version lacks is refused with a message that says which ones it has."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import run_cli
from tests.harness import free_port, serve_argv, serving
from vaeserve.client.api import VaeClient


@pytest.fixture(scope="module")
def variants_version(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """REPO/vae/1 exported from the digits MLP run with every variant export can build."""
    repo = tmp_path_factory.mktemp("models-variants")
    run_cli("export", "--checkpoint", str(digits_run / "best.pt"), "--repo", str(repo), "--name", "vae",
            "--variants", "ort,fp16,int8")  # fmt: skip
    return repo / "vae" / "1"


def written(version: Path) -> list[str]:
    return ["plain", *json.loads((version / "model.json").read_text())["variants"]]


def test_every_written_variant_is_served_and_reported(variants_version: Path, tmp_path: Path) -> None:
    variants = written(variants_version)
    assert "ort" in variants  # graph rewrites only: export always keeps it
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((5, 8), dtype=np.float32)
    images = rng.random((5, 1, 8, 8), dtype=np.float32)
    for variant in variants:
        suffix = "" if variant == "plain" else f".{variant}"
        reference = {graph: ort.InferenceSession(str(variants_version / f"{graph}{suffix}.onnx"),
                                                 providers=["CPUExecutionProvider"])
                     for graph in ("encoder", "decoder")}  # fmt: skip
        with (
            serving(variants_version.parents[1], tmp_path / f"{variant}.log", "--variant", variant) as server,
            VaeClient(server.target) as client,
        ):
            info = client.info()
            decoded = client.decode(latents)
            mean, log_variance, _ = client.encode(images, seed=0)
            series = [line for line in server.metrics().splitlines() if line.startswith("vaeserve_model_info{")]
        assert info.variant == variant
        assert len(series) == 1 and f'variant="{variant}"' in series[0]
        assert f"({variant} graphs)" in server.output()
        np.testing.assert_allclose(decoded, reference["decoder"].run(None, {"latent": latents})[0], atol=1e-5)
        expected_mean, expected_log_variance = reference["encoder"].run(None, {"image": images})
        np.testing.assert_allclose(mean, expected_mean, atol=1e-5)
        np.testing.assert_allclose(log_variance, expected_log_variance, atol=1e-5)


def serve_fails(repo: Path, *flags: str) -> subprocess.CompletedProcess:
    argv = serve_argv(repo, *flags, port=free_port(), metrics_port=0)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_start_up_verifies_only_the_variant_it_serves(variants_version: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(variants_version, repo / "vae" / "1")
    (repo / "vae" / "1" / "decoder.ort.onnx").write_bytes(b"damaged")
    with serving(repo, tmp_path / "plain.log") as server, VaeClient(server.target) as client:
        assert client.info().variant == "plain"  # the damaged ort pair is not its business
    result = serve_fails(repo, "--variant", "ort")
    assert result.returncode == 2 and "decoder.ort.onnx: SHA-256" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_variant_the_version_lacks_is_refused_clearly(model_repo: Path) -> None:
    result = serve_fails(model_repo, "--variant", "int8")
    assert result.returncode == 2
    assert "version 1 has no 'int8' variant (it has: plain; `vaeserve export --variants` builds them)" in result.stderr
    result = serve_fails(model_repo, "--variant", "int4")
    assert result.returncode == 2 and "--variant: invalid choice: 'int4'" in result.stderr
