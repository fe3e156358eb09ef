"""The client commands (`vaeserve sample|encode|reconstruct|info`) against a real server, writing real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.harness import ServerProcess, free_port
from vaeserve.cli import main as vaeserve


@pytest.fixture
def digits_png(tmp_path: Path) -> list[Path]:
    """Three 8x8 greyscale PNGs."""
    paths = []
    for i in range(3):
        pixels = (np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_sample_writes_a_png_grid_and_the_seeds_latents(server: ServerProcess, tmp_path: Path) -> None:
    out, latents = tmp_path / "samples.png", tmp_path / "latents.npy"
    run_cli("sample", "--target", server.target, "--n", "16", "--seed", "0", "--out", str(out),
            "--latents-out", str(latents), "--scale", "2")  # fmt: skip
    grid = Image.open(out)
    assert grid.mode == "L" and grid.size == (2 * (4 * 9 + 1), 2 * (4 * 9 + 1))  # 4x4 tiles of 8 px, 1 px gaps
    expected = np.random.Generator(np.random.PCG64(0)).standard_normal((16, 8), dtype=np.float32)
    assert np.load(latents).tobytes() == expected.tobytes()


def test_encode_reads_png_and_npy_and_writes_embeddings(
    server: ServerProcess, tmp_path: Path, digits_png: list[Path]
) -> None:
    stack = np.random.default_rng(5).random((2, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "two.npy", stack)
    out = tmp_path / "embeddings.npy"
    run_cli("encode", "--target", server.target, *map(str, digits_png), str(tmp_path / "two.npy"), "--out", str(out))
    mean = np.load(out)
    assert mean.shape == (5, 8) and mean.dtype == np.float32

    everything = tmp_path / "all.npz"
    run_cli("encode", "--target", server.target, str(digits_png[0]), "--seed", "1", "--out", str(everything))
    with np.load(everything) as f:
        assert {k: f[k].shape for k in f.files} == {"mean": (1, 8), "log_variance": (1, 8), "latents": (1, 8)}
        np.testing.assert_allclose(f["mean"], mean[:1], atol=1e-6)


def test_reconstruct_writes_originals_beside_reconstructions(
    server: ServerProcess, tmp_path: Path, digits_png: list[Path]
) -> None:
    out = tmp_path / "recon.png"
    run_cli("reconstruct", "--target", server.target, *map(str, digits_png), "--out", str(out), "--scale", "1")
    assert Image.open(out).size == (6 * 9 + 1, 9 + 1)  # one row of three (original, reconstruction) pairs


def test_info_prints_the_model_as_json(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli("info", "--target", server.target)
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "vae" and info["version"] == 1 and info["image_shape"] == [1, 8, 8]
    assert info["execution_provider"] == "CPUExecutionProvider" and "latent_dim" in info["metadata"]


def test_client_errors_are_one_line(server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(big)
    assert vaeserve(["encode", "--target", server.target, str(big)]) == 2
    assert f"{big}: expected 8x8 pixels (model image_shape [1, 8, 8]), got 28x28" in capsys.readouterr().err

    assert vaeserve(["sample", "--target", server.target, "--n", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "INVALID_ARGUMENT: num_samples: expected 1 <= num_samples" in capsys.readouterr().err

    nobody = f"127.0.0.1:{free_port()}"
    assert vaeserve(["info", "--target", nobody, "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vaeserve info: error: {nobody}: ") and "Traceback" not in err
