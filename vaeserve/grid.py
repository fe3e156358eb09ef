"""Images [N, C, H, W] tiled into one grid array: the training report's PNGs and the client's PNGs share it."""

from __future__ import annotations

import math

import numpy as np


def tile(images: np.ndarray, columns: int | None = None, pad: int = 1, fill: float = 0.0) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> [C, rows*(H+pad)+pad, columns*(W+pad)+pad], `pad` pixels of `fill` around cells.

    `columns` defaults to a square grid; values are clipped to [0, 1].
    """
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((c, rows * (h + pad) + pad, columns * (w + pad) + pad), fill, dtype=np.float32)
    for i, image in enumerate(images):
        r, k = divmod(i, columns)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = image
    return np.clip(grid, 0.0, 1.0)
