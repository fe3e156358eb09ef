"""vaeserve.grid.tile: the one image-grid layout behind the training report and the client's PNGs."""

from __future__ import annotations

import numpy as np

from vaeserve.grid import SEPARATOR, tile


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


def test_separators_are_grey_by_default_and_nan_images_leave_blank_cells() -> None:
    black = np.zeros((1, 1, 2, 2), np.float32)
    blank = np.full((1, 1, 2, 2), np.nan, np.float32)
    grid = tile(np.concatenate([black, blank, black]), columns=3)
    assert grid[0, 0, 0] == SEPARATOR == 0.5  # visible between black digits
    np.testing.assert_array_equal(grid[0, 1:3, 1:3], 0.0)
    np.testing.assert_array_equal(grid[0, 1:3, 4:6], SEPARATOR)  # the NaN image's cell
    np.testing.assert_array_equal(grid[0, 1:3, 7:9], 0.0)


def test_labelled_rows_carry_their_label_beside_them() -> None:
    from vaeserve.client.pictures import render_grid

    images = np.zeros((4, 1, 8, 8), np.float32)
    images[2:] = 1.0  # row 0 black, row 1 white
    plain = render_grid(images, columns=2, scale=4)
    labelled = render_grid(images, columns=2, scale=4, row_labels=("input", "reconstruction"))
    assert plain.size == (2 * 36 + 4, 2 * 36 + 4) and labelled.mode == plain.mode == "L"
    margin = labelled.width - plain.width
    assert margin > 60 and labelled.height == plain.height  # room for "reconstruction"
    assert np.array_equal(np.asarray(labelled)[:, margin:], np.asarray(plain))
    pixels = np.asarray(labelled)[:, :margin]
    inked = [(pixels[4 + 36 * r : 4 + 36 * r + 32] < 64).sum() for r in range(2)]  # dark text in each row's band
    assert inked[0] > 20 and inked[1] > inked[0]  # "reconstruction" is longer than "input"
    assert (pixels[:4] == 128).all()  # nothing above the first row
