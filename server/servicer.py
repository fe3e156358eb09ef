"""vae.v1.VaeService: check shapes, draw the request's noise, queue its bytes for a graph, reply with bytes.

A call passes the request's tensor bytes to the graphs' batchers as they are and writes the bytes it gets back
into the response's own fields: numpy work (value checks, the encoder's reparameterization, conversions)
happens once per batch in the batcher, because with a small model the Python gRPC layer, not the model, is
what a call costs. Errors are raised as `RequestError`s; `rpc.py` turns them into statuses.
"""

from __future__ import annotations

import grpc
import numpy as np

from vaeserve.protos.vae.v1 import vae_pb2

from . import validation
from .batcher import Batcher
from .noise import draw_eps


def _fill(t: vae_pb2.Tensor, shape: tuple[int, ...], data: bytes) -> None:
    """Writes a tensor into a response's own Tensor field: a Tensor built apart would be copied in once more."""
    t.shape[:] = shape
    t.data = data


def _seed(request: vae_pb2.SampleRequest | vae_pb2.EncodeRequest | vae_pb2.ReconstructRequest) -> int | None:
    return request.seed if request.HasField("seed") else None


class VaeServicer:
    """The methods of vae.v1.VaeService, registered by `rpc.add_service`."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        latent_dim: int,
        encoder: Batcher,
        decoder: Batcher,
        max_num_samples: int,
        info: vae_pb2.ModelInfo,
    ) -> None:
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.encoder = encoder
        self.decoder = decoder
        self.max_rows = max_num_samples
        self.info = info

    async def _encode(self, images: bytes, rows: int, seed: int | None, context: grpc.aio.ServicerContext) -> dict:
        """mean, log_variance, and latents = mean + exp(0.5 * log_variance) * eps with the request's eps."""
        eps = draw_eps(seed, rows, self.latent_dim)
        return await self.encoder.submit({"images": images, "eps": eps}, rows, context.time_remaining())

    async def _decode(self, latents: bytes, rows: int, context: grpc.aio.ServicerContext) -> bytes:
        return (await self.decoder.submit({"latents": latents}, rows, context.time_remaining()))["images"]

    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        n = validation.num_samples(request.num_samples, self.max_rows)
        temperature = validation.temperature(request.temperature)
        z = draw_eps(_seed(request), n, self.latent_dim)
        if temperature != 1.0:
            z = (np.frombuffer(z, np.float32) * np.float32(temperature)).tobytes()
        images = await self._decode(z, n, context)
        response = vae_pb2.SampleResponse()
        _fill(response.images, (n, *self.image_shape), images)
        _fill(response.latents, (n, self.latent_dim), z)
        return response

    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.EncodeResponse:
        n, images = validation.rows(request.images, "images", self.image_shape, self.max_rows)
        encoded = await self._encode(images, n, _seed(request), context)
        response = vae_pb2.EncodeResponse()
        shape = (n, self.latent_dim)
        _fill(response.mean, shape, encoded["mean"])
        _fill(response.log_variance, shape, encoded["log_variance"])
        _fill(response.latents, shape, encoded["latents"])
        return response

    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        n, z = validation.rows(request.latents, "latents", (self.latent_dim,), self.max_rows)
        images = await self._decode(z, n, context)
        response = vae_pb2.DecodeResponse()
        _fill(response.images, (n, *self.image_shape), images)
        return response

    async def Reconstruct(
        self, request: vae_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ReconstructResponse:
        n, images = validation.rows(request.images, "images", self.image_shape, self.max_rows)
        latents = (await self._encode(images, n, _seed(request), context))["latents"]
        reconstructions = await self._decode(latents, n, context)
        response = vae_pb2.ReconstructResponse()
        _fill(response.images, (n, *self.image_shape), reconstructions)
        _fill(response.latents, (n, self.latent_dim), latents)
        return response

    async def GetModelInfo(
        self, request: vae_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelInfo:
        return self.info
