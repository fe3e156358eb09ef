"""How good a trained VAE is, in nats per image: the ELBO's terms, active units and the importance-weighted bound.

Everything is seeded, so the same checkpoint gives the same figures on every call.
"""

from __future__ import annotations

import math

import torch

from .model import VAE, elbo_loss, reparameterize, standard_normal_log_prob

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: a latent dimension is active when Cov_x(E_q[z_d]) exceeds this
IW_MAX_ELEMENTS = 1 << 22  # pixels decoded at once by the IWAE bound: K samples x batch x pixels, ~16 MB of logits


def batches(images: torch.Tensor, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


@torch.no_grad()
def elbo_terms(
    model: VAE, images: torch.Tensor, seed: int = 0, batch_size: int = 500, sample: bool = True
) -> dict[str, torch.Tensor]:
    """Single-sample neg-ELBO and its parts averaged over `images`, plus the posterior means [N, latent_dim].

    `sample=False` decodes the posterior mean instead of a sample (runs trained with `--estimator deterministic`).
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    totals: dict[str, torch.Tensor] = {}
    means = []
    for x in batches(images, batch_size):
        x = x.to(device)
        eps = None if sample else torch.zeros(len(x), model.cfg.latent_dim, device=device)
        terms = elbo_loss(model, x, generator=generator, eps=eps)
        for key in ("neg_elbo", "reconstruction", "kl", "kl_per_dim"):
            totals[key] = totals.get(key, 0) + terms[key] * len(x)
        means.append(model.encode(x).mean)
    result = {key: value / len(images) for key, value in totals.items()}
    result["means"] = torch.cat(means)
    return result


@torch.no_grad()
def iw_nll(model: VAE, images: torch.Tensor, samples: int, seed: int = 0, batch_size: int = 100) -> torch.Tensor:
    """-log p(x) estimated with K importance samples from q(z|x) (Burda et al. 2016), averaged over `images`.

    log p(x) >= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K, computed K-chunk by K-chunk and
    combined with logsumexp, so memory is bounded by IW_MAX_ELEMENTS whatever K is.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for x in batches(images, batch_size):
        x = x.to(device)
        posterior = model.encode(x)
        chunk = max(1, IW_MAX_ELEMENTS // (len(x) * model.cfg.num_pixels))
        partial = []  # logsumexp of each chunk's log-weights, [n]
        for start in range(0, samples, chunk):
            k = min(chunk, samples - start)
            eps = torch.randn((k, *posterior.mean.shape), generator=generator, device=device)
            z = reparameterize(posterior.mean, posterior.log_variance, eps)  # [k, n, latent]
            logits = model.decode(z.flatten(0, 1)).unflatten(0, (k, len(x)))
            log_w = -model.reconstruction_nll(x, logits) + standard_normal_log_prob(z) - posterior.log_prob(z)
            partial.append(torch.logsumexp(log_w, dim=0))
        log_px = torch.logsumexp(torch.stack(partial), dim=0) - math.log(samples)
        total -= log_px.double().sum()
    return total / len(images)


def evaluate(model: VAE, images: torch.Tensor, iw_samples: int = 1000, seed: int = 0, sample: bool = True) -> dict:
    """The `vaeserve evaluate` figures for `images` as plain JSON-able values (`sample`: see `elbo_terms`)."""
    terms = elbo_terms(model, images, seed, sample=sample)
    activity = terms["means"].var(dim=0, unbiased=False)
    return {
        "neg_elbo": terms["neg_elbo"].item(),
        "reconstruction": terms["reconstruction"].item(),
        "kl": terms["kl"].item(),
        "kl_per_dim": terms["kl_per_dim"].tolist(),
        "active_units": int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
        "iw_nll": iw_nll(model, images, iw_samples, seed).item() if iw_samples > 0 else None,
        "iw_samples": iw_samples,
        "num_images": len(images),
    }
