"""The ELBO's pieces in numpy, for the code that runs the exported graphs (the server, and export's measurements
of them): the diagonal Gaussian posterior q(z|x) = N(mean, diag(exp(log_variance))), its reparameterization and
KL to the N(0, I) prior, and log p(x|z) from the decoder's logits.

The training package has the same formulas in PyTorch (training/model.py), where gradients flow through them;
tests hold the two to each other. Sums over dimensions run in float64: a 784-pixel log-likelihood summed in
float32 loses the digits that tell models apart.
"""

from __future__ import annotations

import math

import numpy as np

from vaeserve.repository import LIKELIHOODS

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mean: np.ndarray, log_variance: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mean + exp(0.5 * log_variance) * eps, a sample of q(z|x) when eps ~ N(0, I)."""
    return mean + np.exp(0.5 * log_variance) * eps


def kl_to_standard_normal(mean: np.ndarray, log_variance: np.ndarray) -> np.ndarray:
    """KL(q || N(0, I)) per latent dimension, closed form (same shape as `mean`)."""
    return 0.5 * (mean**2 + np.exp(log_variance) - 1.0 - log_variance)


def log_posterior(z: np.ndarray, mean: np.ndarray, log_variance: np.ndarray) -> np.ndarray:
    """log q(z|x), summed over the last axis."""
    z, mean, log_variance = (np.asarray(a, np.float64) for a in (z, mean, log_variance))
    return (-0.5 * (LOG_2PI + log_variance + (z - mean) ** 2 / np.exp(log_variance))).sum(-1)


def log_prior(z: np.ndarray) -> np.ndarray:
    """log N(z; 0, I), summed over the last axis."""
    z = np.asarray(z, np.float64)
    return (-0.5 * (LOG_2PI + z**2)).sum(-1)


def log_likelihood(x: np.ndarray, logits: np.ndarray, likelihood: str, log_sigma: float | None = None) -> np.ndarray:
    """log p(x|z) per row ([rows, C, H, W] -> [rows]), from the decoder's logits: Bernoulli on the grey values
    (a stable softplus, never a clipped probability), or Gaussian with mean sigmoid(logits) and one sigma."""
    x, logits = np.asarray(x, np.float64), np.asarray(logits, np.float64)
    if likelihood == "bernoulli":
        # log p = x * l - softplus(l), with softplus(l) = max(l, 0) + log1p(exp(-|l|))
        log_p = x * logits - (np.maximum(logits, 0.0) + np.log1p(np.exp(-np.abs(logits))))
    elif likelihood == "gaussian":
        if log_sigma is None:
            raise ValueError("a Gaussian likelihood needs log_sigma")
        mean = 1.0 / (1.0 + np.exp(-logits))
        log_p = -0.5 * (mean - x) ** 2 * math.exp(-2.0 * log_sigma) - log_sigma - 0.5 * LOG_2PI
    else:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    return log_p.reshape(len(log_p), -1).sum(1)


def log_importance_weight(z: np.ndarray, mean: np.ndarray, log_variance: np.ndarray, log_px: np.ndarray) -> np.ndarray:
    """log w = log p(x|z) + log p(z) - log q(z|x) per row: the term whose mean over posterior samples z_k is the
    ELBO's reconstruction minus KL, and whose log-mean-exp is the importance-weighted bound on log p(x)."""
    return np.asarray(log_px, np.float64) + log_prior(z) - log_posterior(z, mean, log_variance)


def log_mean_exp(log_w: np.ndarray, axis: int = 0) -> np.ndarray:
    """log (1/K) sum_k exp(log_w_k) along `axis`, without overflow: the importance-weighted bound from K weights."""
    top = log_w.max(axis)
    return top + np.log(np.exp(log_w - np.expand_dims(top, axis)).sum(axis)) - math.log(log_w.shape[axis])
