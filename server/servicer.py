"""vae.v1.VaeService: take the model version the call names, check shapes, draw the request's noise, queue its
bytes for that version's graph, reply with bytes and the version that answered.

A call passes the request's tensor bytes to the graphs' batchers as they are and writes the bytes it gets back
into the response's own fields: numpy work (value checks, the encoder's reparameterization, conversions)
happens once per batch in the batcher, because with a small model the Python gRPC layer, not the model, is
what a call costs. Errors are raised as `RequestError`s; `rpc.py` turns them into statuses.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.repository import DECODER, ENCODER, IMAGE, LATENT, LOG_VARIANCE, MEAN

from . import validation
from .batcher import NONE
from .config import Limits
from .errors import FailedPrecondition, InvalidArgument
from .graphs import EPS, LATENTS, LIKELIHOOD
from .models import Models, Served
from .noise import draw_eps, noise
from .paths import interpolate
from .scoring import ImportanceSampler

UINT8_IMAGES = frozenset({IMAGE})  # the batchers' image tensor travels as uint8 bytes (Tensor.dtype UINT8)
SCORE_CHUNKS_IN_FLIGHT = 2  # a Score's chunks (of at most a batch) queued at once: one runs while the next waits


def _fill(t: vae_pb2.Tensor, shape: tuple[int, ...], data: bytes, uint8: bool = False) -> None:
    """Writes a tensor into a response's own Tensor field: a Tensor built apart would be copied in once more."""
    t.shape[:] = shape
    t.data = data
    if uint8:
        t.dtype = vae_pb2.UINT8


def _seed(request: vae_pb2.SampleRequest | vae_pb2.EncodeRequest | vae_pb2.ReconstructRequest) -> int | None:
    return request.seed if request.HasField("seed") else None


class VaeServicer:
    """The methods of vae.v1.VaeService, registered by `rpc.add_service`."""

    def __init__(self, models: Models, limits: Limits, scored: Callable[[int], None]) -> None:
        self.models = models
        self.limits = limits
        self.scored = scored  # counts the images each Score call scored (metrics)

    def _images(self, v: Served, t: vae_pb2.Tensor, exactly: int = 0) -> tuple[int, bytes, frozenset[str]]:
        """N, the bytes, and UINT8_IMAGES when they are uint8."""
        shape = v.model.image_shape
        n, data = validation.rows(t, "images", shape, self.limits.rows, uint8_ok=True, exactly=exactly)
        return n, data, UINT8_IMAGES if t.dtype == vae_pb2.UINT8 else NONE

    @staticmethod
    def _encode(
        v: Served,
        images: bytes,
        rows: int,
        eps: bytes | None,
        uint8: frozenset[str],
        context: grpc.aio.ServicerContext,
    ) -> asyncio.Future[dict[str, bytes]]:
        """Queued: mean, log_variance, and latents = mean + exp(0.5 * log_variance) * eps (None: only the
        posterior). The batcher's future itself, not a coroutine awaiting it: one frame less per call."""
        inputs = {IMAGE: images} if eps is None else {IMAGE: images, EPS: eps}
        return v.encoder.submit(inputs, rows, context.time_remaining(), uint8_in=uint8)

    @staticmethod
    async def _decode(
        v: Served, latents: bytes, rows: int, uint8: bool, context: grpc.aio.ServicerContext
    ) -> tuple[bytes, bool]:
        """The decoded images' bytes (uint8 when asked), and whether they are uint8."""
        out = UINT8_IMAGES if uint8 else NONE
        decoded = await v.decoder.submit({LATENT: latents}, rows, context.time_remaining(), uint8_out=out)
        return decoded[IMAGE], uint8

    def work(self, method: str) -> Callable[[Any], dict[str, int]]:
        """The rows a call of `method` will run on each graph, read from its request before it is validated
        (admission's measure of its cost): sizes are clamped to the limits, so an invalid request is charged at
        most what the largest valid one would be and is then refused by validation, naming its field."""
        most, most_k = self.limits.rows, self.limits.importance_samples

        def score(r: vae_pb2.ScoreRequest) -> dict[str, int]:
            served = self.models.served.get(r.model_version) if r.model_version else self.models.newest
            if served is None or served.likelihood is None:  # refused before it runs anything
                return {}
            n = validation.stated_rows(r.images.shape, most)
            k = min(max(r.num_importance_samples, 1), most_k)
            return {ENCODER: n, LIKELIHOOD: n * k}

        works: dict[str, Callable[[Any], dict[str, int]]] = {
            "Sample": lambda r: {DECODER: min(r.num_samples, most)},
            "Encode": lambda r: {ENCODER: validation.stated_rows(r.images.shape, most)},
            "Decode": lambda r: {DECODER: validation.stated_rows(r.latents.shape, most)},
            "Reconstruct": lambda r: dict.fromkeys((ENCODER, DECODER), validation.stated_rows(r.images.shape, most)),
            "Score": score,
            "Interpolate": lambda r: {
                ENCODER: 2 * r.HasField("images"),
                DECODER: min(r.steps, self.limits.interpolation_steps),
            },
        }
        return works.get(method, lambda r: {})

    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        n = validation.num_samples(request.num_samples, self.limits.rows)
        temperature = validation.temperature(request.temperature)
        uint8 = validation.image_dtype(request.image_dtype)
        with self.models.using(request.model_version) as v:
            d = v.model.latent_dim
            z = draw_eps(_seed(request), n, d)
            if temperature != 1.0:
                z = (np.frombuffer(z, np.float32) * np.float32(temperature)).tobytes()
            images = await self._decode(v, z, n, uint8, context)
        response = vae_pb2.SampleResponse(model_version=v.version)
        _fill(response.images, (n, *v.model.image_shape), *images)
        _fill(response.latents, (n, d), z)
        return response

    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.EncodeResponse:
        with self.models.using(request.model_version) as v:
            n, images, uint8 = self._images(v, request.images)
            d = v.model.latent_dim
            encoded = await self._encode(v, images, n, draw_eps(_seed(request), n, d), uint8, context)
        response = vae_pb2.EncodeResponse(model_version=v.version)
        shape = (n, d)
        _fill(response.mean, shape, encoded[MEAN])
        _fill(response.log_variance, shape, encoded[LOG_VARIANCE])
        _fill(response.latents, shape, encoded[LATENTS])
        return response

    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        with self.models.using(request.model_version) as v:
            n, z = validation.rows(request.latents, "latents", (v.model.latent_dim,), self.limits.rows)
            images = await self._decode(v, z, n, validation.image_dtype(request.image_dtype), context)
        response = vae_pb2.DecodeResponse(model_version=v.version)
        _fill(response.images, (n, *v.model.image_shape), *images)
        return response

    async def Reconstruct(
        self, request: vae_pb2.ReconstructRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ReconstructResponse:
        with self.models.using(request.model_version) as v:
            n, images, uint8 = self._images(v, request.images)
            uint8_out = validation.image_dtype(request.image_dtype)
            d = v.model.latent_dim
            eps = draw_eps(_seed(request), n, d)
            latents = (await self._encode(v, images, n, eps, uint8, context))[LATENTS]
            reconstructions = await self._decode(v, latents, n, uint8_out, context)
        response = vae_pb2.ReconstructResponse(model_version=v.version)
        _fill(response.images, (n, *v.model.image_shape), *reconstructions)
        _fill(response.latents, (n, d), latents)
        return response

    async def Score(self, request: vae_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> vae_pb2.ScoreResponse:
        """ELBO, its two terms and the importance-weighted bound on log p(x), in nats per image, from K posterior
        samples per image drawn here and scored by the likelihood graph in chunks shared with other callers
        (scoring.py)."""
        with self.models.using(request.model_version) as v:
            if v.likelihood is None:
                raise FailedPrecondition(
                    f"Score needs the decoder's logits output, which model version {v.version} (exported by an older "
                    f"vaeserve) lacks: export the checkpoint again to score images"
                )
            n, images, uint8 = self._images(v, request.images)
            k = validation.importance_samples(request.num_importance_samples, self.limits.importance_samples)
            d = v.model.latent_dim
            encoded = await self._encode(v, images, n, None, uint8, context)
            mean = np.frombuffer(encoded[MEAN], np.float32).reshape(n, d)
            log_variance = np.frombuffer(encoded[LOG_VARIANCE], np.float32).reshape(n, d)
            x = np.frombuffer(images, np.uint8 if uint8 else np.float32).reshape(n, -1)
            sampler = ImportanceSampler(mean, log_variance, x, k, noise(_seed(request)))
            pending: deque[tuple[int, int, asyncio.Future]] = deque()
            try:
                for start, stop, inputs in sampler.chunks(self.limits.batch_rows):
                    future = v.likelihood.submit(inputs, stop - start, context.time_remaining(), uint8_in=uint8)
                    pending.append((start, stop, future))
                    if len(pending) == SCORE_CHUNKS_IN_FLIGHT:
                        start, stop, future = pending.popleft()
                        sampler.add(start, stop, await future)
                while pending:
                    start, stop, future = pending.popleft()
                    sampler.add(start, stop, await future)
            finally:  # cancelled, past its deadline or failed: the chunks still queued are dropped, never computed
                for _, _, future in pending:
                    future.cancel()
        self.scored(n)
        response = vae_pb2.ScoreResponse(model_version=v.version)
        for field, values in sampler.estimate().items():
            _fill(getattr(response, field), (n,), values.tobytes())
        return response

    async def Interpolate(
        self, request: vae_pb2.InterpolateRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.InterpolateResponse:
        """`steps` decoded points on the line (or arc) between two latents, or between two images' posterior means."""
        steps = validation.steps(request.steps, self.limits.interpolation_steps)
        uint8_out = validation.image_dtype(request.image_dtype)
        given_images, given_latents = request.HasField("images"), request.HasField("latents")
        if given_images == given_latents:
            both = ", not both" if given_images else ""
            raise InvalidArgument("images", f"give the two endpoints either as images or as latents{both}")
        with self.models.using(request.model_version) as v:
            d = v.model.latent_dim
            if given_images:
                n, images, uint8 = self._images(v, request.images, exactly=2)
                ends = (await self._encode(v, images, n, None, uint8, context))[MEAN]
            else:
                _, ends = validation.rows(request.latents, "latents", (d,), self.limits.rows, exactly=2)
                validation.check_latents(np.frombuffer(ends, np.float32))
            a, b = np.frombuffer(ends, np.float32).reshape(2, d)
            path = interpolate(a, b, steps, request.spherical).tobytes()
            images = await self._decode(v, path, steps, uint8_out, context)
        response = vae_pb2.InterpolateResponse(model_version=v.version)
        _fill(response.images, (steps, *v.model.image_shape), *images)
        _fill(response.latents, (steps, d), path)
        return response

    async def GetModelInfo(
        self, request: vae_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vae_pb2.ModelInfo:
        """The named version (0: the newest served), and every version served now."""
        info = vae_pb2.ModelInfo()
        info.CopyFrom(self.models.get(request.model_version).info)
        info.served_versions[:] = list(self.models.served)
        return info
