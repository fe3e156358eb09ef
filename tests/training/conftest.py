"""Builders of real dataset files (IDX, gz or raw; npz) and a loopback HTTP mirror for the download tests."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from vaeserve.training.data import IDX_FILES


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: magic (0x0000 08 NDIM unless given), big-endian dims, the data."""
    magic = magic if magic is not None else 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fake_mnist(n_train: int = 48, n_test: int = 16, size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images and labels under the keys of `IDX_FILES`."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_dir(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, array in arrays.items():
        data = idx_bytes(array)
        path = folder / (IDX_FILES[key] + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[key] = path
    return paths


class Mirror:
    """A threaded HTTP server on 127.0.0.1 serving one folder; `url` is its base URL."""

    def __init__(self, folder: Path) -> None:
        handler = partial(QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.requests: list[str] = []
        self.server.requests = self.requests
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # record requests instead of printing them
        self.server.requests.append(self.path)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Mirror, Path]]:
    """A loopback mirror and the folder it serves (empty: the test writes the files it needs)."""
    served = tmp_path / "served"
    served.mkdir()
    with Mirror(served) as m:
        yield m, served
