"""`vaeserve experiments` through the real CLI on a tiny budget: what it writes, not how good the models are."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from vaeserve.cli import main as vaeserve
from vaeserve.training.config import TrainConfig

BETAS = (0.0, 1.0, 4.0)
TINY = ("--epochs", "1", "--estimator-epochs", "2", "--gradient-draws", "4", "--samples", "64", "--pairs", "12",
        "--betas", *map(str, BETAS))  # fmt: skip
GENERATION_KEYS = {"sample_confidence", "sample_class_entropy", "aggregate_posterior_kl", "midpoint_confidence",
                   "interpolation_max_step", "interpolation_mean_step", "aggregate_posterior_mean_norm",
                   "aggregate_posterior_eigenvalues"}  # fmt: skip
FIGURES = {"beta_sweep", "samples", "interpolations", "latent_maps", "gradient_variance"}
EVEN_STEP = 1 / 15  # 16 frames


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> tuple[Path, str, str]:
    """(output folder, what the command printed, its progress on stderr: a line per update, --progress-every 0)."""
    out = tmp_path_factory.mktemp("experiments")
    printed, progress = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
        run_cli("experiments", "--out", str(out), *TINY, "--progress-every", "0")
    return out, printed.getvalue(), progress.getvalue()


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def assert_generation_figures(entry: dict, latent_dim: int, classes: int = 10) -> None:
    assert set(entry) >= GENERATION_KEYS
    for key in ("sample_confidence", "midpoint_confidence"):
        assert 1 / classes - 1e-9 <= entry[key] <= 1.0, key  # a top-class probability is at least 1/classes
    assert 0.0 <= entry["sample_class_entropy"] <= 1.0
    assert entry["aggregate_posterior_kl"] >= 0 and entry["aggregate_posterior_mean_norm"] >= 0
    eigenvalues = entry["aggregate_posterior_eigenvalues"]
    assert len(eigenvalues) == latent_dim and eigenvalues == sorted(eigenvalues, reverse=True)
    assert eigenvalues[-1] > -1e-9
    # The steps of a path add up to at least its end-to-end distance: the mean step is never under an even path's.
    assert entry["interpolation_mean_step"] >= EVEN_STEP - 1e-9
    assert entry["interpolation_max_step"] >= entry["interpolation_mean_step"]


def test_results_json_holds_the_documented_figures(experiments):
    out, *_ = experiments
    r = results(out)
    latent_dim = TrainConfig().latent_dim
    assert r["dataset"] == "digits" and r["seed"] == 0 and r["train_config"]["epochs"] == 1
    assert [e["beta"] for e in r["beta_sweep"]] == list(BETAS)
    for e in r["beta_sweep"]:
        assert_generation_figures(e, latent_dim)
        assert e["neg_elbo"] == pytest.approx(e["reconstruction"] + e["kl"], rel=1e-5)
        assert e["kl"] >= 0 and 0 <= e["active_units"] <= latent_dim and len(e["kl_per_dim"]) == latent_dim
        assert e["aggregate_posterior_kl_moment_matched"] >= 0
    ae = r["autoencoder"]
    assert_generation_figures(ae, latent_dim)
    assert ae["reconstruction"] > 0 and "kl" not in ae and "aggregate_posterior_kl_moment_matched" not in ae

    gv = r["gradient_variance"]
    for state in (gv, gv["at_initialization"]):
        assert min(state["reparameterization"], state["score_function"], state["score_function_baseline"]) > 0
        assert state["ratio"] == pytest.approx(state["score_function"] / state["reparameterization"])
        assert state["ratio_baseline"] == pytest.approx(state["score_function_baseline"] / state["reparameterization"])
    assert gv["draws"] == 4 and gv["encoder_parameters"] > 0
    for estimator in ("reparameterization", "score-function", "score-function-baseline"):
        curve = gv["training"][estimator]
        assert curve["epoch"] == [1, 2] and all(math.isfinite(v) for v in curve["val_neg_elbo"])

    reference = r["reference"]
    assert 0.5 < reference["classifier_test_accuracy"] <= 1 and 0 < reference["pixel_midpoint_confidence"] <= 1
    assert r["wall_seconds"] > 0


def test_every_run_is_kept_with_its_log(experiments):
    out, *_ = experiments
    names = {f"beta-{b:g}" for b in BETAS} | {"autoencoder"}
    names |= {f"estimator-{e}" for e in ("reparameterization", "score-function", "score-function-baseline")}
    assert {p.name for p in (out / "runs").iterdir()} == names
    for name in names:
        epochs = json.loads((out / "runs" / name / "config.json").read_text())["epochs"]
        assert epochs == (2 if name.startswith("estimator-") else 1)
        log = (out / "runs" / name / "train.log").read_text()
        assert f"epoch {epochs:3d}/{epochs}" in log and "%|" not in log
    config = json.loads((out / "runs" / "autoencoder" / "config.json").read_text())
    assert config["estimator"] == "deterministic" and config["beta"] == 0


def test_figures_are_real_pngs(experiments):
    out, *_ = experiments
    figures = results(out)["figures"]
    assert set(figures) == FIGURES
    for name, file in figures.items():
        with Image.open(out / file) as image:
            assert image.format == "PNG" and min(image.size) >= 300, name
            darkest, brightest = image.convert("L").getextrema()
            assert brightest - darkest > 100, f"{name} is blank"


def test_report_and_summary_state_the_run_s_numbers(experiments):
    out, printed, _ = experiments
    r = results(out)
    report = (out / "report.md").read_text()
    for heading in ("KL term regularizes", "reparameterization trick", "probabilistic latent space", "smooth"):
        assert heading in report
    beta_1 = r["beta_sweep"][1]
    row = f"| β = 1 | {beta_1['neg_elbo']:.2f} | {beta_1['reconstruction']:.2f} |"
    assert row in report and row in printed
    assert f"{r['autoencoder']['sample_confidence']:.2f}" in report
    assert str(out / "results.json") in printed


def test_progress_is_a_line_per_update_of_the_runs_and_of_each_run_when_not_a_terminal(experiments):
    _, printed, progress = experiments
    names = [f"beta-{b:g}" for b in BETAS] + ["autoencoder"]
    names += [f"estimator-{e}" for e in ("reparameterization", "score-function", "score-function-baseline")]
    lines = progress.splitlines()
    runs = [line for line in lines if line.startswith("experiments: ")]
    assert [line.split(" runs")[0] for line in runs[:-1]] == [f"experiments: {i}/7" for i in range(1, 8)]
    assert re.fullmatch(r"experiments: 7 runs in \d+:\d\d, [\d.]+ runs/s", runs[-1])
    for name in names:  # each training's lines are named after its run and end with its closing line
        own = [line for line in lines if line.startswith(f"{name}: ")]
        assert len(own) > 2 and re.fullmatch(rf"{name}: [\d,]+ images in \d+:\d\d, [\d.,]+ images/s", own[-1])
        assert f"{name}: " in printed  # and the one line per finished run on stdout, as before
    assert "%|" not in progress


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--betas", "0", "4"], "--betas must include 1"),
        (["--betas", "-1", "1"], "--betas must be one or more values in [0, 1e+06]"),
        (["--betas", "nan", "1"], "--betas must be one or more values in [0, 1e+06]"),
        (["--betas", "1", "inf"], "--betas must be one or more values in [0, 1e+06]"),
        (["--pairs", "99999999999"], "--pairs must be <= 10000"),
        (["--samples", "-5"], "--samples must be >= 1"),
        (["--estimator-epochs", "0"], "--estimator-epochs must be >= 1"),
        (["--gradient-draws", "10000000"], "--gradient-draws must be <= 100000"),
        (["--gradient-draws", "1"], "--gradient-draws must be >= 2"),
        (["--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    assert vaeserve(["experiments", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaeserve experiments: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_unlabelled_npz_is_refused_before_any_training(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "unlabelled.npz"
    np.savez(data, x_train=np.zeros((8, 8, 8), np.uint8), x_test=np.zeros((4, 8, 8), np.uint8))
    assert vaeserve(["experiments", "--dataset", "npz", "--data-path", str(data), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--dataset npz: the experiments' classifier needs labels" in err and not (tmp_path / "x").exists()
