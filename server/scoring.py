"""The Score RPC's estimate, streamed: K posterior samples per image, sent to the likelihood graph chunk by chunk.

For N images with posterior N(mean_i, diag(exp(log_variance_i))) and K samples each, sample row r = k * N + i
is the k-th sample of image i (the order the request's seeded noise is drawn in, so a seed gives the same
numbers however the rows are chunked or batched). Each chunk of rows is built from a slice of the noise stream
and gathered rows of the image's mean, log-variance and pixels; the likelihood graph's batcher computes z, log
p(x|z) and the importance weight log w per row (graphs.likelihood), and `add` files them. At the end, per image:

    reconstruction = mean_k log p(x|z_k)          kl = KL(q(z|x) || N(0, I)), closed form
    elbo = reconstruction - kl                     log_likelihood = log mean_k w_k   (importance-weighted bound)

Why chunks: a call may ask for N = 4096 images x K = 1000 samples, 4 million decoder rows. Built at once, their
inputs alone are gigabytes, and the numpy work, on the event loop, stalls every other call for seconds. Chunk by
chunk, the call holds its two [K, N] float32 results and at most `in_flight` chunks of inputs, and the event
loop does one chunk's gather between awaits: other calls, health checks included, run in between. A call that
is cancelled or runs out of time stops submitting (`servicer.Score`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vaeserve import elbo
from vaeserve.repository import IMAGE, LOG_VARIANCE, MEAN

from .graphs import EPS, LOG_PX, LOG_W
from .noise import Noise


class ImportanceSampler:
    """The rows of one Score call, chunk by chunk, and the estimate from their results."""

    def __init__(self, mean: np.ndarray, log_variance: np.ndarray, images: np.ndarray, k: int, noise: Noise) -> None:
        """mean, log_variance: [N, D] float32; images: [N, ...] as the request sent them (float32 or uint8)."""
        self.mean, self.log_variance = mean, log_variance
        self.images = images
        self.n, self.d = mean.shape
        self.k = k
        self.noise = noise
        self.log_px = np.empty(k * self.n, np.float32)
        self.log_w = np.empty(k * self.n, np.float32)

    @property
    def rows(self) -> int:
        return self.k * self.n

    def chunks(self, size: int) -> Iterator[tuple[int, int, dict[str, bytes]]]:
        """(start, stop, the likelihood graph's inputs for rows [start, stop)), `size` rows at a time, in order."""
        for start in range(0, self.rows, size):
            stop = min(start + size, self.rows)
            image = np.arange(start, stop) % self.n
            yield (
                start,
                stop,
                {
                    IMAGE: self.images[image].tobytes(),
                    MEAN: self.mean[image].tobytes(),
                    LOG_VARIANCE: self.log_variance[image].tobytes(),
                    EPS: self.noise.take((stop - start) * self.d),
                },
            )

    def add(self, start: int, stop: int, outputs: dict[str, bytes]) -> None:
        self.log_px[start:stop] = np.frombuffer(outputs[LOG_PX], np.float32)
        self.log_w[start:stop] = np.frombuffer(outputs[LOG_W], np.float32)

    def estimate(self) -> dict[str, np.ndarray]:
        """elbo, log_likelihood, reconstruction and kl per image, float32 [N]."""
        log_px = self.log_px.reshape(self.k, self.n).astype(np.float64)
        log_w = self.log_w.reshape(self.k, self.n).astype(np.float64)
        reconstruction = log_px.mean(0)
        kl = elbo.kl_to_standard_normal(self.mean.astype(np.float64), self.log_variance.astype(np.float64)).sum(1)
        estimate = {"elbo": reconstruction - kl, "log_likelihood": elbo.log_mean_exp(log_w),
                    "reconstruction": reconstruction, "kl": kl}  # fmt: skip
        return {name: values.astype(np.float32) for name, values in estimate.items()}
