"""Registers `vaeserve train` and `vaeserve evaluate`; torch is imported only when one of them runs."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from .config import DATASETS, TrainConfig

DEFAULT_OUT = "runs/default"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write checkpoints, metrics and a report",
        description="Train a VAE. Runs the same under `torchrun --nproc-per-node N` (DDP); "
        "--batch-size is then the global batch.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="training data (default: %(default)s)")
    data.add_argument(
        "--data-dir",
        help="folder of the MNIST/Fashion-MNIST IDX files, gz or raw; missing files are "
        "downloaded into it (default: ~/.cache/vaeserve/DATASET)",
    )
    data.add_argument("--data-url", help="base URL to download missing IDX files from (default: the public mirror)")
    data.add_argument("--data-path", help="the .npz file for --dataset npz (default: %(default)s)")
    data.add_argument(
        "--val-fraction", type=float, help="share of the training split held out for validation (default: %(default)s)"
    )
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
    objective = p.add_argument_group("objective")
    objective.add_argument("--beta", type=float, help="weight of the KL term (default: %(default)s)")
    objective.add_argument(
        "--kl-warmup-epochs", type=int, help="ramp beta linearly from 0 over this many epochs (default: %(default)s)"
    )
    objective.add_argument(
        "--free-bits", type=float, help="per-dimension KL floor in nats (Kingma et al. 2016) (default: %(default)s)"
    )
    optim = p.add_argument_group("optimization")
    optim.add_argument(
        "--epochs", type=int, help="epochs in total; with --resume, the total to reach (default: %(default)s)"
    )
    optim.add_argument("--batch-size", type=int, help="global batch size (default: %(default)s)")
    optim.add_argument("--lr", type=float, help="Adam learning rate (default: %(default)s)")
    optim.add_argument("--seed", type=int, help="seed of every random choice (default: %(default)s)")
    optim.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="auto = cuda when available (default: %(default)s)"
    )
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
    # The defaults live in TrainConfig alone; the parser shows them.
    p.set_defaults(run=run_train, **{f.name: f.default for f in fields(TrainConfig)})

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
        help="importance samples K for the IWAE bound, 0 to skip it (default: %(default)s)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise (default: %(default)s)")
    e.set_defaults(run=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    train(cfg, args.out, resume=args.resume)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from vaeserve.errors import VaeserveError

    from .checkpoint import load_model
    from .data import load_dataset
    from .evaluate import evaluate

    if args.iw_samples < 0:
        raise VaeserveError(f"--iw-samples must be >= 0, got {args.iw_samples}")
    model, ckpt = load_model(args.checkpoint)
    if "dataset" not in ckpt:
        raise VaeserveError(f"{args.checkpoint}: checkpoint records no dataset to evaluate on")
    images = load_dataset(ckpt["dataset"]).test
    result = {"checkpoint": str(args.checkpoint), "dataset": ckpt["dataset"]["name"], "epoch": ckpt.get("epoch")}
    result.update(evaluate(model, images, args.iw_samples, args.seed))
    print(json.dumps(result))
    return 0
