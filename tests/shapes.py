"""Coloured shapes with known generating factors: a folder of PNGs to train, test and benchmark on.

`write_shapes(folder, count, size, seed)` draws `count` pictures of one shape each (circle, square or triangle,
filled, on black) with a seeded random hue, size and position, into folder/SHAPE/NNNNN.png (the subfolder is the
label), and writes folder/factors.csv: file (relative), shape (index into SHAPES), hue, scale, x, y (all in
[0, 1]), the truth a linear probe of the latent space is checked against; `read_factors` reads it back.
"""

from __future__ import annotations

import colorsys
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
FACTORS = ("shape", "hue", "scale", "x", "y")
FACTORS_FILE = "factors.csv"


def draw(shape: str, hue: float, scale: float, x: float, y: float, size: int) -> Image.Image:
    """One shape of radius 0.15..0.3 of the picture, centred at (x, y) in the part of the picture it fits in."""
    image = Image.new("RGB", (size, size))
    radius = size * (0.15 + 0.15 * scale)
    cx, cy = radius + x * (size - 2 * radius), radius + y * (size - 2 * radius)
    colour = tuple(round(255 * v) for v in colorsys.hsv_to_rgb(hue, 1.0, 1.0))
    pen = ImageDraw.Draw(image)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=colour)
    return image


def write_shapes(folder: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    """`count` pictures under folder/SHAPE/ and their factors in folder/factors.csv; returns the csv's path."""
    rng = np.random.default_rng(seed)
    shapes = rng.integers(0, len(SHAPES), count)
    hue, scale, x, y = rng.random((4, count))
    hue = 0.8 * hue  # red to purple, short of the circle's way back to red: one linear factor
    rows = []
    for i in range(count):
        name = SHAPES[shapes[i]]
        (folder / name).mkdir(parents=True, exist_ok=True)
        relative = f"{name}/{i:05d}.png"
        draw(name, hue[i], scale[i], x[i], y[i], size).save(folder / relative)
        rows.append([relative, int(shapes[i]), hue[i], scale[i], x[i], y[i]])
    path = folder / FACTORS_FILE
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *FACTORS])
        writer.writerows(rows)
    return path


def read_factors(folder: Path, files: list[str]) -> dict[str, np.ndarray]:
    """Each factor's values for `files` (relative to `folder`, as split.json lists them), in their order."""
    with (folder / FACTORS_FILE).open(newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    return {name: np.array([float(rows[file][name]) for file in files]) for name in FACTORS}
