"""The gradient estimators `--estimator` picks: how the reconstruction term's gradient reaches the encoder.

    reparameterization       z = mean + sigma * eps (model.py): the gradient flows through the sample itself
    score-function           REINFORCE: z is a constant and the encoder learns from
                             grad E_q[f(z)] = E_q[f(z) grad log q(z|x)], with f the reconstruction NLL
    score-function-baseline  the same with f minus a baseline: the mean of the other images' f in the batch
                             (leave-one-out), which does not depend on the image's own z, so it stays unbiased
    deterministic            no sampling: z = mean (eps = 0); with --beta 0 a plain deterministic autoencoder

All share the closed-form KL and the decoder's gradient; the loss's value is the same bound for each, only the
encoder's gradient differs. `gradient_variance` measures the spread of that gradient over repeated draws.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import VAE, bound_terms, elbo_loss

# The estimators of the ELBO's gradient, in the order the experiments report them.
SAMPLING_ESTIMATORS = ("reparameterization", "score-function", "score-function-baseline")


def training_loss(
    model: nn.Module, image: torch.Tensor, estimator: str, beta: float, free_bits: float, eps: torch.Tensor
) -> dict[str, torch.Tensor]:
    """`elbo_loss`'s terms, with the gradient of `estimator`; `eps` [batch, latent_dim] is the draw's noise."""
    if estimator == "reparameterization":
        return elbo_loss(model, image, beta, free_bits, eps=eps)
    if estimator == "deterministic":
        return elbo_loss(model, image, beta, free_bits, eps=torch.zeros_like(eps))
    return score_function_loss(model, image, beta, free_bits, eps, baseline=estimator == "score-function-baseline")


def score_function_loss(
    model: VAE, image: torch.Tensor, beta: float, free_bits: float, eps: torch.Tensor, baseline: bool
) -> dict[str, torch.Tensor]:
    posterior = model.encode(image)
    z = posterior.sample(eps=eps).detach()  # a constant: no gradient flows through the sample
    reconstruction = model.reconstruction_nll(image, model.decode(z))  # [batch]; its gradient reaches the decoder
    signal = reconstruction.detach()
    if baseline and len(signal) > 1:
        signal = signal - (signal.sum() - signal) / (len(signal) - 1)
    score = signal * posterior.log_prob(z)  # its gradient is the REINFORCE estimate for the encoder
    terms = bound_terms(reconstruction, posterior, beta, free_bits)
    # score - score.detach() is zero: the loss keeps the bound's value and gains the estimator's gradient.
    terms["loss"] = terms["loss"] + (score - score.detach()).mean()
    return terms


def encoder_gradients(
    model: VAE, image: torch.Tensor, estimator: str, draws: int, generator: torch.Generator
) -> torch.Tensor:
    """The neg-ELBO's gradient w.r.t. the encoder's parameters for `draws` noise draws: [draws, parameters]."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    grads = []
    for _ in range(draws):
        eps = torch.randn(len(image), model.cfg.latent_dim, generator=generator)
        loss = training_loss(model, image, estimator, beta=1.0, free_bits=0.0, eps=eps)["loss"]
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(grads)


def gradient_variance(model: VAE, image: torch.Tensor, draws: int, seed: int) -> dict[str, dict[str, float]]:
    """Per estimator: the total variance of the encoder gradient over draws (the trace of its covariance, summed
    over parameters) and the squared norm of its mean, for one fixed model state and batch; the same noise for each."""
    result = {}
    for estimator in SAMPLING_ESTIMATORS:
        grads = encoder_gradients(model, image, estimator, draws, torch.Generator().manual_seed(seed)).double()
        result[estimator] = {
            "variance": grads.var(dim=0).sum().item(),
            "mean_gradient_norm2": grads.mean(dim=0).pow(2).sum().item(),
        }
    return result
