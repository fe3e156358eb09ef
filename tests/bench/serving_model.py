"""The exported graphs as the serving benchmark's baselines see them: numpy and onnxruntime only.

Imports nothing of vaeserve, grpc or protobuf, so the Triton baseline can load it from its own virtual
environment (numpy 1.x, protobuf 6). Shapes come from the ONNX graphs themselves, so it reads any version
`vaeserve export` writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass
class Graphs:
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    image_shape: tuple[int, int, int]  # [C, H, W]
    latent_dim: int

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log_variance), each [N, latent_dim]."""
        mean, log_variance = self.encoder.run(self._encoder_outputs, {self._encoder_input: images})
        return mean, log_variance

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self.decoder.run(None, {self._decoder_input: latents})[0]

    def __post_init__(self) -> None:
        self._encoder_input = self.encoder.get_inputs()[0].name
        self._decoder_input = self.decoder.get_inputs()[0].name
        names = [o.name for o in self.encoder.get_outputs()]
        # Named outputs when the exporter names them, else the graph's order (mean first).
        self._encoder_outputs = ["mean", "log_variance"] if {"mean", "log_variance"} <= set(names) else names[:2]


def version_dir(repo: Path, name: str) -> Path:
    """The highest numbered version of `name` in a model repository."""
    versions = [p for p in (repo / name).iterdir() if p.name.isdigit() and (p / "encoder.onnx").is_file()]
    if not versions:
        raise FileNotFoundError(f"{repo / name}: no exported version (expected VERSION/encoder.onnx)")
    return max(versions, key=lambda p: int(p.name))


def load_graphs(model_dir: Path, intra_op_threads: int = 0) -> Graphs:
    """Sessions for model_dir/{encoder,decoder}.onnx on CPU; 0 threads is onnxruntime's default (one per core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    encoder, decoder = (
        ort.InferenceSession(str(model_dir / f"{part}.onnx"), options, providers=["CPUExecutionProvider"])
        for part in ("encoder", "decoder")
    )
    c, h, w = (int(d) for d in encoder.get_inputs()[0].shape[1:])
    latent_dim = int(decoder.get_inputs()[0].shape[1])
    return Graphs(encoder, decoder, (c, h, w), latent_dim)


def reparameterize(mean: np.ndarray, log_variance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    eps = rng.standard_normal(mean.shape, dtype=np.float32)
    return mean + np.exp(0.5 * log_variance) * eps


def random_images(graphs: Graphs, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *graphs.image_shape), dtype=np.float32)


def runs_per_second(run, seconds: float = 1.0) -> tuple[float, float]:
    """(calls per second, median seconds per call) of `run()` over about `seconds`, after one warm-up call."""
    run()
    times = []
    end = time.perf_counter() + seconds
    while (start := time.perf_counter()) < end:
        run()
        times.append(time.perf_counter() - start)
    return len(times) / sum(times), float(np.median(times))
