"""Registers `vaeserve train`, `evaluate` and `experiments`; torch is imported only when one of them runs."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from vaeserve.progress import add_progress_flags

from .config import CHANNELS, DATASETS, ESTIMATORS, ExperimentConfig, TrainConfig

DEFAULT_OUT = "runs/default"
DEFAULT_EXPERIMENTS_OUT = "runs/experiments"

MAX_IW_SAMPLES = 100_000  # the bound tightens little past a few thousand; this many already takes hours


def register(sub: argparse._SubParsersAction) -> None:
    register_train(sub)
    register_evaluate(sub)
    register_experiments(sub)


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write checkpoints, metrics and a report",
        description="Train a VAE. Runs the same under `torchrun --nproc-per-node N` (DDP); "
        "--batch-size is then the global batch.",
    )
    add_data_flags(p)
    add_model_flags(p)
    add_objective_flags(p)
    add_optimization_flags(p, epochs_help="epochs in total; with --resume, the total to reach")
    p.add_argument("--out", default=DEFAULT_OUT, help="run directory (default: %(default)s)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT/checkpoint.pt exactly, with its recorded flags (default: %(default)s)",
    )
    p.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        help="write OUT/report/*.png at the end (default: %(default)s)",
    )
    add_progress_flags(p)
    # The defaults live in TrainConfig alone; the parser shows them.
    p.set_defaults(run=run_train, **train_defaults())


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="score a checkpoint on its test split, as JSON on stdout",
        description="Print neg-ELBO, its terms, active units and the importance-weighted NLL of "
        "a checkpoint on its dataset's test split, in nats per image.",
    )
    e.add_argument("--checkpoint", required=True, help="a checkpoint.pt or best.pt (required)")
    e.add_argument(
        "--iw-samples",
        type=int,
        default=1000,
        help=f"importance samples K for the IWAE bound, at most {MAX_IW_SAMPLES:,}; 0 skips it (default: %(default)s)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise (default: %(default)s)")
    e.set_defaults(run=run_evaluate)


def register_experiments(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser(
        "experiments",
        help="measure what the KL term, the reparameterization and a probabilistic latent space do",
        description="Train a beta sweep, a deterministic autoencoder and the gradient estimators on the same "
        "network and budget (the `vaeserve train` defaults unless given), then write results.json, report.md "
        "and figures into --out and print a summary table.",
    )
    add_data_flags(x)
    add_model_flags(x)
    add_optimization_flags(x, epochs_help="epochs of each beta-sweep and autoencoder training")
    add_experiment_flags(x)
    x.add_argument("--out", default=DEFAULT_EXPERIMENTS_OUT, help="output directory (default: %(default)s)")
    add_progress_flags(x)
    x.set_defaults(run=run_experiments, **train_defaults())


def add_data_flags(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="training data (default: %(default)s)")
    data.add_argument(
        "--data-dir",
        help="folder of the MNIST/Fashion-MNIST IDX files, gz or raw; missing files are "
        "downloaded into it (default: ~/.cache/vaeserve/DATASET)",
    )
    data.add_argument("--data-url", help="base URL to download missing IDX files from (default: the public mirror)")
    data.add_argument(
        "--data-path",
        help="the .npz file for --dataset npz, or the folder of PNG/JPEG/WebP pictures (searched recursively; "
        "subfolder names are labels for reports) for --dataset folder (default: %(default)s)",
    )
    data.add_argument(
        "--image-size",
        type=int,
        help="--dataset folder: pictures resized to SIZE x SIZE, aspect ratio kept, as the client does "
        "(default: %(default)s)",
    )
    data.add_argument(
        "--channels", type=int, choices=CHANNELS, help="--dataset folder: 1 grey, 3 RGB (default: %(default)s)"
    )
    data.add_argument(
        "--memory-mb",
        type=int,
        help="--dataset folder: decoded pictures (uint8) kept in memory up to this size; a bigger folder is "
        "memory-mapped from a temporary file and read per batch (default: %(default)s)",
    )
    data.add_argument(
        "--val-fraction", type=float, help="share of the training split held out for validation (default: %(default)s)"
    )


def add_model_flags(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model")
    model.add_argument("--arch", choices=("mlp", "conv"), help="network (default: %(default)s)")
    model.add_argument("--latent-dim", type=int, help="latent dimensions (default: %(default)s)")
    model.add_argument(
        "--hidden-dim", type=int, help="hidden layer width, 0 = sized from the image (default: %(default)s)"
    )
    model.add_argument(
        "--likelihood", choices=("bernoulli", "gaussian"), help="p(x|z) on the grey values (default: %(default)s)"
    )
    model.add_argument(
        "--learn-variance",
        action=argparse.BooleanOptionalAction,
        help="gaussian: learn one pixel sigma, starting at --sigma (default: %(default)s)",
    )
    model.add_argument(
        "--sigma", type=float, help="gaussian: the fixed (or initial) pixel sigma (default: %(default)s)"
    )


def add_objective_flags(p: argparse.ArgumentParser) -> None:
    objective = p.add_argument_group("objective")
    objective.add_argument("--beta", type=float, help="weight of the KL term (default: %(default)s)")
    objective.add_argument(
        "--kl-warmup-epochs", type=int, help="ramp beta linearly from 0 over this many epochs (default: %(default)s)"
    )
    objective.add_argument(
        "--free-bits", type=float, help="per-dimension KL floor in nats (Kingma et al. 2016) (default: %(default)s)"
    )
    objective.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        help="gradient of the reconstruction term through z ~ q(z|x): reparameterization, score-function "
        "(REINFORCE, with or without a baseline; one process), or deterministic (z = mean, no sampling; with "
        "--beta 0 an autoencoder) (default: %(default)s)",
    )


def add_optimization_flags(p: argparse.ArgumentParser, epochs_help: str) -> None:
    optim = p.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, help=f"{epochs_help} (default: %(default)s)")
    optim.add_argument("--batch-size", type=int, help="global batch size (default: %(default)s)")
    optim.add_argument("--lr", type=float, help="Adam learning rate (default: %(default)s)")
    optim.add_argument("--seed", type=int, help="seed of every random choice (default: %(default)s)")
    optim.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="auto = cuda when available (default: %(default)s)"
    )


def add_experiment_flags(p: argparse.ArgumentParser) -> None:
    defaults = ExperimentConfig()
    group = p.add_argument_group("experiments")
    group.add_argument(
        "--betas",
        type=float,
        nargs="+",
        default=list(defaults.betas),
        help="KL weights of the sweep (default: %(default)s)",
    )
    group.add_argument(
        "--estimator-epochs",
        type=int,
        default=defaults.estimator_epochs,
        help="epochs trained with each gradient estimator (default: %(default)s)",
    )
    group.add_argument(
        "--gradient-draws",
        type=int,
        default=defaults.gradient_draws,
        help="noise draws over which each estimator's gradient variance is measured (default: %(default)s)",
    )
    group.add_argument(
        "--samples",
        type=int,
        default=defaults.samples,
        help="prior samples decoded and classified per model (default: %(default)s)",
    )
    group.add_argument(
        "--pairs",
        type=int,
        default=defaults.pairs,
        help="different-class test pairs for midpoints and interpolations (default: %(default)s)",
    )


def train_defaults() -> dict:
    return {f.name: f.default for f in fields(TrainConfig)}


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def run_train(args: argparse.Namespace) -> int:
    from vaeserve.progress import Progress

    from .train import train

    train(train_config(args), args.out, resume=args.resume, progress=Progress.from_args(args))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from vaeserve.errors import VaeserveError

    from .checkpoint import load_model
    from .data import load_dataset
    from .evaluate import evaluate

    if not 0 <= args.iw_samples <= MAX_IW_SAMPLES:
        raise VaeserveError(f"--iw-samples must be in [0, {MAX_IW_SAMPLES}], got {args.iw_samples}")
    model, ckpt = load_model(args.checkpoint)
    if "dataset" not in ckpt:
        raise VaeserveError(f"{args.checkpoint}: checkpoint records no dataset to evaluate on")
    images = load_dataset(ckpt["dataset"]).test
    result = {"checkpoint": str(args.checkpoint), "dataset": ckpt["dataset"]["name"], "epoch": ckpt.get("epoch")}
    result.update(evaluate(model, images, args.iw_samples, args.seed))
    print(json.dumps(result))
    return 0


def run_experiments(args: argparse.Namespace) -> int:
    from vaeserve.progress import Progress

    from .experiments import run_experiments as run

    cfg = ExperimentConfig(
        base=train_config(args), betas=tuple(args.betas), estimator_epochs=args.estimator_epochs,
        gradient_draws=args.gradient_draws, samples=args.samples, pairs=args.pairs,
    )  # fmt: skip
    run(cfg, args.out, Progress.from_args(args))
    return 0
