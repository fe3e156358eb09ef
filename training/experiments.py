"""`vaeserve experiments`: a VAE's four claims, measured on one network and one budget.

    beta_sweep         one run per --betas value; each scored by `evaluate` (the ELBO's terms at beta = 1, active
                       units) and by `latent_metrics.score_latent_space` (samples, aggregate posterior, midpoints,
                       interpolations)
    autoencoder        the same network with no sampling and no KL (`--estimator deterministic --beta 0`)
    gradient_variance  for the trained beta = 1 model and for the initial weights, on one batch: the variance over
                       noise draws of the encoder's gradient with the reparameterized and the score-function
                       estimators; and --estimator-epochs of training with each
Every run goes through `train()` into OUT/runs/NAME (its log in train.log there), seeded with --seed, and is scored
with its final weights, so every model gets the same budget. OUT gets results.json, report.md and the figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression

from vaeserve.progress import Progress

from .checkpoint import load_model
from .config import ExperimentConfig, TrainConfig
from .data import DataError, Splits, as_float, dataset_spec, load_dataset
from .estimators import SAMPLING_ESTIMATORS, gradient_variance
from .evaluate import evaluate
from .experiment_figures import write_figures
from .experiment_report import summary_table, write_report_md
from .latent_metrics import fit_classifier, reference_scores, score_latent_space
from .model import VAE
from .train import model_config, read_metrics, train

SWEEP_KEYS = ("neg_elbo", "reconstruction", "kl", "kl_per_dim", "active_units")


def run_name(beta: float) -> str:
    return f"beta-{beta:g}"


def planned_runs(cfg: ExperimentConfig) -> dict[str, TrainConfig]:
    """Every training the experiments need, by run name: all share the base flags and seed."""
    base = replace(cfg.base, report=False)
    runs = {run_name(beta): replace(base, beta=beta) for beta in cfg.betas}
    runs["autoencoder"] = replace(base, beta=0.0, estimator="deterministic")
    for estimator in SAMPLING_ESTIMATORS:
        runs[f"estimator-{estimator}"] = replace(base, beta=1.0, estimator=estimator, epochs=cfg.estimator_epochs)
    return runs


def run_experiments(cfg: ExperimentConfig, out: str | Path, progress: Progress | None = None) -> dict:
    """Train, score, draw and write everything into `out`; returns the results.json content. progress: how the
    trainings show theirs (default: Progress())."""
    cfg.check()
    out, base, started = Path(out), cfg.base, time.perf_counter()
    spec = dataset_spec(base.dataset, base.data_dir, base.data_url, base.data_path, base.image_size, base.channels)
    splits = load_dataset(spec, base.memory_mb)
    if splits.train_labels is None or splits.test_labels is None:
        raise DataError(f"--dataset {base.dataset}: the experiments' classifier needs labels (y_train and y_test)")
    out.mkdir(parents=True, exist_ok=True)
    models = train_all(planned_runs(cfg), out / "runs", progress or Progress())
    classifier = fit_classifier(as_float(splits.train), splits.train_labels, base.seed)
    scores, arrays = score_models(cfg, splits, models, classifier)
    results = {
        "dataset": splits.name,
        "seed": base.seed,
        "seeds": "--seed drives every run's initialization, shuffling and noise, the classifier's training subset, "
        "the prior samples, the test pairs and the gradient draws",
        "train_config": asdict(base),
        "experiment_config": {k: v for k, v in asdict(cfg).items() if k != "base"},
        "reference": reference_scores(classifier, splits.test, splits.test_labels, cfg.pairs, base.seed),
        **scores,
        "gradient_variance": measure_gradients(cfg, splits, models[run_name(1.0)], out / "runs"),
    }
    results["figures"] = write_figures(results, arrays, splits.test_labels.numpy(), out)
    results["wall_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report_md(results, out / "report.md")
    print(summary_table(results), flush=True)
    print(f"results: {out / 'results.json'}, report: {out / 'report.md'}", flush=True)
    return results


def score_models(
    cfg: ExperimentConfig, splits: Splits, models: dict[str, VAE], classifier: LogisticRegression
) -> tuple[dict, dict[str, dict]]:
    """({"beta_sweep": [...], "autoencoder": {...}}, the arrays each model's figures draw, by run name)."""
    seed, arrays = cfg.base.seed, {}

    def score(name: str, deterministic: bool = False) -> dict:
        metrics, arrays[name] = score_latent_space(models[name], splits.test, splits.test_labels, classifier,
                                                   cfg.samples, cfg.pairs, seed, deterministic)  # fmt: skip
        return metrics

    beta_sweep = []
    for beta in cfg.betas:
        figures = evaluate(models[run_name(beta)], splits.test, iw_samples=0, seed=seed)
        beta_sweep.append({"beta": beta, **{k: figures[k] for k in SWEEP_KEYS}, **score(run_name(beta))})
    figures = evaluate(models["autoencoder"], splits.test, iw_samples=0, seed=seed, sample=False)
    autoencoder = {"reconstruction": figures["reconstruction"], "active_units": figures["active_units"],
                   **score("autoencoder", deterministic=True)}  # fmt: skip
    return {"beta_sweep": beta_sweep, "autoencoder": autoencoder}, arrays


def train_all(runs: dict[str, TrainConfig], folder: Path, progress: Progress) -> dict[str, VAE]:
    """Train each run into folder/NAME (its log in train.log) and return its final weights by name.

    On a terminal a bar over the runs, each run's own bars beneath it; otherwise each run's progress lines (named
    after the run) and one line per finished run on stdout."""
    models = {}
    with progress.meter(len(runs), "experiments", "runs") as bar:
        for name, cfg in runs.items():
            bar.set_postfix_str(name)
            run_dir = folder / name
            run_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            with (run_dir / "train.log").open("w") as log:
                train(cfg, run_dir, log=log, progress=progress, label=name)
            if progress.mode() != "bar":
                print(f"{name}: {cfg.epochs} epochs in {time.perf_counter() - started:.0f} s -> {run_dir}", flush=True)
            bar.update()
            models[name], _ = load_model(run_dir / "checkpoint.pt")
    return models


def measure_gradients(cfg: ExperimentConfig, splits: Splits, trained: VAE, runs: Path) -> dict:
    """The estimators' gradient variance on the trained beta = 1 model and at initialization (the weights every
    run starts from), on the training split's first batch; and the estimator runs' validation curves."""
    base = cfg.base
    torch.manual_seed(base.seed)  # as train() does before building the model: the same initial weights
    initial = VAE(model_config(base, splits.image_shape))
    batch = as_float(splits.train[: base.batch_size])
    states = {"trained": gradient_variance(trained.cpu(), batch, cfg.gradient_draws, base.seed),
              "at_initialization": gradient_variance(initial, batch, cfg.gradient_draws, base.seed)}  # fmt: skip

    def summary(variances: dict) -> dict:
        reparam = variances["reparameterization"]["variance"]
        return {
            "reparameterization": reparam,
            "score_function": variances["score-function"]["variance"],
            "score_function_baseline": variances["score-function-baseline"]["variance"],
            "ratio": variances["score-function"]["variance"] / reparam,
            "ratio_baseline": variances["score-function-baseline"]["variance"] / reparam,
            "mean_gradient_norm2": {k: v["mean_gradient_norm2"] for k, v in variances.items()},
        }

    curves = {}
    for estimator in SAMPLING_ESTIMATORS:
        history = read_metrics(runs / f"estimator-{estimator}" / "metrics.jsonl")
        curves[estimator] = {key: [m[key] for m in history] for key in ("epoch", "neg_elbo", "val_neg_elbo")}
    return {
        **summary(states["trained"]),
        "state": "the beta = 1 sweep model after training",
        "at_initialization": summary(states["at_initialization"]),
        "draws": cfg.gradient_draws,
        "batch_size": len(batch),
        "encoder_parameters": sum(p.numel() for p in initial.encoder.parameters()),
        "training": curves,
    }
