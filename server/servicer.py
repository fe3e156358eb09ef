"""vae.v1.VaeService: validate, draw the request's noise, queue rows for a graph, reparameterize, reply.

The one place request errors become gRPC statuses (`_answers_errors`); everything below raises
`RequestError`s. Per-call work is kept to numpy views of the request bytes in and one `tobytes()` per
output tensor, written into the response's own fields, because with a small model the Python gRPC layer,
not the model, is what a call costs.
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
from .noise import draw_eps, reparameterize

Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[["VaeServicer", Request, grpc.aio.ServicerContext], Awaitable[Response]]


def _fill(t: vae_pb2.Tensor, a: np.ndarray) -> None:
    """Writes `a` into a response's own Tensor field: a Tensor built apart would be copied in once more."""
    t.shape[:] = a.shape
    t.data = a.tobytes()


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
        self, x: np.ndarray, seed: int | None, context: grpc.aio.ServicerContext
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """mean, log_variance, and latents = mean + exp(0.5 * log_variance) * eps with the request's eps."""
        eps = draw_eps(seed, len(x), self.latent_dim)
        mean, log_variance = await self.encoder.submit(x, context.time_remaining())
        return mean, log_variance, reparameterize(mean, log_variance, eps)

    @_answers_errors
    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        n = validation.num_samples(request.num_samples, self.max_rows)
        temperature = validation.temperature(request.temperature)
        latents = draw_eps(_seed(request), n, self.latent_dim)
        if temperature != 1.0:
            latents *= np.float32(temperature)
        (images,) = await self.decoder.submit(latents, context.time_remaining())
        response = vae_pb2.SampleResponse()
        _fill(response.images, images)
        _fill(response.latents, latents)
        return response

    @_answers_errors
    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.EncodeResponse:
        x = validation.images(request.images, "images", self.image_shape, self.max_rows)
        mean, log_variance, latents = await self._encode(x, _seed(request), context)
        response = vae_pb2.EncodeResponse()
        _fill(response.mean, mean)
        _fill(response.log_variance, log_variance)
        _fill(response.latents, latents)
        return response

    @_answers_errors
    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        z = validation.latents(request.latents, "latents", self.latent_dim, self.max_rows)
        (images,) = await self.decoder.submit(z, context.time_remaining())
        response = vae_pb2.DecodeResponse()
        _fill(response.images, images)
        return response

    @_answers_errors
    async def Reconstruct(
        self, request: vae_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ReconstructResponse:
        x = validation.images(request.images, "images", self.image_shape, self.max_rows)
        _, _, latents = await self._encode(x, _seed(request), context)
        (images,) = await self.decoder.submit(latents, context.time_remaining())
        response = vae_pb2.ReconstructResponse()
        _fill(response.images, images)
        _fill(response.latents, latents)
        return response

    async def GetModelInfo(
        self, request: vae_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelInfo:
        return self.info
