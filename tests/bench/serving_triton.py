"""Baseline 5: NVIDIA Triton (nvidia-pytriton) serving the same graphs from a Python callable.

Runs in the benchmark's own virtual environment (.venv-bench: pytriton pins numpy<2 and protobuf 6, which
vaeserve's .venv cannot hold), so it imports only numpy, onnxruntime and pytriton. Two models, each with
Triton's dynamic batcher: `encode` (images [N, C, H, W] -> mean, log_variance, latents, the reparameterization
done in the callable as vaeserve does it) and `sample` (one `temperature` row per image -> images, latents).

It first writes one serialized ModelInferRequest per benchmarked call into --requests-dir, so the benchmark's
load generator sends Triton the same raw-bytes gRPC calls it sends every other server, then serves until
SIGTERM/SIGINT.

    .venv-bench/bin/python -m tests.bench.serving_triton --model-dir models/vae/1 --grpc-port 8001 ...
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import numpy as np

from .serving_model import Graphs, load_graphs, random_images, reparameterize

ENCODE_IMAGES = (1, 32)  # images per Encode request the benchmark sends
SAMPLE_IMAGES = (16, 1024)


def write_requests(graphs: Graphs, out: Path) -> None:
    """encode{N}.bin and sample{N}.bin: serialized ModelInferRequests with raw float32 inputs."""
    from tritonclient.grpc import service_pb2

    def request(model: str, name: str, array: np.ndarray) -> bytes:
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=list(array.shape))
        msg = service_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[array.tobytes()])
        return msg.SerializeToString()

    out.mkdir(parents=True, exist_ok=True)
    for n in ENCODE_IMAGES:
        (out / f"encode{n}.bin").write_bytes(request("encode", "images", random_images(graphs, n)))
    for n in SAMPLE_IMAGES:
        (out / f"sample{n}.bin").write_bytes(request("sample", "temperature", np.ones((n, 1), np.float32)))


def serve(graphs: Graphs, args: argparse.Namespace) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    rng = np.random.default_rng()
    c, h, w = graphs.image_shape

    @batch
    def encode(images: np.ndarray) -> dict[str, np.ndarray]:
        mean, log_variance = graphs.encode(images)
        return {"mean": mean, "log_variance": log_variance, "latents": reparameterize(mean, log_variance, rng)}

    @batch
    def sample(temperature: np.ndarray) -> dict[str, np.ndarray]:
        latents = rng.standard_normal((len(temperature), graphs.latent_dim), dtype=np.float32) * temperature
        return {"images": graphs.decode(latents), "latents": latents}

    latent = Tensor(name="latents", dtype=np.float32, shape=(graphs.latent_dim,))
    config = ModelConfig(
        max_batch_size=args.max_batch_size,
        batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_batch_delay_us),
    )
    triton_config = TritonConfig(
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name="encode",
            infer_func=encode,
            inputs=[Tensor(name="images", dtype=np.float32, shape=(c, h, w))],
            outputs=[
                Tensor(name="mean", dtype=np.float32, shape=(graphs.latent_dim,)),
                Tensor(name="log_variance", dtype=np.float32, shape=(graphs.latent_dim,)),
                latent,
            ],
            config=config,
        )
        triton.bind(
            model_name="sample",
            infer_func=sample,
            inputs=[Tensor(name="temperature", dtype=np.float32, shape=(1,))],
            outputs=[Tensor(name="images", dtype=np.float32, shape=(c, h, w)), latent],
            config=config,
        )
        triton.serve()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a version folder holding encoder/decoder.onnx")
    p.add_argument("--requests-dir", type=Path, required=True, help="where to write the serialized requests")
    p.add_argument("--grpc-port", type=int, required=True, help="Triton's gRPC port on 127.0.0.1")
    p.add_argument("--http-port", type=int, required=True, help="Triton's HTTP port on 127.0.0.1")
    p.add_argument("--metrics-port", type=int, required=True, help="Triton's metrics port on 127.0.0.1")
    p.add_argument("--max-batch-size", type=int, default=1024, help="largest batch (default: %(default)s)")
    p.add_argument("--max-batch-delay-us", type=int, default=2000, help="batch window in µs (default: %(default)s)")
    args = p.parse_args()
    graphs = load_graphs(args.model_dir)
    write_requests(graphs, args.requests_dir)
    # SIGTERM from the benchmark must unwind through Triton's context manager, or tritonserver is orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(graphs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
