"""Baseline 3, the transport limit: the same service and payload sizes, computing nothing.

grpc.aio on one event loop, uvloop's where installed like vaeserve's (the fastest Python gRPC server we could
write: no thread hops) parses each
request and answers with a zero-filled response of the size the real server would send, built once per
request size.

    python -m tests.bench.serving_echo --model-dir models/vae/1 --port 50062
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc

from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

from .serving_model import load_graphs


def zeros(*shape: int, dtype: int = vae_pb2.FLOAT32) -> vae_pb2.Tensor:
    size = 1 if dtype == vae_pb2.UINT8 else 4
    for s in shape:
        size *= s
    return vae_pb2.Tensor(shape=shape, data=bytes(size), dtype=dtype)


class EchoVaeService(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int) -> None:
        self.image_shape, self.latent_dim = image_shape, latent_dim
        self.encode: dict[int, vae_pb2.EncodeResponse] = {}
        self.sample: dict[tuple[int, int], vae_pb2.SampleResponse] = {}  # by (rows, image dtype)

    async def Encode(self, request: vae_pb2.EncodeRequest, context) -> vae_pb2.EncodeResponse:
        n = request.images.shape[0]
        if n not in self.encode:
            latents = zeros(n, self.latent_dim)
            self.encode[n] = vae_pb2.EncodeResponse(mean=latents, log_variance=latents, latents=latents)
        return self.encode[n]

    async def Sample(self, request: vae_pb2.SampleRequest, context) -> vae_pb2.SampleResponse:
        key = n, dtype = request.num_samples, request.image_dtype
        if key not in self.sample:
            images, latents = zeros(n, *self.image_shape, dtype=dtype), zeros(n, self.latent_dim)
            self.sample[key] = vae_pb2.SampleResponse(images=images, latents=latents)
        return self.sample[key]

    async def GetModelInfo(self, request, context) -> vae_pb2.ModelInfo:
        return vae_pb2.ModelInfo(name="echo", latent_dim=self.latent_dim, image_shape=self.image_shape)


async def serve(service: vae_pb2_grpc.VaeServiceServicer, port: int) -> None:
    """`service` on grpc.aio on 127.0.0.1:port until SIGTERM (the naive server's aio kind uses it too)."""
    server = grpc.aio.server()
    vae_pb2_grpc.add_VaeServiceServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a version folder holding encoder/decoder.onnx")
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = p.parse_args()
    graphs = load_graphs(args.model_dir)  # only for the payload shapes
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    run(serve(EchoVaeService(graphs.image_shape, graphs.latent_dim), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
