"""The training run's hyperparameters: one dataclass, the defaults `vaeserve train` shows. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, fields

from vaeserve.errors import VaeserveError

DATASETS = ("digits", "mnist", "fashion-mnist", "npz")


class TrainConfigError(VaeserveError):
    """A training flag with a value the run cannot use; the message names the flag."""


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data_dir: str | None = None
    data_url: str | None = None
    data_path: str | None = None
    val_fraction: float = 0.1  # held out of the training split for validation and best.pt
    # model
    arch: str = "mlp"
    latent_dim: int = 8
    hidden_dim: int = 0
    likelihood: str = "bernoulli"
    learn_variance: bool = True
    sigma: float = 0.1
    # objective
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0
    # optimization
    epochs: int = 50
    batch_size: int = 64  # global: split across ranks under torchrun
    lr: float = 3e-3
    seed: int = 0
    device: str = "auto"
    report: bool = True

    def check(self, world_size: int = 1) -> None:
        for name in ("epochs", "batch_size", "latent_dim"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "sigma"):
            if not getattr(self, name) > 0:
                raise TrainConfigError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta", "free_bits", "kl_warmup_epochs", "hidden_dim"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise TrainConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.batch_size % world_size:
            raise TrainConfigError(
                f"--batch-size {self.batch_size} is the global batch and must divide evenly over {world_size} ranks"
            )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
