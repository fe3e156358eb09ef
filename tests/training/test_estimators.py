"""The gradient estimators: one bound, different gradients; the score function is unbiased but far noisier."""

from __future__ import annotations

import pytest
import torch

from vaeserve.training.config import TrainConfig, TrainConfigError
from vaeserve.training.data import load_dataset
from vaeserve.training.estimators import SAMPLING_ESTIMATORS, gradient_variance, training_loss
from vaeserve.training.model import VAE, ModelConfig, elbo_loss


def tiny_model() -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    return VAE(ModelConfig(image_shape=(1, 8, 8), latent_dim=2, hidden_dim=16)), load_dataset({"name": "digits"}).test


def encoder_gradient(model: VAE, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.encoder.parameters()))])


def test_every_estimator_reports_the_same_bound_for_the_same_noise():
    model, x = tiny_model()
    eps = torch.randn(len(x), 2, generator=torch.Generator().manual_seed(0))
    reference = elbo_loss(model, x, beta=0.5, eps=eps)
    for estimator in SAMPLING_ESTIMATORS:
        terms = training_loss(model, x, estimator, beta=0.5, free_bits=0.0, eps=eps)
        for key in ("loss", "neg_elbo", "reconstruction", "kl"):
            torch.testing.assert_close(terms[key], reference[key], msg=f"{estimator} {key}")


def test_score_function_gradient_has_the_reparameterized_expectation():
    # Many copies of 4 images, each with its own noise: one backward pass averages thousands of draws.
    model, x = tiny_model()
    copies = x[:4].repeat(20_000, 1, 1, 1)

    def mean_gradient(estimator: str, seed: int) -> torch.Tensor:
        eps = torch.randn(len(copies), 2, generator=torch.Generator().manual_seed(seed))
        return encoder_gradient(model, training_loss(model, copies, estimator, 1.0, 0.0, eps)["loss"])

    reparameterized = mean_gradient("reparameterization", 1)
    score_function = mean_gradient("score-function-baseline", 2)  # other noise: only the expectations agree
    assert (score_function - reparameterized).norm() < 0.1 * reparameterized.norm()


def test_score_function_is_noisier_and_the_baseline_helps():
    model, x = tiny_model()
    result = gradient_variance(model, x[:32], draws=32, seed=0)
    variance = {k: v["variance"] for k, v in result.items()}
    assert variance["score-function"] > variance["score-function-baseline"] > variance["reparameterization"] > 0
    assert all(v["mean_gradient_norm2"] > 0 for v in result.values())
    assert gradient_variance(model, x[:32], draws=32, seed=0) == result  # seeded


def test_deterministic_estimator_decodes_the_mean_and_ignores_the_noise():
    model, x = tiny_model()
    draws = [torch.randn(len(x), 2, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    a, b = (training_loss(model, x, "deterministic", beta=0.0, free_bits=0.0, eps=eps) for eps in draws)
    torch.testing.assert_close(a["loss"], b["loss"])
    expected = model.reconstruction_nll(x, model.decode(model.encode(x).mean)).mean()
    torch.testing.assert_close(a["loss"], expected)
    # With beta 0 nothing depends on the log-variance: its half of the encoder head gets no gradient.
    (head_grad,) = torch.autograd.grad(a["loss"], [model.encoder.head.weight])
    assert head_grad[:2].abs().sum() > 0 and torch.equal(head_grad[2:], torch.zeros_like(head_grad[2:]))


def test_score_function_estimators_refuse_several_ranks():
    TrainConfig(estimator="score-function").check(world_size=1)
    TrainConfig(estimator="deterministic").check(world_size=2)
    with pytest.raises(TrainConfigError, match="--estimator score-function-baseline runs in one process"):
        TrainConfig(estimator="score-function-baseline").check(world_size=2)
    with pytest.raises(TrainConfigError, match="--estimator must be one of"):
        TrainConfig(estimator="pathwise").check()
