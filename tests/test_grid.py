"""vaeserve.grid.tile: the one image-grid layout behind the training report and the client's PNGs."""

from __future__ import annotations

import numpy as np

from vaeserve.grid import tile


def test_cells_sit_in_row_major_order_with_fill_between_them() -> None:
    images = np.stack([np.full((1, 2, 3), v, dtype=np.float32) for v in (0.25, 0.75, 1.0)])
    grid = tile(images, columns=2, pad=1, fill=0.5)
    assert grid.shape == (1, 2 * 3 + 1, 2 * 4 + 1)
    np.testing.assert_array_equal(grid[0, 1:3, 1:4], 0.25)
    np.testing.assert_array_equal(grid[0, 1:3, 5:8], 0.75)
    np.testing.assert_array_equal(grid[0, 4:6, 1:4], 1.0)
    np.testing.assert_array_equal(grid[0, 4:6, 5:8], 0.5)  # no fourth image: fill
    assert (grid[0, 0] == 0.5).all() and (grid[0, 3] == 0.5).all() and (grid[0, :, 4] == 0.5).all()


def test_default_is_a_square_grid_and_values_are_clipped() -> None:
    images = np.linspace(-1.0, 2.0, 5 * 3 * 4 * 4, dtype=np.float32).reshape(5, 3, 4, 4)
    grid = tile(images)
    assert grid.shape == (3, 2 * 5 + 1, 3 * 5 + 1)  # 5 images: 3 columns, 2 rows
    assert grid.min() == 0.0 and grid.max() == 1.0
