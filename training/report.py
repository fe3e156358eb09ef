"""runs/NAME/report/: what the model learned, as PNGs a person can look at.

samples.png          decoder means of z ~ N(0, I)
reconstructions.png  test images (odd rows) above their reconstructions from the posterior mean (even rows)
interpolation.png    decoder means along straight lines between the posterior means of two test images
latent_pca.png       the test set's posterior means projected on their first two principal components, by label
loss_curves.png      training loss and validation neg-ELBO per epoch, and the reconstruction/KL split
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt
import numpy as np
import torch

from vaeserve.grid import tile

from .data import Splits
from .model import VAE

REPORT_SEED = 0


def image_grid(images: torch.Tensor, ncols: int) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> one [H', W'(, C)] array with a mid-grey separator between cells."""
    grid = tile(images.detach().cpu().numpy(), ncols)
    return grid[0] if len(grid) == 1 else grid.transpose(1, 2, 0)


def save_grid(images: torch.Tensor, ncols: int, path: Path, title: str) -> None:
    grid = image_grid(images, ncols)
    fig, ax = plt.subplots(figsize=(8, 8 * grid.shape[0] / grid.shape[1] + 0.4))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def write_report(model: VAE, splits: Splits, history: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    generator = torch.Generator().manual_seed(REPORT_SEED)
    latent_dim = model.cfg.latent_dim

    z = torch.randn(64, latent_dim, generator=generator)
    save_grid(model.decode_mean(z), 8, out / "samples.png", "samples from the prior p(z) = N(0, I)")

    ncols = min(8, len(splits.test))
    nrows = min(4, len(splits.test) // ncols)
    inputs = splits.test[: nrows * ncols]
    recon = model.decode_mean(model.encode(inputs).mean)
    rows = torch.stack([inputs.unflatten(0, (nrows, ncols)), recon.unflatten(0, (nrows, ncols))], 1).flatten(0, 2)
    save_grid(rows, ncols, out / "reconstructions.png", "test images (odd rows) and their reconstructions (even rows)")

    steps = torch.linspace(0, 1, 10)[:, None]
    npairs = max(1, min(6, len(splits.test) // 2))
    pairs = torch.randperm(len(splits.test), generator=generator)[: 2 * npairs]
    means = model.encode(splits.test[pairs]).mean.view(-1, 2, latent_dim)
    path = means[:, :1] * (1 - steps) + means[:, 1:] * steps  # [pairs, 10, latent]
    save_grid(model.decode_mean(path.flatten(0, 1)), 10, out / "interpolation.png",
              "latent interpolation between pairs of test images")  # fmt: skip

    plot_latent_pca(model.encode(splits.test).mean, splits.test_labels, out / "latent_pca.png")
    plot_loss_curves(history, out / "loss_curves.png")


def plot_latent_pca(means: torch.Tensor, labels: torch.Tensor | None, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 6))
    draw_latent_pca(ax, means.numpy(), None if labels is None else labels.numpy())
    ax.set_title("test set posterior means, first two principal components")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def draw_latent_pca(ax: plt.Axes, means: np.ndarray, labels: np.ndarray | None, legend: bool = True) -> None:
    """The posterior means [N, D] projected on their first two principal components, coloured by label."""
    centred = (means - means.mean(0)).astype(np.float64)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] == 1:  # a 1-D latent space: plot it on a line
        coords = np.hstack([coords, np.zeros_like(coords)])
    explained = s[:2] ** 2 / max((s**2).sum(), 1e-12)
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.7)
    else:
        points = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8)
        if legend:
            ax.legend(*points.legend_elements(), title="label", loc="best", fontsize="small")
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)" if len(explained) > 1 else "")


def plot_loss_curves(history: list[dict], path: Path) -> None:
    epochs = [m["epoch"] for m in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, [m["loss"] for m in history], label="train loss")
    left.plot(epochs, [m["neg_elbo"] for m in history], label="train neg-ELBO", linestyle="--")
    left.plot(epochs, [m["val_neg_elbo"] for m in history], label="validation neg-ELBO")
    left.set_xlabel("epoch")
    left.set_ylabel("nats per image")
    left.legend()
    right.plot(epochs, [m["reconstruction"] for m in history], label="train reconstruction")
    right.plot(epochs, [m["val_reconstruction"] for m in history], label="validation reconstruction")
    kl_axis = right.twinx()
    kl_axis.plot(epochs, [m["kl"] for m in history], color="tab:red", label="train KL")
    kl_axis.set_ylabel("KL (nats per image)", color="tab:red")
    right.set_xlabel("epoch")
    right.set_ylabel("reconstruction NLL (nats per image)")
    handles = right.get_legend_handles_labels()[0] + kl_axis.get_legend_handles_labels()[0]
    right.legend(handles=handles, loc="center right")
    fig.suptitle("training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
