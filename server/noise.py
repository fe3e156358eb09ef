"""The server's randomness: the per-request noise eps of the reparameterization z = mean + sigma * eps.

A seeded request draws its noise from its own generator, PCG64(seed), before it is batched: its noise is
byte-identical whatever else shares its onnxruntime run (and z is computed row by row from it, so a row's z
does not depend on the batch either). Unseeded requests take the next draws of one process-wide generator
seeded from OS entropy (fresh noise per request, without an entropy read per call), drawn in blocks so that
a call's noise is a slice of bytes, not a numpy call (numpy per batch rather than per call: BENCHMARKS.md,
"Design measurements"). Noise is float32 bytes, the form the batcher takes; it is only drawn from the
event loop's thread.
"""

from __future__ import annotations

import numpy as np


class Noise:
    """Consecutive standard normal float32 draws of one generator, `block` values at a time, taken as bytes. Draws
    are a stream: taking n then m values gives the bytes one take of n + m would (numpy's generators draw in
    order), so a seeded call's noise does not depend on how it is chunked."""

    def __init__(self, generator: np.random.Generator, block: int = 1 << 16) -> None:
        self._generator = generator
        self._block = block
        self._buffer = b""
        self._offset = 0

    def take(self, n: int) -> bytes:
        """The next n values."""
        end = self._offset + 4 * n
        if end > len(self._buffer):
            fresh = self._generator.standard_normal(max(n, self._block), dtype=np.float32).tobytes()
            self._buffer, self._offset, end = self._buffer[self._offset :] + fresh, 0, 4 * n
        out = self._buffer[self._offset : end]
        self._offset = end
        return out


_unseeded = Noise(np.random.Generator(np.random.PCG64()))


def noise(seed: int | None) -> Noise:
    """The noise of one call: its own stream of PCG64(seed) (drawn as taken), or the process-wide unseeded one."""
    return _unseeded if seed is None else Noise(np.random.Generator(np.random.PCG64(seed)), block=1)


def draw_eps(seed: int | None, rows: int, latent_dim: int) -> bytes:
    """Standard normal noise [rows, latent_dim] as float32 bytes: from PCG64(seed), or the unseeded stream."""
    return noise(seed).take(rows * latent_dim)
