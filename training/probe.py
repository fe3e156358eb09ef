"""Linear probes of a latent space against the factors that generated its pictures: how much of each factor a
linear function of the posterior means recovers, fitted on one set of pictures and scored on held-out ones.

    continuous factor (hue, size, x, y)   least squares; held-out R^2 = 1 - SSE / (spread about the held-out
                                          mean): 1 recovered exactly, 0 no better than a constant, below 0 worse
    categorical factor (shape)            multinomial logistic regression; held-out accuracy (chance: the share
                                          of the held-out set's commonest class)

A probe also says which latent dimension it leans on most: the largest |coefficient| on the means standardized
over the fitting set (summed over classes for a categorical factor), so that dimensions of different spread
compare; a traversal of that dimension is the one that should move the factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import r2_score

MIN_SPREAD = 1e-12  # a collapsed dimension's means barely vary: standardizing must not divide by zero


class ProbeError(ValueError):
    """Means and factors that cannot be probed (mismatched lengths, too few pictures, non-finite values)."""


@dataclass(frozen=True)
class Probe:
    factor: str
    metric: str  # "R2" or "accuracy"
    score: float  # held out
    chance: float  # what ignoring the means scores on the held-out set: 0 for R^2, the commonest class's share
    weights: np.ndarray  # [latent_dim] |coefficient| per standardized dimension

    @property
    def dimension(self) -> int:
        """The latent dimension (0-based) the probe leans on most."""
        return int(np.argmax(self.weights))


def standardized(fit: np.ndarray, held_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets of means centred and scaled by the fitting set's mean and standard deviation per dimension."""
    centre, spread = fit.mean(axis=0), np.maximum(fit.std(axis=0), MIN_SPREAD)
    return (fit - centre) / spread, (held_out - centre) / spread


def check(means: np.ndarray, values: np.ndarray, name: str) -> None:
    if means.ndim != 2 or values.shape != (len(means),):
        raise ProbeError(f"{name}: {values.shape} factor values for means of shape {means.shape}")
    if len(means) < 2:
        raise ProbeError(f"{name}: {len(means)} pictures are too few to probe")
    if not (np.isfinite(means).all() and np.isfinite(values).all()):
        raise ProbeError(f"{name}: means or factor values are not all finite")


def probe(
    factor: str,
    fit_means: np.ndarray,
    fit_values: np.ndarray,
    held_out_means: np.ndarray,
    held_out_values: np.ndarray,
    categorical: bool = False,
) -> Probe:
    """One factor's probe: fitted on (fit_means [N, D], fit_values [N]), scored on the held-out pair."""
    check(fit_means, fit_values, f"{factor} (fitting set)")
    check(held_out_means, held_out_values, f"{factor} (held-out set)")
    x_fit, x_held_out = standardized(fit_means.astype(np.float64), held_out_means.astype(np.float64))
    if categorical:
        if len(np.unique(fit_values)) < 2:
            raise ProbeError(f"{factor}: the fitting set holds one class only")
        classifier = LogisticRegression(max_iter=1000).fit(x_fit, fit_values)
        _, counts = np.unique(held_out_values, return_counts=True)
        return Probe(factor, "accuracy", float((classifier.predict(x_held_out) == held_out_values).mean()),
                     float(counts.max() / len(held_out_values)), np.abs(classifier.coef_).sum(axis=0))  # fmt: skip
    regression = LinearRegression().fit(x_fit, fit_values)
    return Probe(factor, "R2", float(r2_score(held_out_values, regression.predict(x_held_out))), 0.0,
                 np.abs(regression.coef_))  # fmt: skip


def probe_factors(
    fit_means: np.ndarray,
    fit_factors: dict[str, np.ndarray],
    held_out_means: np.ndarray,
    held_out_factors: dict[str, np.ndarray],
    categorical: tuple[str, ...] = (),
) -> list[Probe]:
    """A probe per factor of `fit_factors` (name -> values [N]); the names in `categorical` are classes."""
    return [
        probe(name, fit_means, values, held_out_means, held_out_factors[name], categorical=name in categorical)
        for name, values in fit_factors.items()
    ]
