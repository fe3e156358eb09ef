"""Dataset loading from real files: digits, IDX (gz/raw, downloaded from a loopback mirror), npz, and bad data."""

from __future__ import annotations

import gzip
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from vaeserve.cli import main as vaeserve
from vaeserve.training.data import IDX_FILES, DataError, dataset_spec, load_dataset

from .conftest import fake_mnist, idx_bytes, write_idx_dir


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_digits_is_a_fixed_stratified_split_in_unit_range():
    a, b = load_dataset({"name": "digits"}), load_dataset({"name": "digits"})
    assert a.train.shape[1:] == a.test.shape[1:] == (1, 8, 8)
    assert a.image_shape == (1, 8, 8)
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 360
    assert a.train.dtype == torch.float32 and a.train.min() >= 0.0 and a.train.max() == 1.0
    assert torch.equal(a.test, b.test) and torch.equal(a.test_labels, b.test_labels)
    # Stratified: every class keeps its share of the test split (36 each, within one image).
    counts = torch.bincount(a.test_labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_in_data_dir_load_without_network(tmp_path, gz):
    arrays = fake_mnist()
    write_idx_dir(tmp_path, arrays, gz=gz)
    splits = load_dataset(dataset_spec("mnist", data_dir=str(tmp_path), data_url="http://127.0.0.1:9/unused/"))
    assert splits.train.shape == (48, 1, 28, 28) and splits.test.shape == (16, 1, 28, 28)
    np.testing.assert_allclose(splits.train[:, 0].numpy(), arrays["train_images"] / 255.0, atol=1e-7)
    assert torch.equal(splits.test_labels, torch.from_numpy(arrays["test_labels"].astype(np.int64)))


def test_download_from_mirror_verifies_md5_and_caches(tmp_path, mirror):
    server, served = mirror
    paths = write_idx_dir(served, fake_mnist())
    cache = tmp_path / "cache"
    spec = {"name": "fashion-mnist", "data_dir": str(cache), "data_url": server.url,
            "md5": {p.name: md5_of(p) for p in paths.values()}}  # fmt: skip
    splits = load_dataset(spec)
    assert splits.train.shape == (48, 1, 28, 28)
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in paths.values())
    assert len(server.requests) == 4
    load_dataset(spec)  # now served from the cache
    assert len(server.requests) == 4


def test_checksum_mismatch_names_the_file_and_leaves_the_cache_clean(tmp_path, mirror):
    server, served = mirror
    write_idx_dir(served, fake_mnist())  # not the published MNIST files, so their MD5s cannot match
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*MD5"):
        load_dataset(dataset_spec("mnist", data_dir=str(cache), data_url=server.url))
    assert list(cache.iterdir()) == []


def test_cli_reports_a_failed_download_in_one_line(tmp_path, mirror, capsys):
    server, _ = mirror  # serves nothing: every file is a 404
    cache = tmp_path / "cache"
    code = vaeserve(["train", "--dataset", "mnist", "--data-dir", str(cache), "--data-url", server.url,
                     "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("vaeserve train: error: ") and "train-images-idx3-ubyte.gz" in err and "404" in err
    assert "Traceback" not in err and list(cache.iterdir()) == []


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: every connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"


@pytest.mark.parametrize("failure", ["refused", "404"])
def test_offline_download_error_says_what_to_do(tmp_path, mirror, refusing_url, capsys, failure):
    url = refusing_url if failure == "refused" else mirror[0].url
    cache = tmp_path / "cache"
    code = vaeserve(["train", "--dataset", "mnist", "--data-dir", str(cache), "--data-url", url,
                     "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot download {url}train-images-idx3-ubyte.gz" in err
    assert ("refused" if failure == "refused" else "404") in err
    for advice in ("--data-dir", "--data-url", "--dataset npz"):
        assert advice in err
    assert list(cache.iterdir()) == []


def test_cli_trains_on_idx_files(tmp_path):
    write_idx_dir(tmp_path / "data", fake_mnist(n_train=40, n_test=8))
    out = tmp_path / "run"
    run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
            "--batch-size", "16", "--no-report", "--out", str(out))  # fmt: skip
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["model_config"]["image_shape"] == [1, 28, 28]
    assert ckpt["dataset"] == {"name": "mnist", "data_dir": str((tmp_path / "data").resolve())}


@pytest.mark.parametrize(
    ("key", "data", "message"),
    [
        ("train_images", idx_bytes(np.zeros((4, 28, 28)), magic=0x0801), "wrong IDX magic"),
        ("train_images", idx_bytes(np.zeros((4, 28, 28)))[:-10], "header says"),
        ("train_labels", idx_bytes(np.zeros(47)), "47 labels for the 48 images"),
        ("test_images", b"\x00\x00", "too short"),
    ],
)
def test_malformed_idx_names_the_file(tmp_path, key, data, message):
    write_idx_dir(tmp_path, fake_mnist())
    bad = tmp_path / IDX_FILES[key]
    (tmp_path / f"{IDX_FILES[key]}.gz").unlink()
    bad.write_bytes(data)
    with pytest.raises(DataError, match=message) as info:
        load_dataset({"name": "mnist", "data_dir": str(tmp_path)})
    assert IDX_FILES[key] in str(info.value)


def test_corrupt_gzip_names_the_file(tmp_path):
    write_idx_dir(tmp_path, fake_mnist())
    bad = tmp_path / f"{IDX_FILES['test_labels']}.gz"
    bad.write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(DataError, match=str(bad)):
        load_dataset({"name": "mnist", "data_dir": str(tmp_path)})


def test_npz_uint8_and_float_layouts(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    x_train = rng.integers(0, 256, (20, 12, 12), dtype=np.uint8)
    np.savez(path, x_train=x_train, x_test=x_train[:4], y_train=np.arange(20), y_test=np.arange(4))
    splits = load_dataset(dataset_spec("npz", data_path=str(path)))
    assert splits.train.shape == (20, 1, 12, 12) and splits.train.max() <= 1.0
    assert splits.train_labels.tolist() == list(range(20))

    x = rng.random((6, 3, 8, 8), dtype=np.float32)
    np.savez(path, x_train=x, x_test=x[:2])
    splits = load_dataset({"name": "npz", "data_path": str(path)})
    assert splits.image_shape == (3, 8, 8) and splits.test_labels is None
    assert torch.equal(splits.train, torch.from_numpy(x))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 8, 8), np.uint8)}, "no 'x_test' array"),
        ({"x_train": np.zeros((4, 8, 8), np.int32), "x_test": np.zeros((2, 8, 8), np.uint8)}, "dtype int32"),
        ({"x_train": np.full((4, 8, 8), 2.0), "x_test": np.zeros((2, 8, 8))}, r"in \[0, 1\]"),
        ({"x_train": np.zeros((4, 64)), "x_test": np.zeros((2, 64))}, "must be"),
        ({"x_train": np.zeros((4, 8, 8)), "x_test": np.zeros((2, 6, 6))}, "x_test are"),
        ({"x_train": np.zeros((4, 8, 8)), "x_test": np.zeros((2, 8, 8)), "y_train": np.arange(3)}, "3 labels"),
    ],
)
def test_bad_npz_names_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset({"name": "npz", "data_path": str(path)})
    assert str(path) in str(info.value)


def test_missing_npz_is_a_one_line_cli_error(tmp_path, capsys):
    missing = tmp_path / "nope.npz"
    code = vaeserve(["train", "--dataset", "npz", "--data-path", str(missing), "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"vaeserve train: error: {missing}: dataset file not found"
