"""Baseline 2: the server a user writes first. Same proto and graphs, one session.run per request, no batching.

Each handler decodes its request with numpy, runs onnxruntime and draws the noise itself. Two kinds:
    sync  a synchronous grpc server on a thread pool sized as in grpc's own examples (onnxruntime's default
          intra-op threads)
    aio   a grpc.aio server whose handlers call session.run on the event loop, with one intra-op thread: the
          stronger naive server on few cores (issue 26 measured vaeserve's defaults against it)

    python -m tests.bench.serving_naive --model-dir models/vae/1 --port 50061 [--aio]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from vaeserve.client.api import to_tensor
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

from .serving_echo import serve
from .serving_model import Graphs, load_graphs, reparameterize

WORKERS = 10  # grpc's Python examples: futures.ThreadPoolExecutor(max_workers=10)


def array(t: vae_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))


def rng(request) -> np.random.Generator:
    return np.random.default_rng(request.seed if request.HasField("seed") else None)


class NaiveVaeService(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, graphs: Graphs) -> None:
        self.graphs = graphs

    def Encode(self, request: vae_pb2.EncodeRequest, context) -> vae_pb2.EncodeResponse:
        mean, log_variance = self.graphs.encode(array(request.images))
        latents = reparameterize(mean, log_variance, rng(request))
        return vae_pb2.EncodeResponse(
            mean=to_tensor(mean), log_variance=to_tensor(log_variance), latents=to_tensor(latents)
        )

    def Sample(self, request: vae_pb2.SampleRequest, context) -> vae_pb2.SampleResponse:
        eps = rng(request).standard_normal((request.num_samples, self.graphs.latent_dim), dtype=np.float32)
        latents = eps * (request.temperature or 1.0)
        return vae_pb2.SampleResponse(images=to_tensor(self.graphs.decode(latents)), latents=to_tensor(latents))

    def GetModelInfo(self, request, context) -> vae_pb2.ModelInfo:
        return vae_pb2.ModelInfo(name="naive", latent_dim=self.graphs.latent_dim, image_shape=self.graphs.image_shape)


class AsyncNaiveVaeService(vae_pb2_grpc.VaeServiceServicer):
    """The same handlers on grpc.aio: each runs to completion on the event loop."""

    def __init__(self, graphs: Graphs) -> None:
        self.sync = NaiveVaeService(graphs)

    async def Encode(self, request: vae_pb2.EncodeRequest, context) -> vae_pb2.EncodeResponse:
        return self.sync.Encode(request, context)

    async def Sample(self, request: vae_pb2.SampleRequest, context) -> vae_pb2.SampleResponse:
        return self.sync.Sample(request, context)

    async def GetModelInfo(self, request, context) -> vae_pb2.ModelInfo:
        return self.sync.GetModelInfo(request, context)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a version folder holding encoder/decoder.onnx")
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--aio", action="store_true", help="grpc.aio, one intra-op thread (default: sync thread pool)")
    args = p.parse_args()
    if args.aio:
        asyncio.run(serve(AsyncNaiveVaeService(load_graphs(args.model_dir, intra_op_threads=1)), args.port))
        return 0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
    vae_pb2_grpc.add_VaeServiceServicer_to_server(NaiveVaeService(load_graphs(args.model_dir)), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
