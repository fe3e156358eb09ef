"""The benchmarks' real data: the MNIST test split in ../shared/data/mnist (or $MNIST_DIR), not shipped.

Its first 9,000 images train and its last 1,000 test, written as a keras-layout .npz for `--dataset npz`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tests.bench.report import ROOT
from vaeserve.training.data import IDX_FILES, read_idx

MNIST_DIR = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
N_TRAIN = 9000


def available() -> bool:
    return (MNIST_DIR / f"{IDX_FILES['test_images']}.gz").is_file()


def t10k() -> tuple[np.ndarray, np.ndarray]:
    """(images [10000, 28, 28] uint8, labels [10000])."""
    return read_idx(MNIST_DIR / f"{IDX_FILES['test_images']}.gz", 3), read_idx(
        MNIST_DIR / f"{IDX_FILES['test_labels']}.gz", 1
    )


def write_npz(path: Path) -> Path:
    """The split as `vaeserve train --dataset npz --data-path` reads it."""
    images, labels = t10k()
    np.savez(path, x_train=images[:N_TRAIN], x_test=images[N_TRAIN:], y_train=labels[:N_TRAIN],
             y_test=labels[N_TRAIN:])  # fmt: skip
    return path
