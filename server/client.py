"""A small numpy-in, numpy-out client of vae.v1.VaeService, and the image files the client commands read and write.

    with VaeClient("localhost:50051") as client:
        images, latents = client.sample(16, seed=0)
        mean, log_variance, z = client.encode(images)

Errors come back as `grpc.RpcError` (code() and details() name the status and the offending field).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from vaeserve.errors import VaeserveError
from vaeserve.grid import tile
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

MB = 1 << 20


def to_tensor(a: np.ndarray) -> vae_pb2.Tensor:
    a = np.ascontiguousarray(a, dtype="<f4")
    return vae_pb2.Tensor(shape=a.shape, data=a.tobytes())


def from_tensor(t: vae_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))


class VaeClient:
    """Blocking client; `timeout` (seconds) is every call's deadline.

    TLS: `tls_ca` (PEM file of the CA that signed the server's certificate; the system's roots when only a
    client certificate is given), and for mTLS `tls_cert` + `tls_key`. `token`: sent as `authorization: Bearer
    TOKEN` with every call. `options`: extra gRPC channel arguments.
    """

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
        options = [
            ("grpc.max_receive_message_length", max_message_mb * MB),
            ("grpc.max_send_message_length", max_message_mb * MB),
            *options,
        ]
        self.target = target
        self.timeout = timeout
        if bool(tls_cert) != bool(tls_key):
            raise VaeserveError("--tls-cert and --tls-key: give both (the client certificate and its private key)")
        if tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca, "--tls-ca"),
                private_key=_read(tls_key, "--tls-key"),
                certificate_chain=_read(tls_cert, "--tls-cert"),
            )
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = vae_pb2_grpc.VaeServiceStub(self.channel)

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        return method(request, timeout=self.timeout, metadata=self.metadata)

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(images [n, C, H, W], latents [n, latent_dim]) with z ~ N(0, temperature^2 I)."""
        r = self._call(self.stub.Sample, vae_pb2.SampleRequest(num_samples=n, seed=seed, temperature=temperature))
        return from_tensor(r.images), from_tensor(r.latents)

    def encode(self, images: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, log_variance, latents) [N, latent_dim] of images [N, C, H, W] in [0, 1]."""
        r = self._call(self.stub.Encode, vae_pb2.EncodeRequest(images=to_tensor(images), seed=seed))
        return from_tensor(r.mean), from_tensor(r.log_variance), from_tensor(r.latents)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        r = self._call(self.stub.Decode, vae_pb2.DecodeRequest(latents=to_tensor(latents)))
        return from_tensor(r.images)

    def reconstruct(self, images: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(reconstructed images, the latents that were decoded)."""
        r = self._call(self.stub.Reconstruct, vae_pb2.ReconstructRequest(images=to_tensor(images), seed=seed))
        return from_tensor(r.images), from_tensor(r.latents)

    def info(self) -> vae_pb2.ModelInfo:
        return self._call(self.stub.GetModelInfo, vae_pb2.GetModelInfoRequest())


def _read(path: str | Path | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise VaeserveError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc


def read_images(paths: Sequence[str | Path], image_shape: Sequence[int]) -> np.ndarray:
    """PNG files (one image each) and .npy files ([N, C, H, W], [C, H, W], or [H, W] for one channel) as one
    float32 batch [N, C, H, W] in [0, 1]; each must already have the model's image shape."""
    from PIL import Image

    c, h, w = image_shape
    batch = []
    for path in map(Path, paths):
        if path.suffix.lower() == ".npy":
            try:
                a = np.load(path)
            except (OSError, ValueError) as exc:
                raise VaeserveError(f"{path}: cannot read as .npy ({exc})") from exc
            if a.dtype == np.uint8:
                a = a / 255.0
            if a.ndim == 2 and c == 1:
                a = a[None]
            if a.ndim == 3:
                a = a[None]
            if a.ndim != 4 or a.shape[1:] != (c, h, w):
                raise VaeserveError(
                    f"{path}: expected an array [N, {c}, {h}, {w}] (model image_shape), got {list(a.shape)}"
                )
            batch.append(a.astype(np.float32))
            continue
        try:
            image = Image.open(path)
            image.load()
        except OSError as exc:
            raise VaeserveError(f"{path}: cannot read as an image ({exc})") from exc
        if image.size != (w, h):
            raise VaeserveError(
                f"{path}: expected {w}x{h} pixels (model image_shape {[c, h, w]}), got {image.size[0]}x{image.size[1]}"
            )
        if c not in (1, 3):
            raise VaeserveError(f"{path}: the model takes {c}-channel images; use .npy [N, {c}, {h}, {w}] input")
        a = np.asarray(image.convert("L" if c == 1 else "RGB"), dtype=np.float32) / 255.0
        batch.append((a[None] if c == 1 else a.transpose(2, 0, 1))[None])
    return np.concatenate(batch)


def write_grid(images: np.ndarray, path: str | Path, columns: int | None = None, scale: int = 1) -> None:
    """Images [N, C, H, W] in [0, 1] as one PNG: a grid `columns` wide (default: square), 1-pixel gaps,
    each pixel repeated `scale` times."""
    from PIL import Image

    grid = tile(images, columns).repeat(scale, axis=1).repeat(scale, axis=2)
    pixels = (grid * 255).round().astype(np.uint8)
    # Grey for one channel (or the first of an unusual count), RGB for three.
    Image.fromarray(pixels.transpose(1, 2, 0) if len(pixels) == 3 else pixels[0]).save(path)
