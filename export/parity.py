"""Do the ONNX graphs compute what PyTorch computes? onnxruntime against the PyTorch module, per batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from vaeserve.errors import VaeserveError
from vaeserve.repository import ENCODER
from vaeserve.training.model import VAE

from .graphs import graph_modules

# Per element, |onnxruntime - PyTorch| <= ATOL + RTOL * |PyTorch| (torch.testing.assert_close's float32
# defaults). The relative part is for unbounded outputs: a decoder's logits reach 50 and more, where one float32
# step is 4e-6 and the same sums rounded in another order differ by more than any useful absolute bound.
ATOL, RTOL = 1e-5, 1.3e-6
BATCH_SIZES = (1, 7, 256)


class ParityError(VaeserveError):
    """An exported graph whose outputs differ from the PyTorch model's."""


def random_inputs(vae: VAE, graph: str, batch: int, seed: int = 0) -> np.ndarray:
    """Images uniform in [0, 1] for the encoder, prior draws N(0, I) for the decoder."""
    rng = np.random.default_rng(seed)
    if graph == ENCODER:
        return rng.random((batch, *vae.cfg.image_shape), dtype=np.float32)
    return rng.standard_normal((batch, vae.cfg.latent_dim), dtype=np.float32)


def compare(actual: list[np.ndarray], expected: list[np.ndarray]) -> tuple[float, float]:
    """(largest |actual - expected|, largest share of the tolerance used) over every output: within tolerance
    when the share is at most 1 (NaN is not)."""
    diffs = [np.abs(a - e) for a, e in zip(actual, expected, strict=True)]
    shares = [d / (ATOL + RTOL * np.abs(e)) for d, e in zip(diffs, expected, strict=True)]
    return max(float(d.max()) for d in diffs), max(float(s.max()) for s in shares)


def run_both(module: nn.Module, session: ort.InferenceSession, inputs: np.ndarray) -> tuple[float, float]:
    """`compare` of one graph's onnxruntime outputs against its PyTorch module's, on one batch."""
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs))
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = session.run(None, {session.get_inputs()[0].name: inputs})
    return compare(actual, [e.numpy() for e in expected])


def check_parity(vae: VAE, paths: dict[str, Path], seed: int = 0) -> dict[str, dict[str, float]]:
    """{graph: {batch size: max abs diff}} on seeded random inputs; ParityError beyond the tolerance."""
    modules = graph_modules(vae)
    result: dict[str, dict[str, float]] = {}
    for graph, path in paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        result[graph] = {}
        for batch in BATCH_SIZES:
            diff, share = run_both(modules[graph], session, random_inputs(vae, graph, batch, seed + batch))
            if not share <= 1:  # also catches NaN
                raise ParityError(
                    f"{path.name}: onnxruntime differs from PyTorch by {diff:.3g} at batch {batch} "
                    f"(tolerance {ATOL:g} + {RTOL:g} x |value|)"
                )
            result[graph][str(batch)] = diff
    return result
