"""Request checks: every field is validated against the model before anything is queued.

A tensor arrives as shape + float32 bytes; `images` and `latents` turn it into a numpy view of the
request's own buffer (no copy) or raise `InvalidArgument` naming the field and the expected value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vaeserve.protos.vae.v1 import vae_pb2

from .errors import InvalidArgument

FLOAT32 = np.dtype("<f4")
# The bits of float32 1.0. As unsigned integers, the bit patterns of +0.0 ... 1.0 are exactly 0 ... ONE_BITS:
# negative values (sign bit), values over 1, Inf and NaN all compare greater.
ONE_BITS = np.uint32(0x3F800000)


def _shape_text(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def tensor(t: vae_pb2.Tensor, field: str, row_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """The [N, *row_shape] float32 array `t` holds, 1 <= N <= max_rows; a read-only view of its bytes."""
    shape = tuple(t.shape)
    expected = _shape_text(("N", *row_shape))
    if len(shape) != 1 + len(row_shape) or shape[1:] != tuple(row_shape):
        raise InvalidArgument(f"{field}.shape", f"expected {expected}, got {_shape_text(shape)}")
    rows = shape[0]
    if not 1 <= rows <= max_rows:
        raise InvalidArgument(f"{field}.shape", f"expected {expected} with 1 <= N <= {max_rows}, got N = {rows}")
    nbytes = math.prod(shape) * FLOAT32.itemsize
    if len(t.data) != nbytes:
        raise InvalidArgument(
            f"{field}.data", f"expected {nbytes} bytes (float32 {_shape_text(shape)}), got {len(t.data)}"
        )
    return np.frombuffer(t.data, dtype=FLOAT32).reshape(shape)


def images(t: vae_pb2.Tensor, field: str, image_shape: Sequence[int], max_rows: int) -> np.ndarray:
    """Images [N, C, H, W] with every value finite and in [0, 1]."""
    x = tensor(t, field, image_shape, max_rows)
    # One integer reduction instead of min and max: a call's numpy calls cost ~10x their isolated timing
    # inside a busy server (cold caches between calls), so the per-call path keeps them few.
    if x.view("<u4").max() <= ONE_BITS:
        return x
    lo, hi = x.min(), x.max()  # NaN propagates into both, so one comparison catches it
    if not (lo >= 0.0 and hi <= 1.0):
        if not np.isfinite(x).all():
            raise InvalidArgument(f"{field}.data", "expected finite values in [0, 1], got NaN or Inf")
        raise InvalidArgument(f"{field}.data", f"expected values in [0, 1], got values in [{lo:g}, {hi:g}]")
    return x  # only -0.0 gets here


def latents(t: vae_pb2.Tensor, field: str, latent_dim: int, max_rows: int) -> np.ndarray:
    """Latents [N, latent_dim] with every value finite."""
    z = tensor(t, field, (latent_dim,), max_rows)
    if not np.isfinite(z).all():
        raise InvalidArgument(f"{field}.data", "expected finite values, got NaN or Inf")
    return z


def num_samples(n: int, max_rows: int) -> int:
    if not 1 <= n <= max_rows:
        raise InvalidArgument("num_samples", f"expected 1 <= num_samples <= {max_rows}, got {n}")
    return n


def temperature(t: float) -> float:
    """The noise scale: 0 (the proto default) means 1.0; negative, NaN or Inf is refused."""
    if not (math.isfinite(t) and t >= 0.0):
        raise InvalidArgument("temperature", f"expected a finite value >= 0 (0 means 1.0), got {t}")
    return t or 1.0
