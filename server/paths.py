"""Paths through the latent space between two points, for the Interpolate RPC: straight lines, or great-circle
arcs (slerp), which keep a path's points at the norms typical of N(0, I) draws instead of cutting through the
low-density middle."""

from __future__ import annotations

import numpy as np

PARALLEL = 1e-6  # below this angle slerp is a straight line (and its formula divides by ~0)


def interpolate(a: np.ndarray, b: np.ndarray, steps: int, spherical: bool = False) -> np.ndarray:
    """[steps, D] points from a to b, both ends included, evenly spaced in t."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    if spherical:
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        omega = np.arccos(np.clip(a @ b / norms, -1.0, 1.0)) if norms > 0 else 0.0
        if omega > PARALLEL:
            path = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
            path[0], path[-1] = a, b  # exactly the endpoints, whatever the rounding
            return path.astype(np.float32)
    return ((1 - t) * a + t * b).astype(np.float32)
