"""Do the ONNX graphs compute what PyTorch computes? onnxruntime against the PyTorch module, per batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from vaeserve.errors import VaeserveError
from vaeserve.training.model import VAE

from .graphs import graph_modules

TOLERANCE = 1e-5  # absolute, on every output element
BATCH_SIZES = (1, 7, 256)


class ParityError(VaeserveError):
    """An exported graph whose outputs differ from the PyTorch model's."""


def random_inputs(vae: VAE, graph: str, batch: int, seed: int = 0) -> np.ndarray:
    """Images uniform in [0, 1] for the encoder, prior draws N(0, I) for the decoder."""
    rng = np.random.default_rng(seed)
    if graph == "encoder":
        return rng.random((batch, *vae.cfg.image_shape), dtype=np.float32)
    return rng.standard_normal((batch, vae.cfg.latent_dim), dtype=np.float32)


def max_abs_diff(module: nn.Module, session: ort.InferenceSession, inputs: np.ndarray) -> float:
    """Largest |onnxruntime - PyTorch| over every output of one graph on one batch."""
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs))
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = session.run(None, {session.get_inputs()[0].name: inputs})
    return max(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected, strict=True))


def check_parity(vae: VAE, paths: dict[str, Path], seed: int = 0) -> dict[str, dict[str, float]]:
    """{graph: {batch size: max abs diff}} on seeded random inputs; ParityError above TOLERANCE."""
    modules = graph_modules(vae)
    result: dict[str, dict[str, float]] = {}
    for graph, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        result[graph] = {}
        for batch in BATCH_SIZES:
            diff = max_abs_diff(modules[graph], session, random_inputs(vae, graph, batch, seed + batch))
            if not diff <= TOLERANCE:  # also catches NaN
                raise ParityError(f"{path.name}: onnxruntime differs from PyTorch by {diff:.3g} at batch {batch}")
            result[graph][str(batch)] = diff
    return result
