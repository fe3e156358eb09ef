"""vae.v1.VaeService: check shapes, draw the request's noise, queue its bytes for a graph, reply with bytes.

The one place request errors become gRPC statuses (`_answers_errors`); everything below raises
`RequestError`s. A call passes the request's tensor bytes to the batcher as they are and writes the bytes it
gets back into the response's own fields: numpy work (value checks, the encoder's reparameterization,
conversions) happens once per batch in the batcher, because with a small model the Python gRPC layer, not
the model, is what a call costs.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np

from vaeserve.export.repository import ModelVersion
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

from . import validation
from .batcher import Batcher
from .errors import RequestError
from .noise import draw_eps

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[["VaeServicer", Request, grpc.aio.ServicerContext], Awaitable[Response]]


def _fill(t: vae_pb2.Tensor, shape: tuple[int, ...], data: bytes) -> None:
    """Writes a tensor into a response's own Tensor field: a Tensor built apart would be copied in once more."""
    t.shape[:] = shape
    t.data = data


def _seed(request: vae_pb2.SampleRequest | vae_pb2.EncodeRequest | vae_pb2.ReconstructRequest) -> int | None:
    return request.seed if request.HasField("seed") else None


def _answers_errors(handler: Handler) -> Handler:
    """Turns a RequestError into the call's status and message."""

    @functools.wraps(handler)
    async def wrapper(self: VaeServicer, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except RequestError as exc:
            await context.abort(exc.code, str(exc))

    return wrapper


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(
        self, model: ModelVersion, encoder: Batcher, decoder: Batcher, max_num_samples: int, info: vae_pb2.ModelInfo
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.image_shape = model.image_shape
        self.latent_dim = model.latent_dim
        self.max_rows = max_num_samples
        self.info = info

    async def _encode(
        self, images: bytes, rows: int, seed: int | None, context: grpc.aio.ServicerContext
    ) -> tuple[bytes, bytes, bytes]:
        """mean, log_variance, and latents = mean + exp(0.5 * log_variance) * eps with the request's eps."""
        eps = draw_eps(seed, rows, self.latent_dim)
        return await self.encoder.submit((images, eps), rows, context.time_remaining())

    @_answers_errors
    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        n = validation.num_samples(request.num_samples, self.max_rows)
        temperature = validation.temperature(request.temperature)
        z = draw_eps(_seed(request), n, self.latent_dim)
        if temperature != 1.0:
            z = (np.frombuffer(z, np.float32) * np.float32(temperature)).tobytes()
        (images,) = await self.decoder.submit((z,), n, context.time_remaining())
        response = vae_pb2.SampleResponse()
        _fill(response.images, (n, *self.image_shape), images)
        _fill(response.latents, (n, self.latent_dim), z)
        return response

    @_answers_errors
    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.EncodeResponse:
        n, images = validation.rows(request.images, "images", self.image_shape, self.max_rows)
        mean, log_variance, latents = await self._encode(images, n, _seed(request), context)
        response = vae_pb2.EncodeResponse()
        shape = (n, self.latent_dim)
        _fill(response.mean, shape, mean)
        _fill(response.log_variance, shape, log_variance)
        _fill(response.latents, shape, latents)
        return response

    @_answers_errors
    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        n, z = validation.rows(request.latents, "latents", (self.latent_dim,), self.max_rows)
        (images,) = await self.decoder.submit((z,), n, context.time_remaining())
        response = vae_pb2.DecodeResponse()
        _fill(response.images, (n, *self.image_shape), images)
        return response

    @_answers_errors
    async def Reconstruct(
        self, request: vae_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ReconstructResponse:
        n, images = validation.rows(request.images, "images", self.image_shape, self.max_rows)
        _, _, latents = await self._encode(images, n, _seed(request), context)
        (reconstructions,) = await self.decoder.submit((latents,), n, context.time_remaining())
        response = vae_pb2.ReconstructResponse()
        _fill(response.images, (n, *self.image_shape), reconstructions)
        _fill(response.latents, (n, self.latent_dim), latents)
        return response

    async def GetModelInfo(
        self, request: vae_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelInfo:
        return self.info
