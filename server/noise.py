"""The server's randomness: per-request noise and the reparameterization z = mean + sigma * eps.

A seeded request draws its noise from its own generator, PCG64(seed), before it is batched: its noise is
byte-identical whatever else shares its onnxruntime run (and z is computed row by row from it, so a row's z
does not depend on the batch either). Unseeded requests take the next draws of one
process-wide generator seeded from OS entropy (fresh noise per request, without an entropy read per call);
it is only used from the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

_unseeded = np.random.Generator(np.random.PCG64())


def draw_eps(seed: int | None, rows: int, latent_dim: int) -> np.ndarray:
    """Standard normal noise [rows, latent_dim] float32 from PCG64(seed), or from the unseeded stream."""
    generator = _unseeded if seed is None else np.random.Generator(np.random.PCG64(seed))
    return generator.standard_normal((rows, latent_dim), dtype=np.float32)


def reparameterize(mean: np.ndarray, log_variance: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mean + exp(0.5 * log_variance) * eps, a sample of q(z|x) = N(mean, diag(exp(log_variance)))."""
    return mean + np.exp(0.5 * log_variance) * eps


def with_reparameterization(
    encode: Callable[[np.ndarray], Sequence[np.ndarray]],
) -> Callable[[np.ndarray, np.ndarray], list[np.ndarray]]:
    """The encoder's batch function: (images, eps) -> [mean, log_variance, z], z reparameterized for the whole
    batch at once, each row with its own request's eps."""

    def run(images: np.ndarray, eps: np.ndarray) -> list[np.ndarray]:
        mean, log_variance = encode(images)
        return [mean, log_variance, reparameterize(mean, log_variance, eps)]

    return run
