"""`vaeserve train` and `vaeserve evaluate` through the real CLI on the bundled digits."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from vaeserve.cli import main as vaeserve
from vaeserve.training.config import BOUNDS

REPORT_FILES = {"samples.png", "reconstructions.png", "interpolation.png", "latent_pca.png", "loss_curves.png"}


def train(out: Path, *flags: str) -> Path:
    run_cli("train", "--out", str(out), "--no-report", *flags)
    return out


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)  # the checkpoint format promises plain types only


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """6 epochs with a KL warm-up, and the report."""
    out = tmp_path_factory.mktemp("runs") / "short"
    run_cli("train", "--out", str(out), "--epochs", "6", "--kl-warmup-epochs", "2", "--latent-dim", "4")
    return out


def test_run_directory_holds_checkpoints_config_metrics_and_report(short_run):
    assert {p.name for p in short_run.iterdir()} >= {"checkpoint.pt", "best.pt", "config.json", "metrics.jsonl"}
    config = json.loads((short_run / "config.json").read_text())
    assert config["epochs"] == 6 and config["kl_warmup_epochs"] == 2 and config["dataset"] == "digits"
    records = metrics(short_run)
    assert [r["epoch"] for r in records] == list(range(1, 7))
    assert records[0]["beta"] < 1.0 and records[0]["loss"] < records[0]["neg_elbo"]  # warm-up weighs the KL down
    assert records[-1]["beta"] == 1.0 and records[-1]["loss"] == pytest.approx(records[-1]["neg_elbo"])
    assert records[-1]["val_neg_elbo"] < records[0]["val_neg_elbo"]

    best, last = load(short_run / "best.pt"), load(short_run / "checkpoint.pt")
    assert last["epoch"] == 6 and best["dataset"] == {"name": "digits"}
    assert best["metrics"]["val_neg_elbo"] == min(r["val_neg_elbo"] for r in records)
    assert best["metrics"]["test_neg_elbo"] > 0
    assert best["model_config"]["latent_dim"] == 4 and best["train_config"]["seed"] == 0


def test_report_pngs_are_real_images(short_run):
    report = short_run / "report"
    assert {p.name for p in report.iterdir()} == REPORT_FILES
    for name in REPORT_FILES:
        with Image.open(report / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200, name
            darkest, brightest = image.convert("L").getextrema()
            assert brightest - darkest > 100, f"{name} is blank"


def test_evaluate_prints_one_json_object_of_sane_figures(short_run, capsys):
    args = ["evaluate", "--checkpoint", str(short_run / "best.pt"), "--iw-samples", "64"]
    run_cli(*args)
    result = json.loads(capsys.readouterr().out)
    assert {"neg_elbo", "reconstruction", "kl", "kl_per_dim", "active_units", "iw_nll", "iw_samples"} <= set(result)
    assert result["iw_samples"] == 64 and result["num_images"] == 360 and len(result["kl_per_dim"]) == 4
    assert result["kl"] == pytest.approx(sum(result["kl_per_dim"]), rel=1e-5)
    assert result["neg_elbo"] == pytest.approx(result["reconstruction"] + result["kl"], rel=1e-5)
    assert 0 <= result["active_units"] <= 4
    assert 0 < result["iw_nll"] <= result["neg_elbo"]
    assert result["neg_elbo"] == pytest.approx(load(short_run / "best.pt")["metrics"]["test_neg_elbo"])
    run_cli(*args)
    assert json.loads(capsys.readouterr().out) == result  # seeded


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = load(train(tmp_path / "a", "--epochs", "1") / "checkpoint.pt")
    b = load(train(tmp_path / "b", "--epochs", "1") / "checkpoint.pt")
    c = load(train(tmp_path / "c", "--epochs", "1", "--seed", "1") / "checkpoint.pt")
    assert_same_weights(a["model"], b["model"])
    assert not torch.equal(a["model"]["encoder.head.weight"], c["model"]["encoder.head.weight"])


def test_resume_continues_exactly(tmp_path):
    flags = ("--arch", "conv", "--latent-dim", "4", "--batch-size", "128")
    straight = train(tmp_path / "straight", "--epochs", "3", *flags)
    split = train(tmp_path / "split", "--epochs", "1", *flags)
    # --resume takes the recorded flags: these would change the run and must be ignored.
    train(split, "--resume", "--epochs", "3", "--lr", "1", "--arch", "mlp")
    for name in ("checkpoint.pt", "best.pt"):
        a, b = load(straight / name), load(split / name)
        assert a["epoch"] == b["epoch"]
        assert_same_weights(a["model"], b["model"])
        assert a["metrics"] == b["metrics"]
    assert_same_weights(load(straight / "checkpoint.pt")["rng"], load(split / "checkpoint.pt")["rng"])
    assert deterministic(metrics(straight)) == deterministic(metrics(split))


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    run = train(tmp_path / "run", "--epochs", "1")
    with (run / "metrics.jsonl").open("a") as f:  # as if the process died between the log and the next checkpoint
        f.write(json.dumps({"epoch": 2, "loss": 0.0}) + "\n")
    train(run, "--resume", "--epochs", "2")
    assert [r["epoch"] for r in metrics(run)] == [1, 2] and metrics(run)[1]["loss"] > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--val-fraction", "1.5"], "--val-fraction must be in"),
        (["--arch", "conv", "--dataset", "npz", "--data-path", "{tmp}/x.npz"], "x.npz: dataset file not found"),
        (["--resume"], "checkpoint.pt: checkpoint file not found"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert vaeserve(["train", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaeserve train: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("name", sorted(BOUNDS))
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e300", "12abc"])
def test_every_numeric_flag_out_of_range_is_an_error_naming_it(tmp_path, capsys, name, value):
    flag = "--" + name.replace("_", "-")
    try:
        code = vaeserve(["train", "--out", str(tmp_path / "run"), f"{flag}={value}"])
    except SystemExit as exc:  # argparse: not a number of the flag's type ("nan" for an integer flag)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # argparse prints its usage above its own errors
    ours, argparse_says = f"vaeserve train: error: {flag} must be ", f"vaeserve train: error: argument {flag}: "
    assert line.startswith((ours, argparse_says)), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["-1", "100001", "99999999999"])
def test_evaluate_bounds_its_importance_samples(tmp_path, capsys, value):
    assert vaeserve(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--iw-samples", value]) == 2
    assert capsys.readouterr().err == f"vaeserve evaluate: error: --iw-samples must be in [0, 100000], got {value}\n"


def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "best.pt"
    bogus.write_text("not a checkpoint")
    assert vaeserve(["evaluate", "--checkpoint", str(bogus)]) == 2
    assert f"{bogus}: not a checkpoint written by `vaeserve train`" in capsys.readouterr().err


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    train(tmp_path / "run", "--epochs", "2")  # under capsys stderr is not a terminal
    captured = capsys.readouterr()
    assert "%|" not in captured.err and "it/s" not in captured.err and "epoch 1/2" not in captured.err
    epoch_lines = [line for line in captured.out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2 and all("val neg-elbo" in line and "%|" not in line for line in epoch_lines)


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("VAESERVE_PROGRESS_EVERY", "0")  # bars are drawn after a second's work, or this: at once
    train(tmp_path / "run", "--epochs", "1")
    assert "epoch 1/1: " in terminal.getvalue() and "%|" in terminal.getvalue()
    assert "%|" not in capsys.readouterr().out


def test_plain_progress_lines_when_stderr_is_not_a_terminal_and_none_when_quiet(tmp_path, capsys):
    # --progress-every 0: a line per batch, so no wall-clock time decides what is printed.
    train(tmp_path / "run", "--epochs", "2", "--progress-every", "0")
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    line = re.compile(r"train: ([\d,]+)/([\d,]+) images \(\d+%\), [\d.,]+ images/s, ETA \d+:\d\d, epoch ([12]) of 2")
    matches = [line.fullmatch(text) for text in lines[:-1]]
    assert len(lines) > 2 and all(matches), lines
    done = [int(m[1].replace(",", "")) for m in matches]
    total = int(matches[0][2].replace(",", ""))
    assert done == sorted(done) and done[-1] == total and {m[3] for m in matches} == {"1", "2"}
    assert re.fullmatch(rf"train: {total:,} images in \d+:\d\d, [\d.,]+ images/s", lines[-1])
    assert len([text for text in captured.out.splitlines() if text.startswith("epoch")]) == 2  # the log as before
    train(tmp_path / "quiet", "--epochs", "2", "--progress-every", "0", "--quiet")
    captured = capsys.readouterr()
    assert captured.err == "" and "best epoch" in captured.out
