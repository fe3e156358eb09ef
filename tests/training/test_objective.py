"""The objective's math: closed-form KL, reparameterization gradients, free bits, KL warm-up, the IWAE bound."""

from __future__ import annotations

import math

import pytest
import torch

from vaeserve.training.config import TrainConfig
from vaeserve.training.data import load_dataset
from vaeserve.training.evaluate import elbo_terms, iw_nll
from vaeserve.training.model import (
    VAE,
    DiagonalGaussian,
    ModelConfig,
    elbo_loss,
    reparameterize,
    standard_normal_log_prob,
)
from vaeserve.training.train import kl_weight


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.randn(3, 4), torch.randn(3, 4))
    eps = torch.randn(200_000, 3, 4, generator=torch.Generator().manual_seed(1))
    z = reparameterize(q.mean, q.log_variance, eps)
    log_ratio = q.log_prob(z) - standard_normal_log_prob(z)  # [samples, 3]
    closed = q.kl_per_dim().sum(-1)
    stderr = log_ratio.std(0) / math.sqrt(len(eps))
    assert torch.all((log_ratio.mean(0) - closed).abs() < 5 * stderr)


def test_reparameterization_gradients_reach_mean_and_log_variance():
    mean = torch.tensor([0.5, -1.0], requires_grad=True)
    log_variance = torch.tensor([0.2, -0.4], requires_grad=True)
    eps = torch.tensor([1.5, -0.3])
    reparameterize(mean, log_variance, eps).sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(2))
    torch.testing.assert_close(log_variance.grad, 0.5 * torch.exp(0.5 * log_variance.detach()) * eps)


def small_model(latent_dim: int = 4) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    model = VAE(ModelConfig(image_shape=(1, 8, 8), latent_dim=latent_dim))
    return model, load_dataset({"name": "digits"}).test[:64]


def test_elbo_gradients_reach_every_encoder_and_decoder_weight():
    model, x = small_model()
    elbo_loss(model, x, generator=torch.Generator().manual_seed(0))["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_free_bits_floors_each_dimension_and_stops_its_gradient():
    model, x = small_model()
    eps = torch.randn(len(x), 4, generator=torch.Generator().manual_seed(0))
    plain = elbo_loss(model, x, eps=eps)
    assert torch.equal(plain["loss"], plain["neg_elbo"])
    floored = elbo_loss(model, x, free_bits=50.0, eps=eps)  # far above every dimension's KL at init
    torch.testing.assert_close(floored["loss"], floored["reconstruction"] + 4 * 50.0)
    torch.testing.assert_close(floored["neg_elbo"], plain["neg_elbo"])  # the reported bound ignores the floor
    # Below the floor the KL term contributes nothing: the gradient is the reconstruction's alone.
    grads = torch.autograd.grad(floored["loss"], list(model.parameters()))
    recon_grads = torch.autograd.grad(elbo_loss(model, x, eps=eps)["reconstruction"], list(model.parameters()))
    for g, r in zip(grads, recon_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_beta_scales_the_kl_term():
    model, x = small_model()
    eps = torch.randn(len(x), 4, generator=torch.Generator().manual_seed(0))
    terms = elbo_loss(model, x, beta=0.25, eps=eps)
    torch.testing.assert_close(terms["loss"], terms["reconstruction"] + 0.25 * terms["kl"])


def test_kl_warmup_ramps_linearly_per_step_to_beta():
    cfg = TrainConfig(beta=2.0, kl_warmup_epochs=2)
    assert kl_weight(cfg, epoch=0, step=0, steps_per_epoch=10) == pytest.approx(2.0 / 20)
    assert kl_weight(cfg, epoch=0, step=9, steps_per_epoch=10) == pytest.approx(1.0)
    assert kl_weight(cfg, epoch=1, step=9, steps_per_epoch=10) == pytest.approx(2.0)
    assert kl_weight(cfg, epoch=5, step=3, steps_per_epoch=10) == pytest.approx(2.0)
    assert kl_weight(TrainConfig(beta=0.5), epoch=0, step=0, steps_per_epoch=10) == 0.5


def test_gaussian_likelihood_nll_is_the_normal_density():
    torch.manual_seed(0)
    model = VAE(
        ModelConfig(image_shape=(1, 4, 4), latent_dim=2, likelihood="gaussian", learn_variance=False, sigma=0.3)
    )
    x, logits = torch.rand(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    expected = -torch.distributions.Normal(torch.sigmoid(logits), 0.3).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(model.reconstruction_nll(x, logits), expected)
    assert "log_sigma" not in dict(model.named_parameters())
    learned = VAE(ModelConfig(image_shape=(1, 4, 4), latent_dim=2, likelihood="gaussian"))
    assert "log_sigma" in dict(learned.named_parameters())


def test_importance_weighted_bound_tightens_with_k():
    model, x = small_model()
    model.eval()
    neg_elbo = elbo_terms(model, x)["neg_elbo"].item()
    one = iw_nll(model, x, samples=1).item()
    many = iw_nll(model, x, samples=200).item()
    assert one == pytest.approx(neg_elbo, rel=0.02)  # K=1 is the single-sample ELBO estimate
    assert many < one
    assert iw_nll(model, x, samples=200).item() == many  # seeded: the same figure every call
