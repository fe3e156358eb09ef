"""`--dataset folder`: pictures of every kind a user has, converted as the client converts, a recorded split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_cli
from tests.shapes import write_shapes
from vaeserve.cli import main as vaeserve
from vaeserve.client.images import read_images
from vaeserve.training.data import DataError, dataset_spec, load_dataset

rng = np.random.default_rng(0)


def noise(height: int, width: int, channels: int) -> np.ndarray:
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return pixels[..., 0] if channels == 1 else pixels


def mixed_folder(root: Path) -> dict[str, list[str]]:
    """Readable pictures of every kind (grey, RGBA, CMYK, palette, huge, tiny, WebP, nested) and broken ones."""
    good = {
        "grey/a.png": Image.fromarray(noise(20, 30, 1), "L"),
        "grey/b.jpg": Image.fromarray(noise(40, 40, 1), "L"),
        "rgba/a.png": Image.fromarray(noise(16, 16, 4), "RGBA"),
        "rgba/b.webp": Image.fromarray(noise(24, 12, 4), "RGBA"),
        "cmyk/a.jpg": Image.fromarray(noise(32, 32, 3), "RGB").convert("CMYK"),
        "cmyk/b.jpeg": Image.fromarray(noise(10, 50, 3), "RGB").convert("CMYK"),
        "huge/a.jpg": Image.new("RGB", (3000, 2000), (200, 30, 90)),
        "huge/b.png": Image.new("RGB", (2048, 1536), (10, 200, 90)),
        "tiny/a.png": Image.fromarray(noise(1, 1, 3), "RGB"),
        "tiny/b.PNG": Image.fromarray(noise(2, 3, 3), "RGB"),
        "palette/a.png": Image.fromarray(noise(20, 20, 3), "RGB").convert("P"),
        "palette/deep/b.png": Image.fromarray(noise(20, 20, 3), "RGB").convert("P"),
    }
    for i in range(24):  # enough for a train, validation and test split whatever the path hashes say
        good[f"rgb/{i:02d}.png"] = Image.fromarray(noise(12, 12, 3), "RGB")
    for name, image in good.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    truncated = (root / "rgb/00.png").read_bytes()[:60]
    broken = {"broken/random.png": rng.bytes(300), "broken/truncated.png": truncated, "broken/empty.jpg": b"",
              "broken/text.webp": b"not a picture"}  # fmt: skip
    for name, data in broken.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not a picture: left out by its suffix")
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".hidden/thumb.png")
    return {"good": sorted(good), "broken": sorted(broken)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("pictures")
    return root, mixed_folder(root)


def test_every_kind_of_picture_is_converted_by_the_client_code_and_broken_ones_skipped(folder, capfd):
    root, names = folder
    splits = load_dataset(dataset_spec("folder", data_path=str(root), image_size=16, channels=3))
    err = capfd.readouterr().err
    assert f"skipped {len(names['broken'])} of {len(names['good']) + len(names['broken'])} pictures" in err
    for name in names["broken"]:
        assert str(root / name) in err
    assert splits.files is not None
    listed = splits.files["train"] + splits.files["test"]
    assert sorted(listed) == names["good"]  # no broken, hidden or non-picture files
    assert splits.train.dtype == torch.uint8 and splits.train.shape[1:] == (3, 16, 16)
    assert splits.test.dtype == torch.float32 and splits.test.shape[1:] == (3, 16, 16)
    # Exactly what the client sends a model, to the uint8 the wire carries.
    for images, files in ((splits.train.float() / 255, splits.files["train"]), (splits.test, splits.files["test"])):
        expected, _ = read_images([root / f for f in files], (3, 16, 16))
        np.testing.assert_array_equal((images.numpy() * 255).round(), np.rint(expected * 255))
    # Subfolders are labels, sorted by name.
    classes = sorted({f.split("/")[0] for f in listed})
    expected_labels = [classes.index(f.split("/")[0]) for f in splits.files["test"]]
    assert splits.test_labels.tolist() == expected_labels


def test_grey_models_get_grey_pictures(folder):
    root, _ = folder
    splits = load_dataset(dataset_spec("folder", data_path=str(root), image_size=8, channels=1))
    assert splits.image_shape == (1, 8, 8)


def test_the_split_is_deterministic_and_stable_when_pictures_are_added(tmp_path):
    write_shapes(tmp_path, 60, size=16)
    spec = dataset_spec("folder", data_path=str(tmp_path), image_size=16, channels=3)
    a, b = load_dataset(spec), load_dataset(spec)
    assert a.files == b.files and torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert 0 < len(a.files["test"]) < len(a.files["train"])
    write_shapes(tmp_path / "more", 40, size=16, seed=1)
    c = load_dataset(spec)
    assert set(a.files["test"]) <= set(c.files["test"]) and set(a.files["train"]) <= set(c.files["train"])


def test_a_memory_mapped_folder_trains_the_same_weights(tmp_path):
    write_shapes(tmp_path / "data", 60, size=16)
    flags = ("--dataset", "folder", "--data-path", str(tmp_path / "data"), "--image-size", "16", "--epochs", "1",
             "--batch-size", "16", "--latent-dim", "2", "--no-report")  # fmt: skip
    run_cli("train", *flags, "--out", str(tmp_path / "memory"))
    run_cli("train", *flags, "--memory-mb", "0", "--out", str(tmp_path / "mapped"))
    a, b = (torch.load(tmp_path / run / "best.pt", weights_only=True) for run in ("memory", "mapped"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["dataset"] == {"name": "folder", "data_path": str((tmp_path / "data").resolve()), "image_size": 16,
                            "channels": 3}  # fmt: skip
    split = json.loads((tmp_path / "memory" / "split.json").read_text())
    assert split == json.loads((tmp_path / "mapped" / "split.json").read_text())
    files = split["train"] + split["val"] + split["test"]
    assert len(files) == len(set(files)) == 60


def test_cli_trains_and_evaluates_on_a_folder_of_mixed_pictures(folder, tmp_path, capsys):
    root, _ = folder
    out = tmp_path / "run"
    run_cli("train", "--dataset", "folder", "--data-path", str(root), "--image-size", "16", "--channels", "3",
            "--epochs", "2", "--batch-size", "8", "--no-report", "--out", str(out))  # fmt: skip
    captured = capsys.readouterr()
    assert "training conv VAE" in captured.out and "[3, 16, 16]" in captured.out
    run_cli("evaluate", "--checkpoint", str(out / "best.pt"), "--iw-samples", "4")
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "folder" and result["num_images"] == len(
        json.loads((out / "split.json").read_text())["test"]
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "holds no pictures"),
        (lambda root: (root / "a.png").write_bytes(b"broken"), "none of its 1 pictures can be read"),
        (lambda root: (root / "notes.txt").write_text("x"), "holds no pictures"),
    ],
)
def test_a_folder_without_readable_pictures_is_a_one_line_error(tmp_path, capsys, make, message):
    root = tmp_path / "empty"
    root.mkdir()
    make(root)
    code = vaeserve(["train", "--dataset", "folder", "--data-path", str(root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith(f"vaeserve train: error: {root}: ") and message in err[-1]
    assert not (tmp_path / "run").exists()


def test_missing_folder_and_missing_flag_are_errors(tmp_path, capsys):
    assert vaeserve(["train", "--dataset", "folder", "--data-path", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: not a folder of pictures" in capsys.readouterr().err
    assert vaeserve(["train", "--dataset", "folder"]) == 2
    assert "--dataset folder needs --data-path DIR" in capsys.readouterr().err
    with pytest.raises(DataError, match="holds no pictures"):
        load_dataset(dataset_spec("folder", data_path=str(tmp_path), image_size=16, channels=1))


@pytest.mark.parametrize("value", ["0", "2", "4", "-1", "nan", "1e300", "rgb"])
def test_channels_must_be_1_or_3(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        vaeserve(["train", "--dataset", "folder", "--data-path", str(tmp_path), "--channels", value])
    assert info.value.code == 2
    assert "argument --channels: invalid" in capsys.readouterr().err
