"""The linear probe (training/probe.py) on means whose relation to the factors is known: a factor that is a linear
function of the means is recovered, a shuffled one is not, and the dimension it names is the one it depends on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.shapes import FACTORS, SHAPES, read_factors, write_shapes
from vaeserve.training.probe import ProbeError, probe, probe_factors

DIMS = 6


def means(count: int, seed: int) -> np.ndarray:
    """Posterior-mean-like points, one dimension (4) nearly collapsed and the others of different spreads."""
    spread = np.array([1.0, 0.5, 2.0, 1.0, 1e-4, 0.3])
    return np.random.default_rng(seed).standard_normal((count, DIMS)) * spread


def linear(m: np.ndarray) -> np.ndarray:
    return 0.7 * m[:, 2] - 0.2 * m[:, 0] + 0.1


def classes(m: np.ndarray) -> np.ndarray:
    """Three classes cut from dimension 5 alone."""
    return np.digitize(m[:, 5], [-0.13, 0.13]).astype(float)


def test_a_linear_factor_is_recovered_and_a_shuffled_one_is_not() -> None:
    fit, held_out = means(600, seed=0), means(300, seed=1)
    found = probe("linear", fit, linear(fit), held_out, linear(held_out))
    assert found.metric == "R2" and found.score > 0.999 and found.chance == 0.0
    assert found.dimension == 2
    shuffle = np.random.default_rng(2).permutation
    lost = probe("shuffled", fit, shuffle(linear(fit)), held_out, shuffle(linear(held_out)))
    assert -0.1 < lost.score < 0.05


def test_a_class_cut_from_one_dimension_is_recovered_and_a_shuffled_one_is_at_chance() -> None:
    fit, held_out = means(600, seed=0), means(300, seed=1)
    found = probe("shape", fit, classes(fit), held_out, classes(held_out), categorical=True)
    assert found.metric == "accuracy" and found.score > 0.9 and found.dimension == 5
    assert 0.33 < found.chance < 0.5
    shuffle = np.random.default_rng(2).permutation
    lost = probe("shuffled", fit, shuffle(classes(fit)), held_out, shuffle(classes(held_out)), categorical=True)
    assert lost.score < lost.chance + 0.08


def test_every_factor_gets_its_probe() -> None:
    fit, held_out = means(200, seed=0), means(100, seed=1)
    factors = {"shape": classes, "linear": linear}
    probes = probe_factors(fit, {k: f(fit) for k, f in factors.items()}, held_out,
                           {k: f(held_out) for k, f in factors.items()}, categorical=("shape",))  # fmt: skip
    assert [(p.factor, p.metric, p.dimension) for p in probes] == [("shape", "accuracy", 5), ("linear", "R2", 2)]


@pytest.mark.parametrize(
    ("fit_means", "fit_values", "message"),
    [
        (np.zeros((5, 3)), np.zeros(4), r"\(4,\) factor values for means of shape \(5, 3\)"),
        (np.zeros(5), np.zeros(5), "factor values for means of shape"),
        (np.zeros((1, 3)), np.zeros(1), "1 pictures are too few"),
        (np.full((5, 3), np.nan), np.zeros(5), "not all finite"),
        (np.zeros((5, 3)), np.array([0, 1, np.inf, 0, 1]), "not all finite"),
    ],
)
def test_means_and_factors_that_cannot_be_probed_are_refused(fit_means, fit_values, message) -> None:
    with pytest.raises(ProbeError, match=message):
        probe("f", fit_means, fit_values, np.zeros((3, 3)), np.zeros(3))


def test_one_class_cannot_be_probed() -> None:
    with pytest.raises(ProbeError, match="one class only"):
        probe("shape", np.eye(3), np.ones(3), np.eye(3), np.ones(3), categorical=True)


def test_the_shapes_factors_are_read_back_for_the_files_named(tmp_path: Path) -> None:
    write_shapes(tmp_path, 12, size=8)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))[::-1]
    factors = read_factors(tmp_path, files)
    assert tuple(factors) == FACTORS and all(len(v) == 12 for v in factors.values())
    assert [SHAPES[int(s)] for s in factors["shape"]] == [f.split("/")[0] for f in files]
    assert all(0 <= factors[name].min() <= factors[name].max() <= 1 for name in FACTORS[1:])
