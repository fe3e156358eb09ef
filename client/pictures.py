"""Pictures of images: a grid of a batch, with labelled rows, as a PIL image or a PNG file (what the client
commands and the explorer write). PIL loads when a picture is made."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from vaeserve.grid import tile


def render_grid(
    images: np.ndarray, columns: int | None = None, scale: int = 1, row_labels: Sequence[str] = ()
):  # -> PIL.Image.Image
    """Images [N, C, H, W] in [0, 1] (all-NaN images: blank cells) as one picture: a grid `columns` wide (default:
    square) with 1-pixel grey separators, each pixel repeated `scale` times; `row_labels`, when given, are written
    left of the rows in turn (e.g. "input", "reconstruction")."""
    from PIL import Image

    if images.dtype == np.uint8:  # as a server sends images when asked for uint8
        images = images.astype(np.float32) / 255
    grid = tile(images, columns).repeat(scale, axis=1).repeat(scale, axis=2)
    pixels = (grid * 255).round().astype(np.uint8)
    # Grey for one channel (or the first of an unusual count), RGB for three.
    picture = Image.fromarray(pixels.transpose(1, 2, 0) if len(pixels) == 3 else pixels[0])
    if row_labels:
        picture = _label_rows(picture, row_labels, row_height=(images.shape[2] + 1) * scale, top=scale)
    return picture


LABEL_GAP = 6  # pixels between a label and the edges beside it


def _label_rows(picture, labels: Sequence[str], row_height: int, top: int):  # PIL images in and out
    """The picture with a margin on its left holding labels[r % len(labels)] beside row r (rows `row_height`
    pixels apart from `top`): dark text on the separators' grey."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, min(16, row_height // 2)))
    margin = LABEL_GAP * 2 + math.ceil(max(font.getlength(label) for label in labels))
    grey = 128 if picture.mode == "L" else (128, 128, 128)
    labelled = Image.new(picture.mode, (margin + picture.width, picture.height), grey)
    labelled.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    for r in range((picture.height - top) // row_height):
        middle = top + r * row_height + (row_height - top) / 2
        draw.text((LABEL_GAP, middle), labels[r % len(labels)], fill=0 if picture.mode == "L" else (0, 0, 0),
                  font=font, anchor="lm")  # fmt: skip
    return labelled


def write_grid(
    images: np.ndarray,
    path: str | Path | IO[bytes],
    columns: int | None = None,
    scale: int = 1,
    row_labels: Sequence[str] = (),
) -> None:
    """`render_grid(images, columns, scale, row_labels)` saved as a PNG file (a path or a binary file object)."""
    render_grid(images, columns, scale, row_labels).save(path, format="PNG")
