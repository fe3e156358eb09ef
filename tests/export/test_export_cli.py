"""`vaeserve export`: version numbering, refusal to overwrite, bad checkpoints, variants; nothing is left
under the repository when an export fails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vaeserve.cli import main as vaeserve
from vaeserve.export.variants import MAX_ELBO_CHANGE_PER_PIXEL
from vaeserve.repository import sha256_file, verify_version
from vaeserve.training.checkpoint import load_checkpoint, save_checkpoint


def export(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = vaeserve(["export", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_versions_increment_and_are_never_overwritten(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repo, ckpt = tmp_path / "models", str(checkpoints["mlp"])
    assert export(capsys, "--checkpoint", ckpt, "--repo", str(repo)) == (0, f"{repo}/vae/1\n", "")
    assert export(capsys, "--checkpoint", ckpt, "--repo", str(repo), "--version", "5")[:2] == (0, f"{repo}/vae/5\n")
    assert export(capsys, "--checkpoint", ckpt, "--repo", str(repo))[:2] == (0, f"{repo}/vae/6\n")
    before = {p: sha256_file(p) for p in (repo / "vae" / "5").iterdir()}
    code, _, err = export(capsys, "--checkpoint", ckpt, "--repo", str(repo), "--version", "5")
    assert code == 2 and f"{repo}/vae/5: version 5 already exists; versions are never overwritten" in err
    assert {p: sha256_file(p) for p in (repo / "vae" / "5").iterdir()} == before
    assert sorted(p.name for p in (repo / "vae").iterdir()) == ["1", "5", "6"]
    assert [verify_version(repo / "vae" / v).version for v in ("1", "5", "6")] == [1, 5, 6]
    # The same checkpoint gives the same bytes: a graph's hash identifies what it computes.
    for graph in ("encoder.onnx", "decoder.onnx"):
        assert sha256_file(repo / "vae" / "1" / graph) == sha256_file(repo / "vae" / "6" / graph)


def bad_checkpoints(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, what the error says about it)}"""
    (folder / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, folder / "foreign.pt")
    ckpt = load_checkpoint(good)
    save_checkpoint(folder / "incompatible.pt", {**ckpt, "model_config": {**ckpt["model_config"], "latent_dim": 3}})
    save_checkpoint(folder / "unknown-key.pt", {**ckpt, "model_config": {**ckpt["model_config"], "depth": 3}})
    nan_weights = {k: v.clone() for k, v in ckpt["model"].items()}
    nan_weights["decoder.net.2.bias"][0] = float("nan")
    save_checkpoint(folder / "nan.pt", {**ckpt, "model": nan_weights})
    return {
        "missing": (folder / "missing.pt", "checkpoint file not found"),
        "garbage": (folder / "garbage.pt", "not a checkpoint written by `vaeserve train`"),
        "foreign": (folder / "foreign.pt", "not a vaeserve checkpoint"),
        "incompatible": (folder / "incompatible.pt", "checkpoint does not match its model config"),
        "unknown-key": (folder / "unknown-key.pt", "unknown model config keys: ['depth']"),
        "nan": (folder / "nan.pt", "decoder.net.2.bias holds NaN or infinite values"),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "foreign", "incompatible", "unknown-key", "nan"])
def test_bad_checkpoint_is_one_error_and_writes_nothing(
    case: str, checkpoints: dict[str, Path], exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, message = bad_checkpoints(tmp_path, checkpoints["mlp"])[case]
    fresh = tmp_path / "fresh-repo"
    code, out, err = export(capsys, "--checkpoint", str(path), "--repo", str(fresh))
    assert (code, out) == (2, "")
    assert err.startswith(f"vaeserve export: error: {path}: ") and message in err and err.count("\n") == 1
    assert not fresh.exists()
    existing = exported["mlp"].parent.parent  # a repository that already holds vae/1
    before = tree(existing)
    assert export(capsys, "--checkpoint", str(path), "--repo", str(existing))[0] == 2
    assert tree(existing) == before


def test_failure_midway_removes_the_temporary_folder(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The variants need the test split; a checkpoint whose dataset is gone fails after the graphs exist."""
    ckpt = load_checkpoint(checkpoints["mlp"])
    moved = tmp_path / "moved.pt"
    save_checkpoint(moved, {**ckpt, "dataset": {"name": "npz", "data_path": str(tmp_path / "gone.npz")}})
    repo = tmp_path / "models"
    code, out, err = export(capsys, "--checkpoint", str(moved), "--repo", str(repo), "--variants", "int8")
    assert (code, out) == (2, "") and "gone.npz: dataset file not found" in err
    assert not repo.exists()


def test_checkpoint_without_test_elbo_records_unknown(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = load_checkpoint(checkpoints["mlp"])
    save_checkpoint(tmp_path / "early.pt", {**ckpt, "metrics": {"val_neg_elbo": 30.0}})
    code, out, _ = export(capsys, "--checkpoint", str(tmp_path / "early.pt"), "--repo", str(tmp_path / "models"))
    model = verify_version(out.strip())
    assert code == 0 and model.metadata["test_neg_elbo"] == "unknown" and model.info["test_neg_elbo"] is None


def test_repository_that_is_a_file_is_one_error(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "models").write_text("")
    code, _, err = export(capsys, "--checkpoint", str(checkpoints["mlp"]), "--repo", str(tmp_path / "models"))
    assert code == 2 and f"{tmp_path}/models/vae: cannot create a folder there" in err


def test_unknown_variant_and_bad_name_are_flag_errors(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt, repo = str(checkpoints["mlp"]), str(tmp_path / "models")
    code, _, err = export(capsys, "--checkpoint", ckpt, "--repo", repo, "--variants", "int4")
    assert code == 2 and "--variants: unknown ['int4']" in err
    code, _, err = export(capsys, "--checkpoint", ckpt, "--repo", repo, "--name", "../elsewhere")
    assert code == 2 and "--name '../elsewhere': must be a plain folder name" in err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("kind", ["mlp", "conv", "gaussian"])
def test_variants_are_measured_recorded_and_verified(
    kind: str, checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repo = tmp_path / "models"
    code, out, err = export(capsys, "--checkpoint", str(checkpoints[kind]), "--repo", str(repo),
                            "--variants", "ort,fp16,int8")  # fmt: skip
    assert code == 0, err
    folder = Path(out.strip())
    info = json.loads((folder / "model.json").read_text())
    measured = info["variant_measurements"]
    assert set(measured) == {"fp32", "ort", "fp16", "int8"}
    baseline = measured["fp32"]["test_neg_elbo_graphs"]
    assert baseline == pytest.approx(info["test_neg_elbo"], rel=0.05)  # one sample vs the trainer's own pass
    pixels = math.prod(info["image_shape"])
    for variant in ("ort", "fp16", "int8"):
        change = measured[variant]["test_neg_elbo_graphs"] - baseline
        assert measured[variant]["elbo_change_per_pixel"] == pytest.approx(change / pixels)
        written = (folder / f"encoder.{variant}.onnx").exists()
        assert written == (variant in info["variants"]) == (abs(change / pixels) < MAX_ELBO_CHANGE_PER_PIXEL)
        if written:
            entry = info["variants"][variant]
            assert abs(entry["elbo_change_per_pixel"]) < MAX_ELBO_CHANGE_PER_PIXEL
            for graph in ("encoder", "decoder"):
                assert entry[graph]["sha256"] == sha256_file(folder / f"{graph}.{variant}.onnx")
        else:
            assert f"variant {variant}: test ELBO changes by" in err
    assert "ort" in info["variants"]  # graph rewrites only: the same arithmetic up to float rounding
    verify_version(folder)
    # A variant is checked like the fp32 pair.
    variant = next(iter(info["variants"]))
    (folder / f"decoder.{variant}.onnx").write_bytes(b"")
    code, _, err = export(capsys, "--verify", str(folder))
    assert code == 2 and f"decoder.{variant}.onnx: SHA-256" in err
