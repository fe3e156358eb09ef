"""Datasets as float32 tensors [N, C, H, W] in [0, 1], train and test splits.

`load_dataset(spec)` takes the dict a checkpoint stores under "dataset", so a run, `vaeserve evaluate` and the
export's parity checks all rebuild the same test split from it:
    {"name": "digits"}                                   scikit-learn's bundled 8x8 digits, fixed stratified split
    {"name": "mnist" | "fashion-mnist", "data_dir": D}   the standard IDX files (gz or raw) in D; missing ones are
                                                         downloaded from "data_url" (optional) with MD5 checks
    {"name": "npz", "data_path": F}                      keras' mnist.npz layout: x_train, x_test, y_train?, y_test?
    {"name": "folder", "data_path": D, "image_size": S,  every PNG/JPEG/WebP under D as C x S x S (training/folder.py);
     "channels": C}                                      its training split is uint8, possibly memory-mapped
Every problem with the data raises `DataError` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaeserve.errors import VaeserveError

from .config import DATASETS, DEFAULT_MEMORY_MB
from .folder import load_folder

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

# The published files and their MD5s (the same lists torchvision checks against).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEFAULT_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
PUBLISHED_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3-D images / 1-D labels
OFFLINE_HINT = (
    "Offline? Put the four IDX files (gz or raw) in --data-dir, name a reachable mirror with --data-url, "
    "or train on a local file with --dataset npz --data-path FILE.npz"
)


class DataError(VaeserveError):
    """A dataset file that is missing, malformed or fails its checksum; the message names the file."""


@dataclass
class Splits:
    name: str
    train: torch.Tensor  # float32 [N, C, H, W] in [0, 1], or uint8 (a folder's pictures; `as_float` converts)
    test: torch.Tensor  # float32
    train_labels: torch.Tensor | None  # int64 [N]
    test_labels: torch.Tensor | None
    files: dict[str, list[str]] | None = None  # a folder's split: relative paths of its "train" and "test" pictures

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 pixels scaled, float ones as they are."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def default_cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vaeserve" / name


def dataset_spec(
    name: str,
    data_dir: str | None = None,
    data_url: str | None = None,
    data_path: str | None = None,
    image_size: int = 64,
    channels: int = 3,
) -> dict:
    """The checkpoint's "dataset" entry for these flags, with absolute paths so it loads from any directory."""
    if name not in DATASETS:
        raise DataError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if name == "digits":
        return {"name": name}
    if name == "npz":
        if not data_path:
            raise DataError("--dataset npz needs --data-path FILE.npz")
        return {"name": name, "data_path": str(Path(data_path).resolve())}
    if name == "folder":
        if not data_path:
            raise DataError("--dataset folder needs --data-path DIR")
        return {"name": name, "data_path": str(Path(data_path).resolve()), "image_size": image_size,
                "channels": channels}  # fmt: skip
    spec = {"name": name, "data_dir": str(Path(data_dir or default_cache_dir(name)).resolve())}
    if data_url:
        spec["data_url"] = data_url
    return spec


def load_dataset(spec: dict, memory_mb: int = DEFAULT_MEMORY_MB) -> Splits:
    """memory_mb: how much of a folder's decoded pictures stay in memory (the rest is memory-mapped)."""
    name = spec.get("name")
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion-mnist"):
        return load_idx_dataset(name, Path(spec["data_dir"]), spec.get("data_url"), spec.get("md5"))
    if name == "npz":
        return load_npz(Path(spec["data_path"]))
    if name == "folder":
        return load_folder(spec, memory_mb)
    raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


def load_digits() -> Splits:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # grey levels 0..16 -> [0, 1], [N, 1, 8, 8]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=DIGITS_TEST_FRACTION, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    return Splits("digits", torch.from_numpy(x_train), torch.from_numpy(x_test),
                  torch.from_numpy(y_train).long(), torch.from_numpy(y_test).long())  # fmt: skip


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------------------------


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed or raw) as a uint8 array, checked against its header."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # OSError includes gzip.BadGzipFile; EOFError: truncated gzip
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[ndim]:
        raise DataError(f"{path}: wrong IDX magic 0x{magic:08x}, expected 0x{IDX_MAGIC[ndim]:08x}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None) -> None:
    """Fetch into a temp file beside `dest`, verify, then rename: an interrupted or bad download leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        if md5 is not None and (actual := md5sum(tmp)) != md5:
            raise DataError(f"{dest}: MD5 {actual} of the download from {url} does not match the expected {md5}")
        os.replace(tmp, dest)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:  # the network, not this machine
        raise DataError(f"{dest}: cannot download {url} ({exc}). {OFFLINE_HINT}") from exc
    except OSError as exc:
        raise DataError(f"{dest}: cannot download {url} ({exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)


def idx_file(name: str, stem: str, data_dir: Path, data_url: str | None, md5: dict | None) -> Path:
    """The raw or gz file for `stem` in `data_dir`, downloading the gz when neither is there."""
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    gz = f"{stem}.gz"
    base = data_url or DEFAULT_URLS[name]
    expected = (md5 or PUBLISHED_MD5[name]).get(gz)
    download(base.rstrip("/") + "/" + gz, data_dir / gz, expected)
    return data_dir / gz


def load_idx_dataset(name: str, data_dir: Path, data_url: str | None = None, md5: dict | None = None) -> Splits:
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = idx_file(name, stem, data_dir, data_url, md5)
        arrays[key] = (path, read_idx(path, 3 if key.endswith("images") else 1))
    for split in ("train", "test"):
        (image_path, images), (label_path, labels) = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(f"{label_path}: {len(labels)} labels for the {len(images)} images in {image_path}")
    return Splits(
        name,
        to_images(arrays["train_images"][1]),
        to_images(arrays["test_images"][1]),
        torch.from_numpy(arrays["train_labels"][1].astype(np.int64)),
        torch.from_numpy(arrays["test_labels"][1].astype(np.int64)),
    )


def to_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] or [N, C, H, W] -> float32 [N, C, H, W] in [0, 1]."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    return x.unsqueeze(1) if x.dim() == 3 else x


# --- npz (keras' mnist.npz layout) -----------------------------------------------------------------------------


def load_npz(path: Path) -> Splits:
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    images = {split: npz_images(path, arrays, f"x_{split}") for split in ("train", "test")}
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise DataError(
            f"{path}: x_train images are {list(images['train'].shape[1:])} but x_test are "
            f"{list(images['test'].shape[1:])}"
        )
    labels = {split: npz_labels(path, arrays, split, len(images[split])) for split in ("train", "test")}
    return Splits("npz", images["train"], images["test"], labels["train"], labels["test"])


def npz_images(path: Path, arrays: dict, key: str) -> torch.Tensor:
    if key not in arrays:
        raise DataError(f"{path}: no {key!r} array (found {sorted(arrays)})")
    x = arrays[key]
    if x.ndim not in (3, 4) or len(x) == 0:
        raise DataError(f"{path}: {key} must be [N, H, W] or [N, C, H, W] with N > 0, got shape {list(x.shape)}")
    if x.dtype == np.uint8:
        return to_images(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: {key} has dtype {x.dtype}; expected uint8 (0-255) or float in [0, 1]")
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise DataError(f"{path}: float {key} must lie in [0, 1], got [{np.nanmin(x):g}, {np.nanmax(x):g}]")
    t = torch.from_numpy(x.astype(np.float32))
    return t.unsqueeze(1) if t.dim() == 3 else t


def npz_labels(path: Path, arrays: dict, split: str, count: int) -> torch.Tensor | None:
    key = f"y_{split}"
    if key not in arrays:
        return None
    y = arrays[key]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} must be a 1-D integer array, got {y.dtype} {list(y.shape)}")
    if len(y) != count:
        raise DataError(f"{path}: {key} has {len(y)} labels for {count} images in x_{split}")
    return torch.from_numpy(y.astype(np.int64))
