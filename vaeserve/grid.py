"""Images [N, C, H, W] tiled into one grid array: the training report's PNGs and the client's PNGs share it."""

from __future__ import annotations

import math

import numpy as np

# Mid-grey between cells: visible beside both black backgrounds and white strokes, so cells never merge.
SEPARATOR = 0.5


def tile(images: np.ndarray, columns: int | None = None, pad: int = 1, fill: float = SEPARATOR) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> [C, rows*(H+pad)+pad, columns*(W+pad)+pad], `pad` pixels of `fill` around cells.

    `columns` defaults to a square grid; values are clipped to [0, 1]; an image that is all NaN leaves its cell
    blank (`fill`), which lays out rows of different lengths.
    """
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((c, rows * (h + pad) + pad, columns * (w + pad) + pad), fill, dtype=np.float32)
    for i, image in enumerate(images):
        if np.isnan(image).all():
            continue
        r, k = divmod(i, columns)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = image
    return np.clip(grid, 0.0, 1.0)
