"""Optional extra graphs beside the fp32 pair, each measured before it is kept.

    ort   onnxruntime's offline-optimized graph (fused Conv/Gemm+activation, ORT_ENABLE_EXTENDED). It holds
          com.microsoft contrib ops chosen for the CPU execution provider, so it is for CPU serving only.
    fp16  weights and arithmetic in float16 with float32 inputs/outputs, for the CUDA path; on CPU it is
          measured for accuracy only (the CPU execution provider's fp16 kernels are not its fast path).
    int8  onnxruntime dynamic quantization (int8 weights, activations quantized per batch), for CPU.

A variant is kept only if the test negative ELBO computed from its graphs (numpy, one seeded posterior
sample per image, the same noise for every variant) is within MAX_ELBO_CHANGE_PER_PIXEL nats per pixel of the
fp32 graphs' figure.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from vaeserve.elbo import kl_to_standard_normal, log_likelihood, reparameterize
from vaeserve.repository import GRAPHS, IMAGE, LATENT, LOGITS, MODEL_JSON, sha256_file, write_model_json
from vaeserve.training.model import VAE

# In nats per pixel, not relative to the ELBO: a Gaussian likelihood's ELBO sums large terms of both signs and
# can sit near 0, where any relative bound refuses everything. 0.001 nats per pixel is 0.0014 bits per dimension,
# below the 0.01 likelihoods are reported to; 0.064 nats on an 8x8 digit, 0.78 on a 28x28 MNIST image.
MAX_ELBO_CHANGE_PER_PIXEL = 0.001
EVAL_BATCH = 256
SEED = 0


def make_variant(kind: str, source: Path, destination: Path) -> None:
    """Write the `kind` variant of one fp32 graph; the graph's metadata_props are carried over unchanged."""
    if kind == "ort":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(destination)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    elif kind == "fp16":
        import onnx_ir as ir
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(source), keep_io_types=True)
        graph = ir.from_proto(model)
        graph.graph.sort()  # the converter appends its output Casts after their consumers' producers
        onnx.save_model(ir.to_proto(graph), destination)
    elif kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = onnx.load(source)
        # The exporter's value_info for weights goes stale when the quantizer transposes them.
        model.graph.ClearField("value_info")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # it advises pre-processing, which is for calibrated (static) quantization
        try:
            quantize_dynamic(model, destination, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    else:
        raise ValueError(f"unknown variant {kind!r}")
    # The tools add their own keys (the quantizer's "onnx.infer"); the repository's metadata is exactly ours.
    model = onnx.load(destination)
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(source, load_external_data=False).metadata_props)
    onnx.save_model(model, destination)
    onnx.checker.check_model(str(destination), full_check=True)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # fixed, so figures from a shared machine are comparable
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def neg_elbo(
    encoder: ort.InferenceSession,
    decoder: ort.InferenceSession,
    images: np.ndarray,
    likelihood: str,
    log_sigma: float | None = None,
    seed: int = SEED,
) -> float:
    """Mean -ELBO in nats per image from the graphs alone: one posterior sample per image (the server's
    z = mean + exp(0.5 * log_variance) * eps), reconstruction NLL from the decoder's logits, closed-form KL."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    latent_dim = encoder.get_outputs()[0].shape[1]
    eps = np.random.default_rng(seed).standard_normal((len(images), latent_dim), dtype=np.float32)
    total = 0.0
    for start in range(0, len(images), EVAL_BATCH):
        x = images[start : start + EVAL_BATCH]
        mean, log_variance = encoder.run(None, {IMAGE: x})
        z = reparameterize(mean, log_variance, eps[start : start + EVAL_BATCH])
        (logits,) = decoder.run([LOGITS], {LATENT: z.astype(np.float32)})
        kl = kl_to_standard_normal(mean.astype(np.float64), log_variance.astype(np.float64))
        total += kl.sum() - log_likelihood(x, logits, likelihood, log_sigma).sum()
    return total / len(images)


def throughput(
    encoder: ort.InferenceSession,
    decoder: ort.InferenceSession,
    images: np.ndarray,
    batch: int,
    repeats: int = 3,
    min_seconds: float = 0.2,
) -> dict[str, float]:
    """Reconstruction speed (encode, then decode the mean), best of `repeats` passes that each cycle over
    `images` for at least `min_seconds`. Two figures: images per wall-clock second, and images per second of
    this process's CPU time, which on a shared machine is the steadier one (with 1 intra-op thread
    onnxruntime computes on the calling thread)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    best = {"images_per_s": 0.0, "images_per_cpu_s": 0.0}
    for _ in range(repeats):
        done, wall, cpu = 0, time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - wall) < min_seconds or done == 0:
            for i in range(0, len(images), batch):
                mean, _ = encoder.run(None, {IMAGE: images[i : i + batch]})
                decoder.run(None, {LATENT: mean})
            done += len(images)
        cpu = time.process_time() - cpu
        best["images_per_s"] = max(best["images_per_s"], done / elapsed)
        best["images_per_cpu_s"] = max(best["images_per_cpu_s"], done / max(cpu, 1e-9))
    return best


def test_images(ckpt: dict[str, Any]) -> np.ndarray:
    """The checkpoint's test split, rebuilt from its "dataset" entry."""
    from vaeserve.training.data import load_dataset

    return load_dataset(ckpt.get("dataset") or {}).test.numpy()


def write_variants(folder: Path, vae: VAE, ckpt: dict[str, Any], kinds: tuple[str, ...]) -> None:
    """Build each variant in `folder` and measure it against the fp32 graphs. model.json records every
    measurement ("variant_measurements", fp32 included) and, under "variants", the files of those within
    MAX_ELBO_CHANGE_PER_PIXEL; the others are deleted."""
    images = test_images(ckpt)
    log_sigma = vae.log_sigma.item() if vae.cfg.likelihood == "gaussian" else None
    info = json.loads((folder / MODEL_JSON).read_text())
    measurements = info["variant_measurements"] = {}
    for kind in ("fp32", *kinds):
        suffix = "" if kind == "fp32" else f".{kind}"
        paths = [folder / f"{graph}{suffix}.onnx" for graph in GRAPHS]
        if kind != "fp32":
            for graph, path in zip(GRAPHS, paths, strict=True):
                make_variant(kind, folder / f"{graph}.onnx", path)
        sessions = [session(path) for path in paths]
        value = neg_elbo(*sessions, images, vae.cfg.likelihood, log_sigma)
        reference = measurements.get("fp32", {}).get("test_neg_elbo_graphs", value)
        measurements[kind] = result = {
            "test_neg_elbo_graphs": value,
            "elbo_change": (value - reference) / abs(reference),
            "elbo_change_per_pixel": (value - reference) / images[0].size,
            **throughput(*sessions, images, EVAL_BATCH, repeats=2, min_seconds=0.1),  # indicative: see the bench
            "speed_setting": f"encode+decode, batch {EVAL_BATCH}, 1 intra-op thread, CPU execution provider",
        }
        if kind == "fp32":
            continue
        if abs(result["elbo_change_per_pixel"]) < MAX_ELBO_CHANGE_PER_PIXEL:
            graphs = {graph: {"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for graph, p in zip(GRAPHS, paths, strict=True)}  # fmt: skip
            info["variants"][kind] = {**graphs, **result}
        else:
            for path in paths:
                path.unlink()
            print(f"variant {kind}: test ELBO changes by {result['elbo_change_per_pixel']:+.2g} nats per pixel "
                  f"(limit {MAX_ELBO_CHANGE_PER_PIXEL:g}): not written", file=sys.stderr)  # fmt: skip
    write_model_json(folder, info)
