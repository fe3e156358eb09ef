"""The training run's hyperparameters: one dataclass, the defaults `vaeserve train` shows. Imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from vaeserve.errors import VaeserveError

DATASETS = ("digits", "mnist", "fashion-mnist", "npz", "folder")
CHANNELS = (1, 3)  # --dataset folder: grey or RGB
# A folder's decoded pictures (uint8) held in memory up to this many MB; a bigger folder is memory-mapped from a
# temporary file, so a run's own memory stays near its test and validation splits (float32) whatever its size.
DEFAULT_MEMORY_MB = 2048
# How the reconstruction term's gradient reaches the encoder through z ~ q(z|x): training/estimators.py.
ESTIMATORS = ("reparameterization", "score-function", "score-function-baseline", "deterministic")


class TrainConfigError(VaeserveError):
    """A training flag with a value the run cannot use; the message names the flag."""


# [low, high] of each numeric flag: outside them a run cannot work, or could not finish on any machine.
BOUNDS = {
    "image_size": (4, 1024),
    "memory_mb": (0, 1 << 20),
    "latent_dim": (1, 4096),
    "hidden_dim": (0, 1 << 16),
    "sigma": (0.0, 1e3),  # and > 0
    "beta": (0.0, 1e6),
    "kl_warmup_epochs": (0, 1_000_000),
    "free_bits": (0.0, 1e3),
    "epochs": (1, 1_000_000),
    "batch_size": (1, 1 << 16),
    "lr": (0.0, 10.0),  # and > 0
    "seed": (0, (1 << 63) - 1),
}
EXPERIMENT_BOUNDS = {
    "estimator_epochs": (1, 1_000_000),
    "gradient_draws": (2, 100_000),
    "samples": (1, 100_000),
    "pairs": (1, 10_000),
}


def check_bounds(config: object, bounds: dict[str, tuple[float, float]]) -> None:
    """Every numeric flag of `config` finite and within its bounds, or a TrainConfigError naming the flag."""
    for name, (low, high) in bounds.items():
        value, flag = getattr(config, name), "--" + name.replace("_", "-")
        if not math.isfinite(value):
            raise TrainConfigError(f"{flag} must be a finite number, got {value}")
        if value < low:
            raise TrainConfigError(f"{flag} must be >= {low:g}, got {value}")
        if value > high:
            raise TrainConfigError(f"{flag} must be <= {high:g}, got {value}")


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    data_url: str | None = None
    data_path: str | None = None
    val_fraction: float = 0.1  # held out of the training split for validation and best.pt
    image_size: int = 64  # --dataset folder: pictures resized to image_size x image_size, aspect ratio kept
    channels: int = 3
    memory_mb: int = DEFAULT_MEMORY_MB
    # model: `vaeserve experiments` and tests/bench/bench_default_model.py show why these (README, BENCHMARKS.md)
    arch: str = "conv"  # its samples and midpoints look like digits far more often than the MLP's
    latent_dim: int = 8
    hidden_dim: int = 0
    # A Gaussian p(x|z) with a fixed sigma: learned, sigma shrinks until the posterior is too narrow for the prior's
    # samples to land where the decoder was trained; Bernoulli on grey values leaves posteriors so wide that
    # reconstructions from a sampled z often change class. 0.25 balances the two.
    likelihood: str = "gaussian"
    learn_variance: bool = False
    sigma: float = 0.25
    # objective
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0
    estimator: str = "reparameterization"
    # optimization
    epochs: int = 300  # ~30 s on 2 CPU cores for the digits; samples sharpen until ~300
    batch_size: int = 128  # global: split across ranks under torchrun; 128 keeps 2 CPU cores busier than 64
    lr: float = 3e-3
    seed: int = 0
    device: str = "auto"
    report: bool = True

    def check(self, world_size: int = 1) -> None:
        check_bounds(self, BOUNDS)
        for name in ("lr", "sigma"):
            if not getattr(self, name) > 0:
                raise TrainConfigError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.channels not in CHANNELS:
            raise TrainConfigError(f"--channels must be one of {', '.join(map(str, CHANNELS))}, got {self.channels}")
        if not 0 < self.val_fraction < 1:
            raise TrainConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.estimator not in ESTIMATORS:
            raise TrainConfigError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.estimator.startswith("score-function") and world_size > 1:
            raise TrainConfigError(f"--estimator {self.estimator} runs in one process, not {world_size} ranks")
        if self.batch_size % world_size:
            raise TrainConfigError(
                f"--batch-size {self.batch_size} is the global batch and must divide evenly over {world_size} ranks"
            )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ExperimentConfig:
    """`vaeserve experiments`: every run shares `base`'s data, network and budget; the rest says what is measured."""

    base: TrainConfig = field(default_factory=TrainConfig)
    betas: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0, 4.0)
    estimator_epochs: int = 30  # enough to show the estimators apart, a few seconds each
    gradient_draws: int = 200
    samples: int = 2000  # prior samples decoded and classified per model
    pairs: int = 200  # different-class test pairs: midpoints and interpolation paths

    def check(self) -> None:
        self.base.check()
        if not self.betas or not all(math.isfinite(b) and 0 <= b <= BOUNDS["beta"][1] for b in self.betas):
            raise TrainConfigError(f"--betas must be one or more values in [0, {BOUNDS['beta'][1]:g}], got "
                                   f"{list(self.betas)}")  # fmt: skip
        if 1.0 not in self.betas:
            raise TrainConfigError(f"--betas must include 1 (the gradient variance is measured on that model), got "
                                   f"{list(self.betas)}")  # fmt: skip
        check_bounds(self, EXPERIMENT_BOUNDS)
