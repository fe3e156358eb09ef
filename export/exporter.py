"""Checkpoint -> a new version in the model repository: two ONNX graphs and model.json, verified, then moved
into place atomically so the server never sees a half-written version.

Order: load the checkpoint (all checkpoint errors surface before anything is created), export both graphs
into REPO/NAME/.export-*, full onnx.checker, onnxruntime-vs-PyTorch parity, optional variants, the same
`check_version` the server runs, then os.rename to REPO/NAME/VERSION.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import torch

from vaeserve import __version__
from vaeserve.repository import (
    DECODER,
    ENCODER,
    GRAPHS,
    RepositoryError,
    check_version,
    graph_signatures,
    sha256_file,
    version_numbers,
    write_model_json,
)
from vaeserve.training.checkpoint import CheckpointError, load_model
from vaeserve.training.model import VAE

from .graphs import EXAMPLE_BATCH, OPSET, export_graph, graph_modules
from .parity import check_parity


def export_checkpoint(
    checkpoint: str | Path, repo: str | Path, name: str, version: int | None = None, variants: tuple[str, ...] = ()
) -> Path:
    """Write REPO/NAME/VERSION from a checkpoint and return its path. Nothing is left under REPO on failure."""
    checkpoint = Path(checkpoint)
    if not name or Path(name).name != name or name.startswith("."):
        raise RepositoryError(f"--name {name!r}: must be a plain folder name")
    # Everything that can be wrong with the checkpoint is found here, before anything is created.
    vae, ckpt = load_model(checkpoint)
    for key, tensor in vae.state_dict().items():
        if not torch.isfinite(tensor).all():  # a diverged run: its graphs would compute NaN
            raise CheckpointError(f"{checkpoint}: {key} holds NaN or infinite values")
    existing = version_numbers(repo, name)
    if version is None:
        version = (existing[-1] if existing else 0) + 1
    elif version < 1:
        raise RepositoryError(f"--version {version}: versions are positive integers")
    target = Path(repo) / name / str(version)
    if target.exists():
        raise RepositoryError(f"{target}: version {version} already exists; versions are never overwritten")

    created = [p for p in (Path(repo), Path(repo) / name) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".export-{version}-"))
    except OSError as exc:
        raise RepositoryError(f"{target.parent}: cannot create a folder there ({exc.strerror})") from exc
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the server may run as another user
        _write_version(tmp, vae, ckpt, checkpoint, name, version)
        if variants:
            from .variants import write_variants  # needs the test split and onnxruntime's tools

            write_variants(tmp, vae, ckpt, variants)
        check_version(tmp, name, version)
        if target.exists():  # another export took the number while this one ran
            raise RepositoryError(f"{target}: version {version} already exists; versions are never overwritten")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):  # only folders this call made, and only if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return target


def build_metadata(vae: VAE, ckpt: dict[str, Any]) -> dict[str, str]:
    """The metadata_props both graphs carry. A checkpoint without a test ELBO (the trainer writes
    metrics["test_neg_elbo"] after its final evaluation) records "unknown" rather than a made-up figure."""
    cfg = vae.cfg
    test_neg_elbo = _test_neg_elbo(ckpt)
    return {
        "latent_dim": str(cfg.latent_dim),
        "image_shape": json.dumps(list(cfg.image_shape)),
        "likelihood": cfg.likelihood,
        "dataset": str(_dataset(ckpt).get("name", "unknown")),
        "vaeserve_version": __version__,
        "test_neg_elbo": "unknown" if test_neg_elbo is None else repr(test_neg_elbo),
    }


def _write_version(folder: Path, vae: VAE, ckpt: dict[str, Any], checkpoint: Path, name: str, version: int) -> None:
    cfg = vae.cfg
    signatures = graph_signatures(cfg.latent_dim, cfg.image_shape)
    metadata = build_metadata(vae, ckpt)
    examples = {
        ENCODER: torch.rand(EXAMPLE_BATCH, *cfg.image_shape),
        DECODER: torch.randn(EXAMPLE_BATCH, cfg.latent_dim),
    }
    graphs = {}
    for graph, module in graph_modules(vae).items():
        proto = export_graph(module, examples[graph], signatures[graph])
        onnx.helper.set_model_props(proto, metadata)
        path = folder / f"{graph}.onnx"
        onnx.save_model(proto, path)  # under 2 GB, so the weights stay inside the one file
        onnx.checker.check_model(str(path), full_check=True)
        graphs[graph] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "inputs": _shapes(signatures[graph]["inputs"]),
            "outputs": _shapes(signatures[graph]["outputs"]),
        }
    parity = check_parity(vae, {graph: folder / graphs[graph]["file"] for graph in GRAPHS})
    log_sigma = vae.log_sigma.item() if cfg.likelihood == "gaussian" else None
    fields = {
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "latent_dim": cfg.latent_dim,
        "image_shape": list(cfg.image_shape),
        "likelihood": cfg.likelihood,
        "log_sigma": log_sigma,  # Gaussian p(x|z) only: needed to score a reconstruction, not to run the graphs
        "dataset": _dataset(ckpt),
        "vaeserve_version": __version__,
        "test_neg_elbo": _test_neg_elbo(ckpt),
        "opset": OPSET,
        "source_checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "model_config": cfg.to_dict(),
        "metadata": metadata,
        "graphs": graphs,
        "parity_max_abs_diff": parity,
        "variants": {},
    }
    write_model_json(folder, fields)


def _shapes(tensors: dict[str, list]) -> dict[str, list]:
    return {name: ["batch" if d is None else d for d in shape] for name, shape in tensors.items()}


def _dataset(ckpt: dict[str, Any]) -> dict[str, Any]:
    return ckpt.get("dataset") or {}


def _test_neg_elbo(ckpt: dict[str, Any]) -> float | None:
    value = (ckpt.get("metrics") or {}).get("test_neg_elbo")
    return None if value is None else float(value)
