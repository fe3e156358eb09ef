"""The client commands (`vaeserve sample|encode|decode|reconstruct|score|interpolate|info`) against a real server,
writing real files."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MAX_NUM_SAMPLES, run_cli
from tests.harness import ServerProcess, free_port
from vaeserve.cli import main as vaeserve
from vaeserve.client.api import VaeClient


@pytest.fixture
def digits_png(tmp_path: Path) -> list[Path]:
    """Three 8x8 greyscale PNGs."""
    paths = []
    for i in range(3):
        pixels = (np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_sample_writes_a_png_grid_and_the_seeds_latents(server: ServerProcess, tmp_path: Path) -> None:
    out, latents = tmp_path / "samples.png", tmp_path / "latents.npy"
    run_cli("sample", "--target", server.target, "--n", "16", "--seed", "0", "--out", str(out),
            "--latents-out", str(latents), "--scale", "2")  # fmt: skip
    grid = Image.open(out)
    assert grid.mode == "L" and grid.size == (2 * (4 * 9 + 1), 2 * (4 * 9 + 1))  # 4x4 tiles of 8 px, 1 px gaps
    expected = np.random.Generator(np.random.PCG64(0)).standard_normal((16, 8), dtype=np.float32)
    assert np.load(latents).tobytes() == expected.tobytes()


def test_encode_reads_png_and_npy_and_writes_embeddings(
    server: ServerProcess, tmp_path: Path, digits_png: list[Path]
) -> None:
    stack = np.random.default_rng(5).random((2, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "two.npy", stack)
    out = tmp_path / "embeddings.npy"
    run_cli("encode", "--target", server.target, *map(str, digits_png), str(tmp_path / "two.npy"), "--out", str(out))
    mean = np.load(out)
    assert mean.shape == (5, 8) and mean.dtype == np.float32
    two = tmp_path / "two.npy"  # the sidecar names each row's file, a .npy file's rows by index
    assert (tmp_path / "embeddings.paths.txt").read_text().splitlines() == [*map(str, digits_png), f"{two}[0]",
                                                                            f"{two}[1]"]  # fmt: skip

    everything = tmp_path / "all.npz"
    run_cli("encode", "--target", server.target, str(digits_png[0]), "--seed", "1", "--out", str(everything))
    with np.load(everything) as f:
        assert {k: f[k].shape for k in f.files} == {"mean": (1, 8), "log_variance": (1, 8), "latents": (1, 8),
                                                    "path": (1,)}  # fmt: skip
        assert f["path"].tolist() == [str(digits_png[0])]
        np.testing.assert_allclose(f["mean"], mean[:1], atol=1e-6)


def test_reconstruct_writes_labelled_rows_of_inputs_above_their_reconstructions(
    server: ServerProcess, tmp_path: Path, digits_png: list[Path]
) -> None:
    out = tmp_path / "recon.png"
    run_cli("reconstruct", "--target", server.target, *map(str, digits_png), "--out", str(out), "--scale", "1",
            "--mean")  # fmt: skip
    picture = np.asarray(Image.open(out))
    assert picture.shape[0] == 2 * 9 + 1  # a row of the three inputs, then a row of their reconstructions
    margin = picture.shape[1] - (3 * 9 + 1)
    assert margin > 60  # the labels "input" and "reconstruction"
    grid = picture[:, margin:]
    inputs = [np.asarray(Image.open(p)) for p in digits_png]
    with VaeClient(server.target) as client:
        expected, _ = client.reconstruct(np.stack(inputs)[:, None] / np.float32(255), mean=True)
    for i in range(3):
        np.testing.assert_array_equal(grid[1:9, 1 + 9 * i : 9 + 9 * i], inputs[i])
        reconstruction = (expected[i, 0] * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(grid[10:18, 1 + 9 * i : 9 + 9 * i], reconstruction)
    assert (grid[0] == 128).all() and (grid[9] == 128).all()  # grey separators, visible beside black digits


def test_reconstruct_mean_is_deterministic_and_takes_no_seed(
    server: ServerProcess, tmp_path: Path, digits_png: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "1.png", tmp_path / "2.png"
    for out in (first, second):
        run_cli("reconstruct", "--target", server.target, *map(str, digits_png), "--mean", "--out", str(out))
    assert first.read_bytes() == second.read_bytes()
    capsys.readouterr()
    assert vaeserve(["reconstruct", "--target", server.target, str(digits_png[0]), "--mean", "--seed", "1"]) == 2
    assert capsys.readouterr().err == (
        "vaeserve reconstruct: error: --seed and --mean: the posterior mean is decoded as it is, there is no noise to "
        "seed\n"
    )


def test_any_image_encodes_converted_with_one_note_on_stderr(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = Image.new("RGBA", (28, 28), (0, 0, 0, 0))  # a dark 1 on a transparent 28x28 sheet
    sheet.paste((0, 0, 0, 255), (13, 4, 16, 24))
    sheet.save(tmp_path / "one.png")
    run_cli("sample", "--target", server.target, "--n", "4", "--out", str(tmp_path / "grid.png"))
    capsys.readouterr()
    out = tmp_path / "e.npy"
    run_cli("encode", "--target", server.target, str(tmp_path / "one.png"), str(tmp_path / "grid.png"),
            "--invert", "--out", str(out))  # fmt: skip
    captured = capsys.readouterr()
    assert np.load(out).shape == (2, 8)
    assert captured.err.splitlines() == [
        f"vaeserve encode: {tmp_path / 'one.png'}: converted: transparent pixels made white (the strokes are dark), "
        "inverted, RGB -> grey, resized 28x28 -> 8x8 (aspect ratio kept, padded with black)",
        f"vaeserve encode: {tmp_path / 'grid.png'}: converted: inverted, resized 76x76 -> 8x8 (aspect ratio kept, "
        "padded with black)",
    ]
    run_cli("encode", "--target", server.target, str(tmp_path / "one.png"), "--out", str(out))
    assert "hint: mostly light (mean pixel 0.9" in capsys.readouterr().err  # dark on light, without --invert


def test_decode_writes_the_latents_images(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latents = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "z.npy", latents)
    np.save(tmp_path / "one.npy", latents[0].astype(np.float64))
    run_cli("decode", "--target", server.target, str(tmp_path / "z.npy"), "--out", str(tmp_path / "z.png"),
            "--scale", "1")  # fmt: skip
    run_cli("decode", "--target", server.target, str(tmp_path / "one.npy"), "--out", str(tmp_path / "one.png"),
            "--scale", "1")  # fmt: skip
    assert capsys.readouterr().out.splitlines() == [
        f"decoded 5 latents to {tmp_path / 'z.png'}",
        f"decoded 1 latents to {tmp_path / 'one.png'}",
    ]
    grid = np.asarray(Image.open(tmp_path / "z.png"))
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1)
    with VaeClient(server.target) as client:
        images = client.decode(latents)
    np.testing.assert_array_equal(grid[1:9, 10:18], (images[1, 0] * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one.png"))[1:9, 1:9], grid[1:9, 1:9])


def test_decode_refuses_bad_latent_files_in_one_line(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {
        "wide.npy": (np.zeros((2, 9), np.float32), "expected latents [N, 8] (or one [8]) for the served model's "
                     "latent_dim 8, got [2, 9]"),
        "none.npy": (np.zeros((0, 8), np.float32), "got [0, 8]"),
        "cube.npy": (np.zeros((1, 1, 8), np.float32), "got [1, 1, 8]"),
        "nan.npy": (np.full((1, 8), np.nan, np.float32), "holds NaN or infinite values"),
        "inf.npy": (np.full(8, -np.inf), "holds NaN or infinite values"),
        "text.npy": (np.array(["a"] * 8), "expected real numbers, got <U1"),
    }  # fmt: skip
    for name, (array, _) in bad.items():
        np.save(tmp_path / name, array)
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    bad["garbage.npy"] = (None, "cannot read as .npy")
    bad["missing.npy"] = (None, "cannot read as .npy")
    for name, (_, message) in bad.items():
        assert vaeserve(["decode", "--target", server.target, str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"vaeserve decode: error: {tmp_path / name}: ") and message in err, err
        assert err.count("\n") == 1
    huge = tmp_path / "huge.npy"
    np.save(huge, np.zeros((MAX_NUM_SAMPLES + 1, 8), np.float32))
    assert vaeserve(["decode", "--target", server.target, str(huge)]) == 2
    n = MAX_NUM_SAMPLES
    assert f"INVALID_ARGUMENT: latents.shape: expected [N, 8] with 1 <= N <= {n}, got N = {n + 1}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--scale", v) for v in ("0", "-1", "65", "1e9", "nan", "", "four")]
    + [("--timeout", v) for v in ("0", "-1", "nan", "inf", "1e99", "", "soon")]
    + [("--seed", v) for v in ("-1", str(2**64), "9" * 400, "nan", "1.5", "")],
)
def test_client_flags_have_bounds(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        vaeserve(["sample", "--target", "127.0.0.1:1", flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    bounds = {"--scale": "an integer in [1, 64]", "--timeout": "a number in [0.001, 3600]",
              "--seed": "an integer in [0, 18446744073709551615]"}[flag]  # fmt: skip
    assert f"argument {flag}: expected {bounds}, got {value!r}" in err and "Traceback" not in err


def test_info_prints_the_model_as_json(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli("info", "--target", server.target)
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "vae" and info["version"] == 1 and info["image_shape"] == [1, 8, 8]
    assert info["served_versions"] == [1]
    assert info["execution_provider"] == "CPUExecutionProvider" and "latent_dim" in info["metadata"]
    assert info["expects"].startswith("8x8 grey images, float32 values in [0, 1], light strokes on a dark background")


def test_client_errors_are_one_line(server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(big)
    assert vaeserve(["encode", "--target", server.target, str(big), "--no-resize"]) == 2
    assert f"{big}: expected 8x8 pixels (model image_shape [1, 8, 8]), got 28x28" in capsys.readouterr().err

    assert vaeserve(["sample", "--target", server.target, "--n", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "INVALID_ARGUMENT: num_samples: expected 1 <= num_samples" in capsys.readouterr().err

    nobody = f"127.0.0.1:{free_port()}"
    assert vaeserve(["info", "--target", nobody, "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vaeserve info: error: {nobody}: UNAVAILABLE: ") and "Traceback" not in err
    assert err.endswith(f" (is a server running at {nobody}? `make serve` starts one)\n")

    # A missing file is named before any server is asked (none listens here)
    assert vaeserve(["encode", "--target", nobody, str(tmp_path / "missing.png")]) == 2
    assert capsys.readouterr().err == f"vaeserve encode: error: {tmp_path / 'missing.png'}: no such file\n"


def test_score_prints_a_line_per_image_and_calls_anomalies(
    server: ServerProcess, tmp_path: Path, digits_png: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from vaeserve.training.data import load_dataset

    normal = tmp_path / "normal"
    normal.mkdir()
    held_out = load_dataset({"name": "digits"}).test.numpy()
    for i, image in enumerate(held_out[:40]):
        Image.fromarray(np.rint(image[0] * 255).astype(np.uint8)).save(normal / f"{i}.png")
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(noise)
    digit = normal / "0.png"
    assert vaeserve(["score", "--target", server.target, str(digit), str(noise), "--k", "20", "--seed", "1",
                     "--fit-threshold", str(normal), "--fpr", "0.1"]) == 0  # fmt: skip
    fitted, *lines = capsys.readouterr().out.strip().splitlines()
    assert fitted.startswith("threshold ") and "of 40 normal image(s)" in fitted and "false-positive rate 0.1" in fitted
    assert lines[0].startswith(f"{digit}  -log p(x) ") and lines[0].endswith("  normal")
    assert lines[1].startswith(f"{noise}  -log p(x) ") and lines[1].endswith("  anomaly")
    # Scores without a threshold, .npy rows labelled by index; the CLI's figures are the client's.
    np.save(tmp_path / "two.npy", held_out[:2])
    assert vaeserve(["score", "--target", server.target, str(tmp_path / "two.npy"), "--k", "5", "--seed", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    with VaeClient(server.target) as client:
        expected = -client.score(held_out[:2], 5, seed=2)["log_likelihood"]
    assert [line.split("  ")[0] for line in out] == [f"{tmp_path / 'two.npy'}[0]", f"{tmp_path / 'two.npy'}[1]"]
    assert [float(line.split()[3]) for line in out] == pytest.approx(expected, abs=0.006)


def test_score_refuses_what_it_cannot_do_in_one_line(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        ([], "give images to score, or --fit-threshold FOLDER"),
        (["--fit-threshold", str(tmp_path / "empty")], "holds no images"),
        (["--fit-threshold", str(tmp_path / "nowhere")], "not a folder"),
        (["x.png", "--threshold", "1", "--fit-threshold", str(tmp_path)], "--threshold and --fit-threshold"),
    ]
    for extra, message in cases:  # fmt: skip
        assert vaeserve(["score", "--target", server.target, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_interpolate_writes_a_strip(server: ServerProcess, tmp_path: Path, digits_png: list[Path]) -> None:
    out = tmp_path / "strip.png"
    run_cli("interpolate", "--target", server.target, str(digits_png[0]), str(digits_png[1]), "--steps", "7",
            "--spherical", "--out", str(out), "--scale", "1")  # fmt: skip
    assert Image.open(out).size == (7 * 9 + 1, 9 + 1)  # one row of 7 cells of 8 px, 1 px separators


@pytest.mark.parametrize(
    ("command", "flag", "value", "bounds"),
    [("score", "--k", v, "an integer in [1, 100000]") for v in ("0", "-1", "100001", "nan", "", "many")]
    + [("score", "--fpr", v, "a number in [1e-06, 0.5]") for v in ("0", "0.9", "nan", "inf", "")]
    + [("score", "--threshold", v, "a number in [-1e+09, 1e+09]") for v in ("nan", "inf", "1e99", "x")]
    + [("interpolate", "--steps", v, "an integer in [2, 4096]") for v in ("1", "-5", "4097", "2.5", "")],
)
def test_score_and_interpolate_flags_have_bounds(
    command: str, flag: str, value: str, bounds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        vaeserve([command, "--target", "127.0.0.1:1", "a.png", "b.png", f"{flag}={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected {bounds}, got {value!r}" in err and "Traceback" not in err


def test_encode_takes_a_folder_of_ten_thousand_images_and_skips_broken_files(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "dataset"
    pixels = np.random.default_rng(3).integers(0, 256, (10_000, 8, 8), dtype=np.uint8)
    for i, image in enumerate(pixels):  # nested a level deep: folders are searched recursively
        (folder / f"{i // 1000}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i // 1000}" / f"{i:05d}.png")
    (folder / "0" / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image: not searched")
    out = tmp_path / "emb.npy"
    assert vaeserve(["encode", "--target", server.target, str(folder), "--out", str(out), "--concurrency", "3"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 10,001 file(s) that could not be read:" in err and "broken.png: cannot read" in err
    files = sorted(p for p in folder.rglob("*.png") if p.name != "broken.png")
    assert (tmp_path / "emb.paths.txt").read_text().splitlines() == list(map(str, files))
    with VaeClient(server.target) as client:
        expected = np.concatenate([client.encode(pixels[i : i + MAX_NUM_SAMPLES, None])[0]
                                   for i in range(0, 10_000, MAX_NUM_SAMPLES)])  # fmt: skip
    order = [int(p.stem) for p in files]
    np.testing.assert_allclose(np.load(out), expected[order], atol=1e-5)
    # --strict: the same output, and exit 1 for the file it could not read.
    assert vaeserve(["encode", "--target", server.target, str(folder / "0"), "--out", str(out), "--strict"]) == 1
    assert np.load(out).shape == (1000, 8)


def test_conversion_notes_are_counted_past_a_few_files_and_named_with_verbose(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(12):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / f"{i:02d}.png")
    out = str(tmp_path / "e.npy")
    assert vaeserve(["encode", "--target", server.target, str(tmp_path), "--out", out]) == 0
    assert capsys.readouterr().err == ("vaeserve encode: 12 images: converted: RGB -> grey, resized 16x16 -> 8x8 "
                                       "(aspect ratio kept, padded with black)\n")  # fmt: skip
    assert vaeserve(["encode", "--target", server.target, str(tmp_path), "--out", out, "--verbose"]) == 0
    assert str(tmp_path / "11.png") in capsys.readouterr().err


def test_bulk_commands_refuse_empty_folders_unreadable_sets_and_hostile_concurrency(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG garbage")
    cases = [
        (["encode", str(tmp_path / "empty")], f"IMAGE {tmp_path / 'empty'}: holds no images"),
        (["score", str(tmp_path / "broken")], "none of the 1 file(s) could be read"),
        (["reconstruct", str(tmp_path / "broken")], "none of the 1 file(s) could be read"),
    ]
    for argv, message in cases:
        assert vaeserve([*argv[:1], "--target", server.target, *argv[1:]]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    for bad in ("0", "-1", "65", "99999999999999999999", "nan", "four"):
        with pytest.raises(SystemExit) as exited:  # argparse's usage error
            vaeserve(["encode", "--target", server.target, str(tmp_path / "broken"), "--concurrency", bad])
        assert exited.value.code == 2
        assert "argument --concurrency: expected an integer in [1, 64]" in capsys.readouterr().err


@pytest.fixture
def dark_folder(tmp_path: Path) -> Path:
    """1,200 dark 8x8 PNGs (no conversion notes, no invert hint), a few calls' worth for the shared server."""
    folder = tmp_path / "dark"
    folder.mkdir()
    for i, image in enumerate(np.random.default_rng(5).integers(0, 100, (1200, 8, 8), dtype=np.uint8)):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


PROGRESS_LINE = re.compile(r"^(\w+): ([\d,]+)/1,200 images \((\d+)%\), [\d.,]+ images/s, ETA \d+:\d\d$")


@pytest.mark.parametrize("command", ["encode", "score", "reconstruct"])
def test_bulk_commands_print_plain_progress_lines_when_stderr_is_not_a_terminal(
    server: ServerProcess, dark_folder: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / ("out.png" if command == "reconstruct" else "out.npy")
    flags = ["--out", str(out)] if command != "score" else ["--k", "2"]
    # --progress-every 0: a line per call handed back, so no wall-clock time decides what is printed.
    argv = [command, "--target", server.target, str(dark_folder), *flags, "--concurrency", "2"]
    assert vaeserve([*argv, "--progress-every", "0"]) == 0
    lines = capsys.readouterr().err.splitlines()
    matches = [PROGRESS_LINE.match(line) for line in lines[:-1]]
    assert len(lines) >= 3 and all(matches), lines  # 1,200 rows are several calls: several lines, then the last
    done = [int(m[2].replace(",", "")) for m in matches]
    assert all(m[1] == command for m in matches) and done == sorted(set(done)) and done[-1] == 1200
    assert re.fullmatch(rf"{command}: 1,200 images in \d+:\d\d, [\d.,]+ images/s", lines[-1]), lines[-1]
    assert "%|" not in "".join(lines)  # no bar fragments in a log
    # --quiet: nothing of progress (and these images need no notes: nothing at all).
    assert vaeserve([*argv, "--progress-every", "0", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_bulk_commands_draw_a_tqdm_bar_on_a_terminal(server: ServerProcess, dark_folder: Path, tmp_path: Path) -> None:
    """The real command in a subprocess whose stderr is a pseudo-terminal (the `pty` module)."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    env = {**os.environ, "VAESERVE_PROGRESS_EVERY": "0"}  # the bar from the start, not after a second's work
    argv = [sys.executable, "-m", "vaeserve.cli", "encode", "--target", server.target, str(dark_folder),
            "--out", str(tmp_path / "e.npy"), "--concurrency", "2"]  # fmt: skip
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, env=env) as proc:
        os.close(secondary)
        shown = bytearray()
        while True:  # until the child's end closes the terminal: EOF, or EIO on Linux
            try:
                data = os.read(primary, 1 << 16)
            except OSError:
                break
            if not data:
                break
            shown += data
        os.close(primary)
        stdout = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 0, shown.decode(errors="replace")
    text = shown.decode(errors="replace")
    assert "encode: 100%|" in text and "1200/1200" in text and "images/s" in text, text
    assert stdout.startswith("encoded 1200 images") and "%|" not in stdout
