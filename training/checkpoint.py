"""Checkpoint files: weights plus everything needed to rebuild, resume and describe the model.

Only tensors, dicts, lists and plain scalars go in, so `torch.load(path, weights_only=True)` reads them.
Keys:
    format, format_version  identify the file
    model_config            ModelConfig.to_dict()
    model                   the VAE's state_dict
    train_config            every training flag (dict), so --resume and evaluate know the run
    dataset                 {"name": ..., plus what rebuilds its test split}
    epoch                   epochs completed
    optimizer               the optimizer's state_dict (absent in exported-only files)
    rng                     RNG states for an exact resume
    metrics                 {"val_neg_elbo": float, "test_neg_elbo": float | None, ...}
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from vaeserve.errors import VaeserveError

from .model import VAE, ModelConfig

FORMAT = "vaeserve-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(VaeserveError):
    """A checkpoint file that is missing, unreadable or not ours; the message names the file."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash mid-save never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before failing on them
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        # torch's own message is a page of advice (including loading untrusted pickles); one line is enough.
        raise CheckpointError(
            f"{path}: not a checkpoint written by `vaeserve train` (torch.load with weights_only=True "
            f"failed: {type(exc).__name__})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vaeserve checkpoint (no format={FORMAT!r} marker)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {ckpt.get('format_version')} is not supported "
            f"(this vaeserve reads {FORMAT_VERSION})"
        )
    for key in ("model_config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return ckpt


def load_model(path: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE a checkpoint describes, in eval mode; errors name the file."""
    ckpt = load_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        model = VAE(cfg)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())  # load_state_dict lists each mismatch on its own line
        raise CheckpointError(f"{path}: checkpoint does not match its model config: {detail}") from exc
    return model.eval(), ckpt
