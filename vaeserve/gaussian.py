"""The diagonal Gaussian posterior q(z|x) = N(mean, diag(exp(log_variance))) in numpy, for the code that runs the
exported graphs (the server, and export's measurements of them): the reparameterization and the KL to the prior.

The training package has the same formulas in PyTorch (training/model.py), where gradients flow through them.
"""

from __future__ import annotations

import numpy as np


def reparameterize(mean: np.ndarray, log_variance: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mean + exp(0.5 * log_variance) * eps, a sample of q(z|x) when eps ~ N(0, I)."""
    return mean + np.exp(0.5 * log_variance) * eps


def kl_to_standard_normal(mean: np.ndarray, log_variance: np.ndarray) -> np.ndarray:
    """KL(q || N(0, I)) per latent dimension, closed form (same shape as `mean`)."""
    return 0.5 * (mean**2 + np.exp(log_variance) - 1.0 - log_variance)
