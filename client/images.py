"""Images from users -> the served model's input [N, C, H, W] in [0, 1], converted as a user expects and said so.

PNG, JPEG, WebP, GIF and BMP files (a photo, a drawing, the client's own grids) and .npy arrays, in these steps,
each only when needed and each named in a note:
  transparency  flattened onto a background that contrasts with the opaque pixels: white behind dark strokes
                (then a dark-on-light image, for invert), black behind light ones;
  invert        1 - x, for dark strokes on a light background (the bundled datasets are light on dark);
  channels      RGB -> grey (ITU-R 601 luma, as Pillow's "L"), or grey -> RGB;
  size          scaled to fit H x W with its aspect ratio kept, centred on black: a box filter when shrinking
                (each new pixel the mean of those it covers, which is how scikit-learn's 8x8 digits were made
                from 32x32 bitmaps), bilinear when enlarging. A file much bigger than that is decoded no bigger than
                the filter needs (a JPEG at up to 1/8 scale, others reduced by whole blocks as they are decoded).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vaeserve.errors import VaeserveError

# Datasets whose images are light strokes on a dark background: a mostly light input to their models is
# probably dark on light, and gets a hint to invert it.
LIGHT_ON_DARK = ("digits", "mnist", "fashion-mnist")
LIGHT = 0.5  # mean pixel above which an image is "mostly light"
# The most pixels one input image may have (4096 x 4096; a 12-megapixel photo is fewer): more is refused before
# it is decoded, so a file's header cannot make the client allocate gigabytes.
MAX_PIXELS = 1 << 24
# The only decoders a file reaches: what users have. Pillow knows dozens more (EPS runs Ghostscript, some are
# rarely exercised parsers), so anything else is refused before a decoder sees it.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# A file decoded for a model keeps at least this many pixels per side of each pixel it is resized to, so the box
# filter still averages over blocks: the result matches decoding the whole file to within rounding, while the
# float32 copies the conversion makes are bounded by the model's size instead of the file's.
MARGIN = 8


class ImageError(VaeserveError):
    """An image file or array that cannot be turned into the model's input; the message names it."""


def light_on_dark(metadata: Mapping[str, str]) -> bool:
    """Whether the served model learned light strokes on a dark background (its training dataset says so)."""
    return metadata.get("dataset") in LIGHT_ON_DARK


def describe_input(image_shape: Sequence[int], metadata: Mapping[str, str]) -> str:
    """What the model expects, in a sentence: `vaeserve info`, the explorer and the README say the same."""
    c, h, w = image_shape
    colours = {1: "grey", 3: "RGB"}.get(c, f"{c}-channel")
    sentence = f"{w}x{h} {colours} images, float32 values in [0, 1]"
    if light_on_dark(metadata):
        sentence += f", light strokes on a dark background (like its training data, {metadata['dataset']})"
    return sentence


def read_images(
    paths: Sequence[str | Path],
    image_shape: Sequence[int],
    *,
    resize: bool = True,
    invert: bool = False,
    hint_invert: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Image files (PNG, JPEG, WebP, GIF or BMP: one image each) and .npy arrays ([N, C, H, W], [C, H, W] or [H, W];
    channels first; uint8, uint16, bool or float in [0, 1]) as one float32 batch [N, C, H, W] of the model's
    `image_shape`, and notes saying what was converted, one per kind of conversion (naming its files).

    resize: False refuses inputs of another size instead of scaling them. invert: for dark strokes on light.
    hint_invert: add a hint when an image is mostly light (for models that learned light on dark).
    """
    if not paths:
        raise ImageError("no images given")
    batches, done = [], {}
    for path in map(Path, paths):
        fitted, steps = read_file(path, image_shape, resize=resize, invert=invert, hint_invert=hint_invert)
        batches.append(fitted)
        if steps:
            done.setdefault(steps, []).append(str(path))
    notes = [f"{', '.join(sources)}: {steps}" for steps, sources in done.items()]
    return np.concatenate(batches), notes


def read_file(
    path: Path, image_shape: Sequence[int], *, resize: bool = True, invert: bool = False, hint_invert: bool = True
) -> tuple[np.ndarray, str]:
    """One image file or .npy array as float32 [N, C, H, W] of `image_shape` and what was done to it ("" when
    nothing): the step `read_images` takes per file, and bulk reading (bulk.py) per item."""
    if path.suffix.lower() == ".npy":
        array, size = load_npy(path), None
    else:
        try:
            array, size = load_image(path.read_bytes(), str(path), image_shape if resize else None)
        except OSError as exc:
            raise ImageError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    return fit(array, image_shape, str(path), size=size, resize=resize, invert=invert, hint_invert=hint_invert)


def load_npy(path: Path) -> np.ndarray:
    """A .npy file as float32 [N, C, H, W]; its header is checked before its pixels are read."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: cannot read as .npy ({exc})") from exc
    if a.ndim >= 2 and a.shape[-1] * a.shape[-2] > MAX_PIXELS:
        raise ImageError(f"{path}: images of {a.shape[-1]}x{a.shape[-2]} pixels are more than this client reads "
                         f"({MAX_PIXELS:,} pixels)")  # fmt: skip
    return as_batch(np.asarray(a), str(path))


def as_batch(a: np.ndarray, source: str) -> np.ndarray:
    """An array of images ([N, C, H, W], [C, H, W] or [H, W]) as float32 [N, C, H, W], integers scaled to [0, 1]."""
    if a.dtype == np.uint8:
        a = a / 255.0
    elif a.dtype == np.uint16:
        a = a / 65535.0
    elif a.dtype != bool and not np.issubdtype(a.dtype, np.floating):
        raise ImageError(f"{source}: expected uint8, uint16, bool or float pixels, got {a.dtype}")
    a = a.reshape((1,) * (4 - a.ndim) + a.shape) if 2 <= a.ndim <= 4 else a
    if a.ndim != 4:
        raise ImageError(f"{source}: expected an array [N, C, H, W], [C, H, W] or [H, W], got {list(a.shape)}")
    if 0 in a.shape:
        raise ImageError(f"{source}: holds no pixels (shape {list(a.shape)})")
    if a.shape[1] > 4:
        raise ImageError(f"{source}: {a.shape[1]} channels in {list(a.shape)}; expected channels first, [N, C, H, W] "
                         "with C at most 4")  # fmt: skip
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ImageError(f"{source}: holds NaN or infinite values; expected pixels in [0, 1]")
    if a.min() < 0.0 or a.max() > 1.0:
        raise ImageError(f"{source}: holds values in [{a.min():g}, {a.max():g}]; expected pixels in [0, 1] (floats) "
                         "or uint8/uint16 integers")  # fmt: skip
    return a


def load_image(
    data: bytes, source: str, image_shape: Sequence[int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file's bytes as float32 [1, C, H, W] in [0, 1] (C: 1 grey, 2 grey and alpha, 3 RGB or 4 RGBA), and
    the file's own (width, height). image_shape: the model's, to decode no more of a big file than `fit` needs
    for it (MARGIN): a JPEG's decoder skips to 1/2, 1/4 or 1/8 scale, other formats are reduced by whole blocks
    right after decoding (transparency premultiplied, so flattening it later gives the same result)."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        size = image.size
        factor = _shrink_factor(size, image_shape)
        if factor > 1:
            image.draft(None, (image.width // factor, image.height // factor))  # JPEG only; others ignore it
        if image.width * image.height > MAX_PIXELS:  # after draft: a big photo decodes at a fraction of its size
            raise ImageError(f"{source}: {image.width}x{image.height} pixels is more than this client reads "
                             f"({MAX_PIXELS:,} pixels)")  # fmt: skip
        image.load()
        if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey PNGs open as I;16 or I
            image, scale = image if image.mode == "I" else image.convert("I"), 65535.0
        else:
            image, scale = _eight_bit(image), 255.0
        factor = _shrink_factor(image.size, image_shape)  # what draft left to do
        if factor > 1:
            image = image.reduce(factor)
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{source}: cannot read as an image (not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} "
                         "file)") from exc  # fmt: skip
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{source}: cannot read as an image ({exc})") from exc
    pixels = np.clip(np.asarray(image, dtype=np.float32) / scale, 0.0, 1.0)
    return (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))[None], size


def _eight_bit(image):  # a PIL image -> L, LA, RGB or RGBA, converted only when it is not one already
    grey = image.mode in ("1", "L", "LA", "La", "F") or (image.mode == "P" and _grey_palette(image))
    if image.has_transparency_data:
        mode = "LA" if grey else "RGBA"
        return image if image.mode == mode else image.convert("RGBA").convert(mode)
    mode = "L" if grey else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _shrink_factor(size: tuple[int, int], image_shape: Sequence[int] | None) -> int:
    """The whole factor an image of `size` (width, height) can be reduced by and still keep MARGIN pixels per side
    of each pixel `fit` resizes it to; 1 without a shape, or when the image is not much bigger."""
    if image_shape is None:
        return 1
    (iw, ih), (h, w) = size, image_shape[1:]
    sh, sw = fitted_size(ih, iw, h, w)
    return max(1, min(iw // (MARGIN * sw), ih // (MARGIN * sh)))


def _grey_palette(image) -> bool:  # a PIL image
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def fit(
    a: np.ndarray,
    image_shape: Sequence[int],
    source: str,
    *,
    size: tuple[int, int] | None = None,
    resize: bool = True,
    invert: bool = False,
    hint_invert: bool = True,
) -> tuple[np.ndarray, str]:
    """Images [N, K, H', W'] in [0, 1] (K: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) -> [N, C, H, W], and in a few
    words what was done to them ("converted: ...") and any hint ("hint: ..."); "" when neither. size: the file's
    own (width, height), when load_image decoded it smaller (the note names the file's size)."""
    c, h, w = image_shape
    k, ih, iw = a.shape[1:]
    steps = []
    if k in (2, 4) and k != c:
        colour, alpha = a[:, :-1], a[:, -1:]
        # Dark ink on a transparent sheet is common (drawn digits, icons): transparent pixels take the shade that
        # contrasts with the opaque ones, so the strokes stay visible whatever their colour.
        ink = float((colour * alpha).sum() / max(float(alpha.sum()) * colour.shape[1], 1e-12))
        background = 1.0 if ink < LIGHT and alpha.sum() > 0 else 0.0
        a = colour * alpha + background * (1.0 - alpha)
        steps.append(f"transparent pixels made {'white (the strokes are dark)' if background else 'black'}")
    if invert:
        a = 1.0 - a
        steps.append("inverted")
    k = a.shape[1]
    if k != c:
        if (k, c) == (3, 1):
            a = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), a, axes=([0], [1]))[:, None]
            steps.append("RGB -> grey")
        elif (k, c) == (1, 3):
            a = np.repeat(a, 3, axis=1)
            steps.append("grey -> RGB")
        else:
            raise ImageError(f"{source}: {k} channels; the model takes {c} (image_shape {list(image_shape)})")
    if (ih, iw) != (h, w):
        if not resize:
            raise ImageError(f"{source}: expected {w}x{h} pixels (model image_shape {list(image_shape)}), got "
                             f"{iw}x{ih}; without --no-resize it would be resized")  # fmt: skip
        a = resize_padded(a, h, w)
        steps.append(
            f"resized {'x'.join(map(str, size or (iw, ih)))} -> {w}x{h} (aspect ratio kept, padded with black)"
        )
    a = np.clip(a, 0.0, 1.0).astype(np.float32)
    said = ["converted: " + ", ".join(steps)] if steps else []
    if hint_invert and not invert and a.mean() > LIGHT:
        said.append(f"hint: mostly light (mean pixel {a.mean():.2f}) but the model learned light strokes on dark: "
                    "if this is dark on light, invert it (--invert)")  # fmt: skip
    return a, "; ".join(said)


def resize_padded(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """[N, C, H', W'] -> [N, C, h, w]: scaled to fit with the aspect ratio kept, centred, the rest black."""
    from PIL import Image

    n, c, ih, iw = a.shape
    sh, sw = fitted_size(ih, iw, h, w)
    method = Image.Resampling.BOX if sh < ih or sw < iw else Image.Resampling.BILINEAR
    top, left = (h - sh) // 2, (w - sw) // 2
    out = np.zeros((n, c, h, w), np.float32)
    for i in range(n):
        for j in range(c):
            channel = Image.fromarray(np.ascontiguousarray(a[i, j], dtype=np.float32), mode="F")
            out[i, j, top : top + sh, left : left + sw] = np.asarray(channel.resize((sw, sh), method))
    return out


def fitted_size(ih: int, iw: int, h: int, w: int) -> tuple[int, int]:
    """(height, width) of an ih x iw image scaled to fit h x w with its aspect ratio kept."""
    scale = min(h / ih, w / iw)
    return max(1, min(h, round(ih * scale))), max(1, min(w, round(iw * scale)))
