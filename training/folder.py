"""A folder of pictures as a dataset: every PNG, JPEG and WebP under it, converted exactly as the client converts.

    {"name": "folder", "data_path": DIR, "image_size": S, "channels": C}

Each picture goes through the client's `read_file` (channels, transparency, aspect ratio kept, resized to S x S), so
a model sees in training what `vaeserve encode` and the explorer send it. The pictures are decoded once, in
DataLoader workers, into uint8 [N, C, S, S] (what travels on the wire to the server, a quarter of float32): in
memory up to `memory_mb`, above it in a memory-mapped temporary file whose pages the OS reads in per batch and
drops under pressure. Unreadable pictures are reported by name and skipped with a count before training starts.

The test split is the pictures whose relative path hashes into TEST_PERCENT of 100 buckets: deterministic on any
machine and stable when pictures are added or removed (the others keep their split). Subfolder names are the
labels (reports and metrics only) when every picture lies in one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vaeserve.client.images import ImageError, read_file

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TEST_PERCENT = 10
DECODE_BATCH = 64  # pictures per worker task: enough to amortize the inter-process transfer
MAX_NAMED = 20  # skipped pictures named in the report; the rest are counted


def scan(root: Path) -> list[Path]:
    """Every picture under `root`, recursively, sorted by path (hidden files and folders left out)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def in_test_split(relative: str) -> bool:
    return int(hashlib.sha256(relative.encode()).hexdigest()[:8], 16) % 100 < TEST_PERCENT


class Pictures(Dataset):
    """Picture i as uint8 [C, S, S], or the reason it cannot be read."""

    def __init__(self, files: list[Path], image_shape: tuple[int, int, int]) -> None:
        self.files, self.image_shape = files, image_shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray | str:
        try:
            pixels, _ = read_file(self.files[i], self.image_shape, hint_invert=False)
        except ImageError as exc:
            return str(exc)
        return np.rint(pixels[0] * 255.0).astype(np.uint8)


def decode_workers(count: int) -> int:
    """No worker processes for a few pictures (starting them costs more than decoding); up to 4 otherwise."""
    return 0 if count < 4 * DECODE_BATCH else min(4, os.cpu_count() or 1)


def pixel_storage(shape: tuple[int, ...], memory_mb: int) -> np.ndarray:
    """uint8 storage of `shape`: in memory up to `memory_mb`, else a memory map of an unlinked temporary file."""
    if int(np.prod(shape)) <= memory_mb << 20:
        return np.empty(shape, np.uint8)
    with tempfile.NamedTemporaryFile(prefix="vaeserve-pictures-") as f:
        return np.memmap(f.name, np.uint8, "w+", shape=shape)  # the mapping outlives the name


def load_folder(spec: dict, memory_mb: int):
    """The folder's Splits: train uint8 (possibly memory-mapped), test float32, labels from subfolder names."""
    from .data import DataError, Splits

    root = Path(spec["data_path"])
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of pictures")
    files = scan(root)
    if not files:
        raise DataError(f"{root}: holds no pictures ({', '.join(SUFFIXES)}, searched recursively)")
    relative = [p.relative_to(root).as_posix() for p in files]
    test = [in_test_split(r) for r in relative]
    order = [i for i in range(len(files)) if not test[i]] + [i for i in range(len(files)) if test[i]]
    c, s = spec["channels"], spec["image_size"]
    storage = pixel_storage((len(files), c, s, s), memory_mb)
    kept, skipped = [], []
    loader = DataLoader(Pictures([files[i] for i in order], (c, s, s)), batch_size=DECODE_BATCH,
                        num_workers=decode_workers(len(files)), collate_fn=list)  # fmt: skip
    decoded = (result for results in loader for result in results)  # in `order`
    for i, result in zip(order, decoded, strict=True):
        if isinstance(result, str):
            skipped.append(result)
        else:
            storage[len(kept)] = result
            kept.append(i)
    report_skipped(root, skipped, len(files))
    if not kept:
        raise DataError(f"{root}: none of its {len(files)} pictures can be read")
    n_train = sum(not test[i] for i in kept)
    if n_train == 0 or n_train == len(kept):
        raise DataError(f"{root}: {len(kept)} readable pictures are too few for a train and a test split")
    labels = folder_labels([relative[i] for i in kept])
    images = torch.from_numpy(storage[: len(kept)])
    return Splits(
        "folder",
        images[:n_train],
        images[n_train:].float() / 255.0,
        None if labels is None else labels[:n_train],
        None if labels is None else labels[n_train:],
        files={"train": [relative[i] for i in kept[:n_train]], "test": [relative[i] for i in kept[n_train:]]},
    )


def folder_labels(relative: list[str]) -> torch.Tensor | None:
    """The index of each picture's top subfolder among the sorted subfolder names; None when any lies at the top."""
    if any("/" not in r for r in relative):
        return None
    names = [r.split("/", 1)[0] for r in relative]
    classes = {name: k for k, name in enumerate(sorted(set(names)))}
    return torch.tensor([classes[n] for n in names])


def report_skipped(root: Path, skipped: list[str], total: int) -> None:
    if not skipped:
        return
    more = len(skipped) - MAX_NAMED
    named = "; ".join(skipped[:MAX_NAMED]) + (f"; and {more} more" if more > 0 else "")
    print(f"vaeserve: skipped {len(skipped)} of {total} pictures under {root} that cannot be read: {named}",
          file=sys.stderr, flush=True)  # fmt: skip
