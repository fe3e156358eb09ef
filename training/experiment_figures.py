"""The experiments' PNGs, drawn from results.json's figures and the arrays `score_latent_space` returns.

beta_sweep.png          ELBO terms, active units, generation scores and the aggregate posterior's KL vs beta
samples.png             decoded z ~ N(0, I) per beta and for the autoencoder, side by side
interpolations.png      decoded straight paths between test pairs of different classes, per model
latent_maps.png         the test set's posterior means on their first two principal components, per model
gradient_variance.png   the estimators' gradient variance, and validation neg-ELBO while training with each
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .latent_metrics import INTERPOLATION_FRAMES
from .report import draw_latent_pca, image_grid  # also selects matplotlib's file-only backend

AE = "autoencoder"
PATHS_SHOWN = 4  # interpolation rows per model
ESTIMATOR_COLOURS = {"reparameterization": "tab:blue", "score-function": "tab:red",
                     "score-function-baseline": "tab:orange"}  # fmt: skip


def model_label(name: str) -> str:
    return "autoencoder" if name == AE else f"β = {float(name.split('-', 1)[1]):g}"


def write_figures(results: dict, arrays: dict[str, dict], test_labels: np.ndarray, out: Path) -> dict[str, str]:
    """Draw every figure into `out`; returns {figure: file name}."""
    import torch  # image_grid takes tensors

    figures = {
        "beta_sweep": plot_beta_sweep(results, out / "beta_sweep.png"),
        "samples": plot_image_panels(
            {name: torch.from_numpy(a["samples"]) for name, a in arrays.items()}, 8, results, "sample_confidence",
            "decoded samples of z ~ N(0, I), 64 per model (conf: mean top-class probability)", out / "samples.png"),
        "interpolations": plot_interpolations(arrays, results, out / "interpolations.png"),
        "latent_maps": plot_latent_maps(arrays, test_labels, out / "latent_maps.png"),
        "gradient_variance": plot_gradient_variance(results["gradient_variance"], out / "gradient_variance.png"),
    }  # fmt: skip
    return {name: path.name for name, path in figures.items()}


def entry(results: dict, name: str) -> dict:
    if name == AE:
        return results[AE]
    return next(e for e in results["beta_sweep"] if f"beta-{e['beta']:g}" == name)


def beta_axis(ax: plt.Axes, betas: list[float]) -> None:
    # symlog shows beta = 0 beside 0.1 and 4 on one readable axis
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(min(betas) - 0.02, max(betas) * 1.25)
    ax.set_xticks(betas)
    ax.set_xticklabels([f"{b:g}" for b in betas])
    ax.set_xlabel("β (KL weight in training)")
    ax.grid(alpha=0.3)


def plot_beta_sweep(results: dict, path: Path) -> Path:
    sweep, ae = results["beta_sweep"], results[AE]
    betas = [e["beta"] for e in sweep]

    def line(ax: plt.Axes, key: str, label: str, colour: str, ae_value: bool = True) -> None:
        ax.plot(betas, [e[key] for e in sweep], "o-", color=colour, label=label)
        if ae_value and key in ae:
            ax.axhline(ae[key], color=colour, linestyle="--", alpha=0.7, label=f"{label}, autoencoder")

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    terms, units, generation, prior = axes.flat
    line(terms, "reconstruction", "reconstruction NLL", "tab:blue")
    line(terms, "kl", "KL(q(z|x) || p(z))", "tab:red", ae_value=False)
    terms.set_ylabel("nats per test image")
    terms.set_title("ELBO terms on the test split")
    line(units, "active_units", "active units", "tab:green")
    units.set_ylim(-0.3, results["train_config"]["latent_dim"] + 0.3)
    units.set_ylabel(f"of {results['train_config']['latent_dim']} latent dimensions")
    units.set_title("active units (Cov_x of E[z|x] > 0.01)")
    line(generation, "sample_confidence", "prior-sample confidence", "tab:purple")
    line(generation, "midpoint_confidence", "midpoint confidence", "tab:olive")
    line(generation, "sample_class_entropy", "prior-sample class entropy", "tab:cyan")
    reference = results["reference"]
    generation.axhline(reference["test_confidence"], color="grey", linestyle=":", label="real test images' confidence")
    generation.set_ylim(0, 1.05)
    generation.set_title("generation, scored by a pixel classifier")
    line(prior, "aggregate_posterior_kl", "fit to posterior means", "tab:brown")
    line(prior, "aggregate_posterior_kl_moment_matched", "moment-matched (means + variances)", "tab:pink", False)
    prior.set_yscale("log")
    prior.set_ylabel("KL to N(0, I), nats")
    prior.set_title("aggregate posterior vs the prior (Gaussian fits)")
    for ax in axes.flat:
        beta_axis(ax, betas)
        ax.legend(fontsize="small")
    fig.suptitle(f"β sweep on {results['dataset']} (seed {results['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_image_panels(images: dict, ncols: int, results: dict, key: str, title: str, path: Path) -> Path:
    """One grid of images per model, in a row-major layout of up to 3 panels per row."""
    cols = min(3, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.6 * rows), squeeze=False)
    for ax, (name, batch) in zip(axes.flat, images.items(), strict=False):
        ax.imshow(image_grid(batch, ncols), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{model_label(name)}   conf {entry(results, name)[key]:.2f}")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_interpolations(arrays: dict[str, dict], results: dict, path: Path) -> Path:
    import torch

    fig, axes = plt.subplots(len(arrays), 1, figsize=(9, 2.3 * len(arrays)), squeeze=False)
    for ax, (name, a) in zip(axes[:, 0], arrays.items(), strict=True):
        frames = torch.from_numpy(a["paths"][:PATHS_SHOWN]).flatten(0, 1)
        ax.imshow(image_grid(frames, INTERPOLATION_FRAMES), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        e = entry(results, name)
        ax.set_title(f"{model_label(name)}: largest step {e['interpolation_max_step']:.3f}, mean "
                     f"{e['interpolation_mean_step']:.3f}; {e['interpolation_class_changes']:.1f} class changes",
                     fontsize="medium")  # fmt: skip
        ax.axis("off")
    even = 1 / (INTERPOLATION_FRAMES - 1)
    fig.suptitle(f"decoded straight lines between the posterior means of different-class test pairs\n"
                 f"({INTERPOLATION_FRAMES} frames; steps as shares of the end-to-end distance, {even:.3f} for an "
                 f"even path)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_latent_maps(arrays: dict[str, dict], labels: np.ndarray, path: Path) -> Path:
    cols = min(3, len(arrays))
    rows = math.ceil(len(arrays) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.5 * rows), squeeze=False)
    for i, (ax, (name, a)) in enumerate(zip(axes.flat, arrays.items(), strict=False)):
        draw_latent_pca(ax, a["means"], labels, legend=i == 0)
        ax.set_title(model_label(name))
    for ax in list(axes.flat)[len(arrays) :]:
        ax.axis("off")
    fig.suptitle("test set posterior means (autoencoder: codes) on their first two principal components, by label")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_gradient_variance(gv: dict, path: Path) -> Path:
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.8))
    keys = {"reparameterization": "reparameterization", "score-function": "score_function",
            "score-function-baseline": "score_function_baseline"}  # fmt: skip
    x = np.arange(2)
    for k, (estimator, key) in enumerate(keys.items()):
        values = [gv[key], gv["at_initialization"][key]]
        bars.bar(x + (k - 1) * 0.27, values, 0.27, color=ESTIMATOR_COLOURS[estimator], label=estimator)
    bars.set_xticks(x, ["trained β = 1 model", "initial weights"])
    bars.set_yscale("log")
    bars.set_ylabel("total variance of the encoder gradient")
    bars.set_title(f"variance over {gv['draws']} noise draws, one batch of {gv['batch_size']}")
    bars.legend(fontsize="small")
    for estimator, curve in gv["training"].items():
        curves.plot(curve["epoch"], curve["val_neg_elbo"], "o-", color=ESTIMATOR_COLOURS[estimator], label=estimator)
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation neg-ELBO (nats per image)")
    curves.set_title("training with each estimator (same seed, data and noise)")
    curves.legend(fontsize="small")
    curves.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
