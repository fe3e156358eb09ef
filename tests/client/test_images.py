"""Any image in: files and arrays converted to the model's input the way a user expects, and refused in one line
(naming the file) when they cannot be."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vaeserve.client.images import ImageError, describe_input, fit, read_images

GREY_8 = (1, 8, 8)


def save(tmp_path: Path, name: str, image: Image.Image) -> Path:
    image.save(tmp_path / name)
    return tmp_path / name


def test_an_image_of_the_model_shape_passes_unchanged(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    images, notes = read_images([save(tmp_path, "d.png", Image.fromarray(pixels))], GREY_8, hint_invert=False)
    assert notes == [] and images.dtype == np.float32 and images.shape == (1, 1, 8, 8)
    np.testing.assert_array_equal(images[0, 0], pixels / np.float32(255))


def test_a_bigger_digit_is_box_filtered_to_8x8_keeping_its_aspect_and_said_once(tmp_path: Path) -> None:
    square = np.zeros((32, 32), np.uint8)
    square[8:24, 12:28] = 255
    wide = np.zeros((32, 64), np.uint8)
    wide[:, :32] = 255  # left half white
    paths = [save(tmp_path, f"{i}.png", Image.fromarray(a)) for i, a in enumerate((square, square, wide))]
    images, notes = read_images(paths, GREY_8)
    assert images.shape == (3, 1, 8, 8)
    assert notes == [
        f"{paths[0]}, {paths[1]}: converted: resized 32x32 -> 8x8 (aspect ratio kept, padded with black)",
        f"{paths[2]}: converted: resized 64x32 -> 8x8 (aspect ratio kept, padded with black)",
    ]
    # Box filter: each output pixel is the mean of the 4x4 input pixels it covers, as scikit-learn's digits.
    expected = np.zeros((8, 8), np.float32)
    expected[2:6, 3:7] = 1
    np.testing.assert_allclose(images[0, 0], expected, atol=1e-6)
    # 64x32 fits as 8x4, centred: rows 0-1 and 6-7 are padding; the white half is the left 4 columns.
    expected = np.zeros((8, 8), np.float32)
    expected[2:6, :4] = 1
    np.testing.assert_allclose(images[2, 0], expected, atol=1e-6)


def test_colour_is_greyed_with_a_word_and_grey_becomes_rgb(tmp_path: Path) -> None:
    red = save(tmp_path, "red.png", Image.new("RGB", (8, 8), (255, 0, 0)))
    images, notes = read_images([red], GREY_8)
    np.testing.assert_allclose(images, 0.299, atol=1e-6)  # ITU-R 601 luma of pure red
    assert notes == [f"{red}: converted: RGB -> grey"]

    grey = save(tmp_path, "grey.png", Image.new("L", (8, 8), 51))
    images, notes = read_images([grey], (3, 8, 8))
    assert images.shape == (1, 3, 8, 8) and notes == [f"{grey}: converted: grey -> RGB"]
    np.testing.assert_allclose(images, 0.2, atol=1e-6)


def test_dark_strokes_on_transparency_stay_visible_and_invert_makes_them_light(tmp_path: Path) -> None:
    sheet = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    ImageDraw.Draw(sheet).line([(4, 1), (4, 6)], fill=(0, 0, 0, 255))
    path = save(tmp_path, "seven.png", sheet)
    images, notes = read_images([path], GREY_8)
    assert images[0, 0, 3, 4] == 0.0 and images[0, 0, 0, 0] == 1.0  # black stroke on white, not black on black
    assert notes[0].startswith(
        f"{path}: converted: transparent pixels made white (the strokes are dark), RGB -> grey; hint: "
    )
    assert "mostly light (mean pixel 0.91)" in notes[0] and "(--invert)" in notes[0]

    images, notes = read_images([path], GREY_8, invert=True)
    assert images[0, 0, 3, 4] == 1.0 and images[0, 0, 0, 0] == 0.0
    assert notes == [f"{path}: converted: transparent pixels made white (the strokes are dark), inverted, RGB -> grey"]

    light = Image.new("LA", (8, 8), (0, 0))
    light.putpixel((2, 2), (200, 255))
    images, notes = read_images([save(tmp_path, "light.png", light)], GREY_8)
    assert images[0, 0, 2, 2] == pytest.approx(200 / 255) and images[0, 0].sum() == pytest.approx(200 / 255)
    assert notes[0] == f"{tmp_path / 'light.png'}: converted: transparent pixels made black"


def test_the_invert_hint_only_for_models_that_learned_light_on_dark(tmp_path: Path) -> None:
    page = save(tmp_path, "page.png", Image.new("L", (8, 8), 230))
    assert "hint: mostly light (mean pixel 0.90)" in read_images([page], GREY_8)[1][0]
    assert read_images([page], GREY_8, hint_invert=False)[1] == []
    assert describe_input(GREY_8, {"dataset": "digits"}) == (
        "8x8 grey images, float32 values in [0, 1], light strokes on a dark background (like its training data, digits)"
    )
    assert "light strokes" not in describe_input((3, 32, 32), {"dataset": "npz"})


def test_no_resize_refuses_another_size(tmp_path: Path) -> None:
    big = save(tmp_path, "big.png", Image.new("L", (28, 28)))
    with pytest.raises(ImageError) as refused:
        read_images([big], GREY_8, resize=False)
    assert str(refused.value) == (
        f"{big}: expected 8x8 pixels (model image_shape [1, 8, 8]), got 28x28; without --no-resize it would be resized"
    )


def test_sixteen_bit_palette_and_jpeg_files_read(tmp_path: Path) -> None:
    deep = Image.fromarray(np.full((8, 8), 65535 // 4, np.uint16))
    palette = Image.new("RGB", (8, 8), (255, 255, 255)).convert("P")
    photo = Image.new("RGB", (640, 480), (0, 0, 255))
    paths = [save(tmp_path, "deep.png", deep), save(tmp_path, "p.png", palette), save(tmp_path, "photo.jpg", photo)]
    images, notes = read_images(paths, GREY_8, hint_invert=False)
    np.testing.assert_allclose(images[0], 0.25, atol=1e-4)
    np.testing.assert_allclose(images[1], 1.0)  # a grey palette reads as grey: nothing to say
    assert notes == [
        f"{paths[2]}: converted: RGB -> grey, resized 640x480 -> 8x8 (aspect ratio kept, padded with black)"
    ]
    assert images[2, 0, 0].max() == 0 and images[2, 0, 4].min() == pytest.approx(0.114, abs=0.01)


def test_npy_arrays_of_any_size_are_converted_and_bad_ones_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "stack.npy", np.ones((5, 1, 16, 16), np.float32))
    np.save(tmp_path / "bytes.npy", np.full((16, 16), 255, np.uint8))
    images, notes = read_images([tmp_path / "stack.npy", tmp_path / "bytes.npy"], GREY_8, hint_invert=False)
    assert images.shape == (6, 1, 8, 8) and np.allclose(images, 1.0)
    assert notes == [f"{tmp_path / 'stack.npy'}, {tmp_path / 'bytes.npy'}: converted: resized 16x16 -> 8x8 "
                     "(aspect ratio kept, padded with black)"]  # fmt: skip

    hostile = {
        "nan": (np.full((8, 8), np.nan, np.float32), "holds NaN or infinite values; expected pixels in [0, 1]"),
        "inf": (np.full((8, 8), np.inf), "holds NaN or infinite values"),
        "255": (np.full((8, 8), 255.0), "holds values in [255, 255]; expected pixels in [0, 1] (floats) or uint8"),
        "negative": (np.full((8, 8), -1.0), "holds values in [-1, -1]"),
        "empty": (np.zeros((0, 1, 8, 8), np.float32), "holds no pixels (shape [0, 1, 8, 8])"),
        "flat": (np.zeros(64, np.float32), "expected an array [N, C, H, W], [C, H, W] or [H, W], got [64]"),
        "five-d": (np.zeros((1, 1, 1, 8, 8)), "got [1, 1, 1, 8, 8]"),
        "channels-last": (np.zeros((8, 8, 3)), "8 channels in [1, 8, 8, 3]; expected channels first"),
        "strings": (np.array([["a"]]), "expected uint8, uint16, bool or float pixels, got <U1"),
        "complex": (np.zeros((8, 8), np.complex64), "got complex64"),
        "two channels for rgb": (np.zeros((1, 2, 8, 8), np.float32), None),
    }
    for name, (array, message) in hostile.items():
        np.save(tmp_path / f"{name}.npy", array)
        if message is None:  # grey + alpha converts even for an RGB model
            assert read_images([tmp_path / f"{name}.npy"], (3, 8, 8))[0].shape == (1, 3, 8, 8)
            continue
        with pytest.raises(ImageError, match=None) as refused:
            read_images([tmp_path / f"{name}.npy"], GREY_8)
        assert str(refused.value).startswith(f"{tmp_path / name}.npy: ") and message in str(refused.value), name
    with pytest.raises(ImageError, match=r"3 channels; the model takes 4 \(image_shape \[4, 8, 8\]\)"):
        fit(np.zeros((1, 3, 8, 8), np.float32), (4, 8, 8), "x")


def test_garbage_missing_empty_and_huge_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "pickle.npy").write_bytes(b"\x93NUMPY garbage")
    # PNG headers that claim 5000 x 5000 and 100000 x 100000 pixels: refused before anything is decoded.
    for name, side in (("huge.png", 5000), ("bomb.png", 100_000)):
        (tmp_path / name).write_bytes(png_header(side, side))
    # An .npy header that claims 5000 x 5000 images (a sparse file: nothing is written, or read).
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1, 5000, 5000)})
        f.truncate(f.tell() + 4 * 5000 * 5000)
    cases = {
        "garbage.png": "cannot read as an image",
        "empty.png": "cannot read as an image",
        "pickle.npy": "cannot read as .npy",
        "missing.png": "cannot read it (No such file or directory)",
        "huge.png": "5000x5000 pixels is more than this client reads (16,777,216 pixels)",
        "bomb.png": "cannot read as an image (Image size (10000000000 pixels) exceeds limit",
        "huge.npy": "images of 5000x5000 pixels are more than this client reads (16,777,216 pixels)",
    }
    for name, message in cases.items():
        with pytest.raises(ImageError) as refused:
            read_images([tmp_path / name], GREY_8)
        assert str(refused.value).startswith(f"{tmp_path / name}: {message}"), str(refused.value)
        assert "\n" not in str(refused.value)
    with pytest.raises(ImageError, match="no images given"):
        read_images([], GREY_8)


def png_header(width: int, height: int) -> bytes:
    """The start of an 8-bit grey PNG of that size: its header and an empty data chunk, no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", b"")
    )


def test_a_big_file_is_decoded_no_bigger_than_the_model_needs_and_converts_the_same(tmp_path: Path) -> None:
    """A 4096x4096 RGBA drawing (a 90 KB PNG that decodes to 64 MB) reaches the float32 conversion as 64x64 for
    an 8x8 model, and a 12-megapixel JPEG photo as a fraction of itself: same pixels, same note."""
    from vaeserve.client.images import MARGIN, load_image

    sheet = Image.new("RGBA", (4096, 4096), (0, 0, 0, 0))
    ImageDraw.Draw(sheet).ellipse((1000, 600, 3000, 3500), outline=(0, 0, 0, 255), width=300)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    for path, shape in ((save(tmp_path, "big.png", sheet), GREY_8), (save(tmp_path, "photo.jpg", photo), (1, 28, 28))):
        decoded, size = load_image(path.read_bytes(), str(path), shape)
        assert size == Image.open(path).size and decoded.shape[2] * decoded.shape[3] <= (2 * MARGIN) ** 2 * 28 * 28
        whole, _ = load_image(path.read_bytes(), str(path))  # every pixel decoded, as before the bound
        images, notes = read_images([path], shape)
        np.testing.assert_allclose(images[0], fit(whole, shape, str(path))[0][0], atol=1 / 255)
        assert f"resized {size[0]}x{size[1]} -> {shape[2]}x{shape[1]} (aspect ratio kept" in notes[0]
    assert load_image(save(tmp_path, "big.png", sheet).read_bytes(), "big", GREY_8)[0].shape == (1, 4, 64, 64)


def test_only_png_jpeg_webp_gif_and_bmp_reach_a_decoder(tmp_path: Path) -> None:
    for kind in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
        path = tmp_path / f"ok.{kind.lower()}"
        Image.new("RGB", (8, 8), (255, 255, 255)).save(path, format=kind)
        assert read_images([path], GREY_8, hint_invert=False)[0].shape == (1, 1, 8, 8), kind
    # An EPS file would run Ghostscript; TIFF and the other formats Pillow knows are parsers nobody needs here.
    (tmp_path / "page.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "scan.tiff")
    for name in ("page.eps", "scan.tiff"):
        with pytest.raises(ImageError) as refused:
            read_images([tmp_path / name], GREY_8)
        assert str(refused.value) == (
            f"{tmp_path / name}: cannot read as an image (not a PNG, JPEG, WEBP, GIF or BMP file)"
        )
