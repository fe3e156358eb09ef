"""What a trained latent space is good for, measured with a pixel classifier and closed-form Gaussians.

Every model of the experiments (each beta, the autoencoder) is scored by `score_latent_space`:
    sample_confidence        decoded z ~ N(0, I), scored by a classifier trained on the real training split:
                             the mean top-class probability (real test images give the reference)
    sample_class_entropy     entropy of the histogram of the samples' predicted classes / log(classes): 1 when
                             every class is drawn equally often, 0 when one class is all the prior gives
    aggregate_posterior_kl   a Gaussian N(m, S) fitted to the test set's posterior means, and its closed-form KL
                             to N(0, I); with the posterior variances added to S (the moment-matched aggregate
                             posterior) as aggregate_posterior_kl_moment_matched
    midpoint_confidence      decoded midpoints between the posterior means of test pairs of different classes
    interpolation_*_step     the largest and the mean L2 change between consecutive decoded frames of a
                             16-frame straight path, divided by the distance between its end frames (a path that
                             changes evenly scores 1/15 for both), averaged over the pairs
    interpolation_class_changes  how often the classifier's class changes from frame to frame along a path, on
                             average (1: straight from one class to the other; more: through other classes)
The classifier is scikit-learn's logistic regression on the pixels: no part of any model it judges.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from .model import VAE

CLASSIFIER_MAX_IMAGES = 10_000  # logistic regression on all 60,000 MNIST images takes minutes on 2 cores
INTERPOLATION_FRAMES = 16
MIN_EIGENVALUE = 1e-12  # a collapsed latent dimension's posterior means barely vary: keep its log finite


def flat(images: torch.Tensor | np.ndarray) -> np.ndarray:
    images = images.numpy() if isinstance(images, torch.Tensor) else images
    return images.reshape(len(images), -1).astype(np.float64)


def fit_classifier(
    images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, seed: int
) -> LogisticRegression:
    """Logistic regression on the pixels of (at most CLASSIFIER_MAX_IMAGES of) the training split."""
    labels = np.asarray(labels)
    keep = np.random.default_rng(seed).permutation(len(labels))[:CLASSIFIER_MAX_IMAGES]
    return LogisticRegression(max_iter=1000).fit(flat(images)[keep], labels[keep])


def class_probabilities(classifier: LogisticRegression, images: torch.Tensor | np.ndarray) -> np.ndarray:
    return classifier.predict_proba(flat(images))


def confidence(probabilities: np.ndarray) -> float:
    """The mean top-class probability."""
    return float(probabilities.max(axis=1).mean())


def class_entropy(probabilities: np.ndarray) -> float:
    """Entropy of the predicted-class histogram divided by log(classes): 1 for an even spread."""
    classes = probabilities.shape[1]
    shares = np.bincount(probabilities.argmax(axis=1), minlength=classes) / len(probabilities)
    shares = shares[shares > 0]
    return max(0.0, float(-(shares * np.log(shares)).sum() / np.log(classes)))  # never -0.0


def gaussian_fit(points: np.ndarray, variances: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of `points` [N, D]; with per-point `variances` [N, D] added, the moments of the mixture
    of N(point, diag(variance))."""
    mean = points.mean(axis=0)
    covariance = np.atleast_2d(np.cov(points, rowvar=False, bias=True))
    if variances is not None:
        covariance = covariance + np.diag(variances.mean(axis=0))
    return mean, covariance


def kl_to_standard_normal(mean: np.ndarray, covariance: np.ndarray) -> float:
    """KL(N(mean, covariance) || N(0, I)) = 0.5 (tr S + |m|^2 - D - log det S), via S's eigenvalues."""
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance), MIN_EIGENVALUE, None)
    return float(0.5 * ((eigenvalues - 1.0 - np.log(eigenvalues)).sum() + mean @ mean))


def aggregate_posterior(means: np.ndarray, variances: np.ndarray | None) -> dict:
    """The Gaussian fit to the posterior means against the prior (and the moment-matched one when the posterior
    has variances: a deterministic encoder has none)."""
    mean, covariance = gaussian_fit(means)
    result = {
        "aggregate_posterior_kl": kl_to_standard_normal(mean, covariance),
        "aggregate_posterior_mean_norm": float(np.linalg.norm(mean)),
        "aggregate_posterior_eigenvalues": sorted(np.linalg.eigvalsh(covariance).tolist(), reverse=True),
    }
    if variances is not None:
        result["aggregate_posterior_kl_moment_matched"] = kl_to_standard_normal(*gaussian_fit(means, variances))
    return result


def different_class_pairs(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` seeded random index pairs (i, j) with labels[i] != labels[j]."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    while len(first) < count:
        i, j = rng.integers(0, len(labels), size=(2, 4 * count))
        keep = labels[i] != labels[j]
        first.extend(i[keep].tolist())
        second.extend(j[keep].tolist())
    return np.array(first[:count]), np.array(second[:count])


def interpolation_steps(frames: np.ndarray) -> tuple[float, float]:
    """frames [pairs, T, ...] -> (largest, mean) consecutive-frame L2 step over the end frames' distance."""
    frames = frames.reshape(*frames.shape[:2], -1).astype(np.float64)
    steps = np.linalg.norm(np.diff(frames, axis=1), axis=2)  # [pairs, T - 1]
    ends = np.maximum(np.linalg.norm(frames[:, -1] - frames[:, 0], axis=1), 1e-12)[:, None]
    return float((steps / ends).max(axis=1).mean()), float((steps / ends).mean())


def straight_paths(start: torch.Tensor, end: torch.Tensor, frames: int = INTERPOLATION_FRAMES) -> torch.Tensor:
    """[pairs, D] x 2 -> [pairs, frames, D], both ends included."""
    t = torch.linspace(0, 1, frames)[None, :, None]
    return start[:, None] * (1 - t) + end[:, None] * t


@torch.no_grad()
def score_latent_space(
    model: VAE,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    classifier: LogisticRegression,
    samples: int,
    pairs: int,
    seed: int,
    deterministic: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The generation figures of one model, and the arrays the figures draw: prior samples ("samples"),
    interpolation frames ("paths", [pairs, 16, C, H, W]) and the test set's posterior means ("means")."""
    model = model.cpu().eval()
    z = torch.randn(samples, model.cfg.latent_dim, generator=torch.Generator().manual_seed(seed))
    prior_images = model.decode_mean(z)
    prior_probs = class_probabilities(classifier, prior_images)
    posterior = model.encode(test_images)
    means = posterior.mean.double().numpy()
    variances = None if deterministic else posterior.log_variance.exp().double().numpy()
    i, j = different_class_pairs(test_labels.numpy(), pairs, seed)
    midpoints = model.decode_mean((posterior.mean[i] + posterior.mean[j]) / 2)
    paths = straight_paths(posterior.mean[i], posterior.mean[j])
    frames = model.decode_mean(paths.flatten(0, 1)).unflatten(0, paths.shape[:2]).numpy()
    max_step, mean_step = interpolation_steps(frames)
    frame_classes = class_probabilities(classifier, frames.reshape(-1, *frames.shape[2:])).argmax(axis=1)
    class_changes = (np.diff(frame_classes.reshape(frames.shape[:2]), axis=1) != 0).sum(axis=1).mean()
    metrics = {
        "sample_confidence": confidence(prior_probs),
        "sample_class_entropy": class_entropy(prior_probs),
        **aggregate_posterior(means, variances),
        "midpoint_confidence": confidence(class_probabilities(classifier, midpoints)),
        "interpolation_max_step": max_step,
        "interpolation_mean_step": mean_step,
        "interpolation_class_changes": float(class_changes),
    }
    arrays = {"samples": prior_images[:64].numpy(), "paths": frames, "means": means}
    return metrics, arrays


def reference_scores(
    classifier: LogisticRegression, test_images: torch.Tensor, test_labels: torch.Tensor, pairs: int, seed: int
) -> dict:
    """What real images score: the classifier on the test split, and the pixel-space midpoints of the same pairs
    the models are scored on."""
    probs = class_probabilities(classifier, test_images)
    labels = test_labels.numpy()
    i, j = different_class_pairs(labels, pairs, seed)
    images = test_images.double()
    return {
        "classifier_test_accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "test_confidence": confidence(probs),
        "test_class_entropy": class_entropy(probs),
        "pixel_midpoint_confidence": confidence(class_probabilities(classifier, (images[i] + images[j]) / 2)),
    }
