"""numpy-in, numpy-out clients of vae.v1.VaeService, blocking (`VaeClient`) and asyncio (`AsyncVaeClient`).
Stable import path: `from vaeserve import VaeClient`.

    with VaeClient("localhost:50051") as client:
        images, latents = client.sample(16, seed=0)
        mean, log_variance, z = client.encode(images)

Errors come back as `grpc.RpcError` (code() and details() name the status and the offending field);
`rpc_error_message` words one as the CLI prints it. Images from files: `vaeserve.client.images.read_images`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from vaeserve.errors import VaeserveError
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

from . import bulk as engine
from .bulk import chunk_seed

MB = 1 << 20
MAX_UINT32 = (1 << 32) - 1


def to_tensor(a: np.ndarray) -> vae_pb2.Tensor:
    """A float32 tensor (latents, or images in [0, 1])."""
    a = np.ascontiguousarray(a, dtype="<f4")
    return vae_pb2.Tensor(shape=a.shape, data=a.tobytes())


def image_tensor(images: np.ndarray) -> vae_pb2.Tensor:
    """Images as they are held: uint8 arrays travel as UINT8 (a quarter of the bytes; value / 255), others as
    float32 in [0, 1]."""
    if images.dtype == np.uint8:
        images = np.ascontiguousarray(images)
        return vae_pb2.Tensor(shape=images.shape, data=images.tobytes(), dtype=vae_pb2.UINT8)
    return to_tensor(images)


def from_tensor(t: vae_pb2.Tensor) -> np.ndarray:
    """float32, or uint8 for a UINT8 tensor (images: value * 255, rounded)."""
    dtype = np.uint8 if t.dtype == vae_pb2.UINT8 else np.dtype("<f4")
    return np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))


def _image_dtype(uint8: bool) -> int:
    return vae_pb2.UINT8 if uint8 else vae_pb2.FLOAT32


# One call: (RPC name, request, reader of the response). Both clients run the same calls.
Call = tuple[str, Any, Callable[[Any], Any]]


def _sample(n: int, seed: int | None, temperature: float, uint8: bool) -> Call:
    request = vae_pb2.SampleRequest(num_samples=n, seed=seed, temperature=temperature, image_dtype=_image_dtype(uint8))
    return "Sample", request, lambda r: (from_tensor(r.images), from_tensor(r.latents))


def _encode(images: np.ndarray, seed: int | None) -> Call:
    request = vae_pb2.EncodeRequest(images=image_tensor(images), seed=seed)
    return "Encode", request, lambda r: (from_tensor(r.mean), from_tensor(r.log_variance), from_tensor(r.latents))


def _decode(latents: np.ndarray, uint8: bool) -> Call:
    request = vae_pb2.DecodeRequest(latents=to_tensor(latents), image_dtype=_image_dtype(uint8))
    return "Decode", request, lambda r: from_tensor(r.images)


def _reconstruct(images: np.ndarray, seed: int | None, mean: bool, uint8: bool) -> Call:
    if mean and seed is not None:
        raise VaeserveError("seed: the posterior mean is decoded as it is (mean=True): there is no noise to seed")
    request = vae_pb2.ReconstructRequest(images=image_tensor(images), seed=seed, image_dtype=_image_dtype(uint8))
    return "Reconstruct", request, lambda r: (from_tensor(r.images), from_tensor(r.latents))


def _score(images: np.ndarray, k: int, seed: int | None) -> Call:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_UINT32:
        raise VaeserveError(f"k: expected a whole number of importance samples >= 1, got {k!r}")
    request = vae_pb2.ScoreRequest(images=image_tensor(images), num_importance_samples=int(k), seed=seed)
    fields = ("elbo", "log_likelihood", "reconstruction", "kl")
    return "Score", request, lambda r: {f: from_tensor(getattr(r, f)) for f in fields}


def _interpolate(a: np.ndarray, b: np.ndarray, steps: int, spherical: bool, uint8: bool) -> Call:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or not 2 <= steps <= MAX_UINT32:
        raise VaeserveError(f"steps: expected a whole number >= 2, got {steps!r}")
    ends = endpoints(a, b)
    given = {"images": image_tensor(ends)} if ends.ndim > 2 else {"latents": to_tensor(ends)}
    request = vae_pb2.InterpolateRequest(steps=int(steps), spherical=spherical, image_dtype=_image_dtype(uint8),
                                         **given)  # fmt: skip
    return "Interpolate", request, lambda r: (from_tensor(r.images), from_tensor(r.latents))


def _info() -> Call:
    return "GetModelInfo", vae_pb2.GetModelInfoRequest(), lambda r: r


def _answered_by(response: Any) -> int:
    """The model version a response came from: every vae.v1 response says it (ModelInfo: the version described)."""
    return response.version if isinstance(response, vae_pb2.ModelInfo) else response.model_version


def _reconstruction(
    run: Callable[[Call], Any], images: np.ndarray, seed: int | None, mean: bool, uint8: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruct through `run` (one call, or with `mean` an Encode then a Decode of the means)."""
    call = _reconstruct(images, seed, mean, uint8)  # refuses a seed with mean
    if mean:
        means = run(_encode(images, None))[0]
        return run(_decode(means, uint8)), means
    return run(call)


def channel_arguments(
    max_message_mb: int,
    tls_ca: str | Path | None,
    tls_cert: str | Path | None,
    tls_key: str | Path | None,
    options: Sequence[tuple[str, Any]],
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """(TLS credentials or None for plaintext, channel options) from the clients' arguments."""
    given = {name for name, _ in options}
    # gRPC's reconnect backoff grows to 120 s: a client would find a restarted server long after bulk work's own
    # retries (which back off to engine.BACKOFF_CAP_S) gave up.
    reconnect = [("grpc.max_reconnect_backoff_ms", int(engine.BACKOFF_CAP_S * 1000))]
    reconnect = [] if reconnect[0][0] in given else reconnect
    options = [
        ("grpc.max_receive_message_length", max_message_mb * MB),
        ("grpc.max_send_message_length", max_message_mb * MB),
        *reconnect,
        *options,
    ]
    if bool(tls_cert) != bool(tls_key):
        raise VaeserveError("--tls-cert and --tls-key: give both (the client certificate and its private key)")
    if not (tls_ca or tls_cert):
        return None, options
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca, "--tls-ca"),
        private_key=_read(tls_key, "--tls-key"),
        certificate_chain=_read(tls_cert, "--tls-cert"),
    )
    return credentials, options


class _Channel:
    """The connection both clients hold: a channel (plaintext or TLS) to `target`, the token metadata, the stub.
    `_channels` is the grpc module that makes the channel: grpc (blocking) or grpc.aio."""

    _channels: Any = grpc

    def __init__(
        self,
        target: str,
        timeout: float | None = 60.0,
        max_message_mb: int = 64,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.max_message_bytes = max_message_mb * MB
        credentials, options = channel_arguments(max_message_mb, tls_ca, tls_cert, tls_key, options)
        if credentials is None:
            self.channel = self._channels.insecure_channel(target, options=options)
        else:
            self.channel = self._channels.secure_channel(target, credentials, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = vae_pb2_grpc.VaeServiceStub(self.channel)
        # The model version that answered the latest call (0: none yet). A server may serve several versions and
        # swap them while serving (--version-policy, --model-control); with calls in flight at once (bulk work)
        # it is the version of whichever answered last.
        self.model_version = 0


class VaeClient(_Channel):
    """Blocking client; `timeout` (seconds) is every call's deadline. Arrays are float32, images [N, C, H, W] in
    [0, 1] of the model's image_shape (`info().image_shape`; `read_images` converts files to it).

    TLS: `tls_ca` (PEM file of the CA that signed the server's certificate; the system's roots when only a
    client certificate is given), and for mTLS `tls_cert` + `tls_key`. `token`: sent as `authorization: Bearer
    TOKEN` with every call. `options`: extra gRPC channel arguments.

    `model_version`: the model version that answered the latest call (0 before any).
    """

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _run(self, call: Call, timeout: float | None = None) -> Any:
        """One call; `timeout` (seconds) replaces the client's own for it (bulk work cuts it to its deadline)."""
        method, request, read = call
        timeout = self.timeout if timeout is None else timeout
        response = getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)
        self.model_version = _answered_by(response)
        return read(response)

    def sample(
        self, n: int, seed: int | None = None, temperature: float = 1.0, uint8: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(images [n, C, H, W], latents [n, latent_dim]) with z ~ N(0, temperature^2 I). Images are float32 in
        [0, 1], or with `uint8` bytes (value * 255: a quarter of the bytes on the wire); so for every method
        returning images."""
        return self._run(_sample(n, seed, temperature, uint8))

    def encode(self, images: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, log_variance, latents) [N, latent_dim] of images [N, C, H, W] (float in [0, 1], or uint8,
        sent as such); the latents are a sample of the posterior, drawn by the server (same seed, same sample)."""
        return self._run(_encode(images, seed))

    def decode(self, latents: np.ndarray, uint8: bool = False) -> np.ndarray:
        """Images [N, C, H, W] (the decoder's means) of latents [N, latent_dim]."""
        return self._run(_decode(latents, uint8))

    def reconstruct(
        self, images: np.ndarray, seed: int | None = None, mean: bool = False, uint8: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(reconstructed images, the latents that were decoded): a posterior sample, or with `mean` the posterior
        mean (deterministic: no seed needed, and none accepted)."""
        return _reconstruction(self._run, images, seed, mean, uint8)

    def score(self, images: np.ndarray, k: int = 100, seed: int | None = None) -> dict[str, np.ndarray]:
        """How likely each image is under the model, in nats, from k posterior samples drawn by the server:
        {"log_likelihood": the importance-weighted bound on log p(x), "elbo", "reconstruction", "kl"}, each [N].
        A low log_likelihood marks an image unlike the training data (anomaly detection)."""
        return self._run(_score(images, k, seed))

    def interpolate(
        self, a: np.ndarray, b: np.ndarray, steps: int = 8, spherical: bool = False, uint8: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(images [steps, C, H, W], latents [steps, latent_dim]) along the path from a to b, both ends included.

        a, b: two images ([C, H, W] or [1, C, H, W]; their posterior means are the ends) or two latents
        ([latent_dim]). spherical: slerp (constant angular speed, keeps the norm typical of the prior) instead of a
        straight line. One Interpolate call.
        """
        return self._run(_interpolate(a, b, steps, spherical, uint8))

    def info(self) -> vae_pb2.ModelInfo:
        """The served model: name, version (the newest served), served_versions (every version served now),
        latent_dim, image_shape [C, H, W], likelihood, limits, metadata."""
        return self._run(_info())

    # Bulk work (bulk.py): `items` is any iterable (a generator is read a bounded amount ahead, never held whole)
    # of image files or .npy files (paths, converted as read_images does) and arrays ([C, H, W] one image,
    # [N, C, H, W] N of them; uint8, or float in [0, 1]); one result per image, in input order. The work is split
    # into calls of at most the rows the server takes (GetModelInfo), `concurrency` of them in flight; calls
    # refused for load or while the server restarts are retried (at most `retries` times, backing off), never
    # past `deadline` seconds for the whole run. A seed is the first call's; call i uses seed + i.

    def encode_many(
        self, items: Iterable[Any], seed: int | None = None, **bulk: Any
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(mean, log_variance, latents), each [latent_dim], per image. bulk: concurrency, retries, deadline,
        resize, invert."""
        return self._many(items, lambda run, i, x: run(_encode(x, chunk_seed(seed, i))), 1, **bulk)

    def reconstruct_many(
        self, items: Iterable[Any], seed: int | None = None, mean: bool = False, uint8: bool = False, **bulk: Any
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(reconstructed image [C, H, W], its latent [latent_dim]) per image."""
        work = lambda run, i, x: _reconstruction(run, x, chunk_seed(seed, i), mean, uint8)  # noqa: E731
        return self._many(items, work, 1, **bulk)

    def score_many(
        self, items: Iterable[Any], k: int = 100, seed: int | None = None, **bulk: Any
    ) -> Iterator[dict[str, Any]]:
        """{"log_likelihood", "elbo", "reconstruction", "kl"} per image (see score); calls carry at most
        max_num_samples // k images."""
        _score(np.zeros((1, 1, 1, 1), np.float32), k, seed)  # refuses a bad k now, not at the first chunk
        return self._many(items, lambda run, i, x: run(_score(x, k, chunk_seed(seed, i))), k, **bulk)

    def _many(
        self,
        items: Iterable[Any],
        work: engine.Work,
        k: int,
        *,
        concurrency: int = engine.DEFAULT_CONCURRENCY,
        retries: int = engine.RETRIES,
        deadline: float | None = None,
        resize: bool = True,
        invert: bool = False,
    ) -> Iterator[Any]:
        engine.check_bulk_arguments(concurrency, retries, deadline)  # now, not at the first next()
        # Retried like the work: a run may begin while the server restarts.
        info = engine.call_with_retry(self, _info(), retries, None if deadline is None else time.monotonic() + deadline)
        reader = engine.Reader(tuple(info.image_shape), resize=resize, invert=invert, hint_invert=False)
        chunked = engine.chunks(reader.rows(items), engine.rows_per_call(info, self.max_message_bytes, k))
        pairs = engine.results(self, chunked, work, concurrency=concurrency, retries=retries, deadline=deadline)
        return (row for chunk, result in pairs for row in engine.split_rows(result, len(chunk.sources)))


class AsyncVaeClient(_Channel):
    """The asyncio client: the same arguments and methods as VaeClient, each a coroutine.

    async with AsyncVaeClient("localhost:50051") as client:
        images, latents = await client.sample(16, seed=0)
    """

    _channels = grpc.aio

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def _run(self, call: Call) -> Any:
        method, request, read = call
        response = await getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)
        self.model_version = _answered_by(response)
        return read(response)

    async def sample(
        self, n: int, seed: int | None = None, temperature: float = 1.0, uint8: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        return await self._run(_sample(n, seed, temperature, uint8))

    async def encode(self, images: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return await self._run(_encode(images, seed))

    async def decode(self, latents: np.ndarray, uint8: bool = False) -> np.ndarray:
        return await self._run(_decode(latents, uint8))

    async def reconstruct(
        self, images: np.ndarray, seed: int | None = None, mean: bool = False, uint8: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        if mean:
            _reconstruct(images, seed, mean, uint8)  # refuses a seed (the awaited twin of _reconstruction)
            means = (await self.encode(images))[0]
            return await self.decode(means, uint8), means
        return await self._run(_reconstruct(images, seed, mean, uint8))

    async def score(self, images: np.ndarray, k: int = 100, seed: int | None = None) -> dict[str, np.ndarray]:
        return await self._run(_score(images, k, seed))

    async def interpolate(
        self, a: np.ndarray, b: np.ndarray, steps: int = 8, spherical: bool = False, uint8: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        return await self._run(_interpolate(a, b, steps, spherical, uint8))

    async def info(self) -> vae_pb2.ModelInfo:
        return await self._run(_info())


def endpoints(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two interpolation ends as one array: two latents [2, latent_dim], or two images [2, C, H, W]."""
    uint8 = np.asarray(a).dtype == np.uint8 and np.asarray(b).dtype == np.uint8
    a, b = (np.asarray(x, np.uint8 if uint8 else np.float32) for x in (a, b))
    a, b = (x[0] if x.ndim == 4 and len(x) == 1 else x for x in (a, b))
    if a.shape != b.shape or a.ndim not in (1, 3) or not a.size:
        raise VaeserveError(f"interpolate: expected two latents [latent_dim] or two images [C, H, W] of one shape, "
                            f"got {list(a.shape)} and {list(b.shape)}")  # fmt: skip
    return np.stack([a, b])


def rpc_error_message(target: str, exc: grpc.RpcError) -> str:
    """A failed call in one line: the server, the status and its details, and what to try when nothing answers."""
    message = f"{target}: {exc.code().name}: {exc.details()}"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        message += f" (is a server running at {target}? `make serve` starts one)"
    return message


def _read(path: str | Path | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise VaeserveError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc
