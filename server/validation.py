"""Request checks: every field is validated against the model, naming the field and the expected value.

A tensor arrives as shape + float32 bytes. Its shape and size are checked when the call arrives (`rows`), in
plain Python; its values (`check_images`, `check_latents`) are checked on numpy arrays by the batcher, once
per batch, and request by request only when a batch fails, so the per-call path makes no numpy call (what
that saves: BENCHMARKS.md, "Design measurements").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vaeserve.api_bounds import MAX_TEMPERATURE
from vaeserve.protos.vae.v1 import vae_pb2

from .errors import InvalidArgument

FLOAT32 = np.dtype("<f4")
# The bits of float32 1.0. As unsigned integers, the bit patterns of +0.0 ... 1.0 are exactly 0 ... ONE_BITS:
# negative values (sign bit), values over 1, Inf and NaN all compare greater.
ONE_BITS = np.uint32(0x3F800000)


DTYPE_NAMES = {vae_pb2.FLOAT32: "FLOAT32", vae_pb2.UINT8: "UINT8"}
MAX_SHOWN_DIMS = 8  # a message never echoes more of a shape than this: the shape list is the caller's to inflate


def _shape_text(shape: Sequence[int | str]) -> str:
    if len(shape) > MAX_SHOWN_DIMS:
        return f"a shape of {len(shape)} dimensions"
    return "[" + ", ".join(str(s) for s in shape) + "]"


def rows(
    t: vae_pb2.Tensor, field: str, row_shape: Sequence[int], max_rows: int, uint8_ok: bool = False, exactly: int = 0
) -> tuple[int, bytes]:
    """N and the bytes of `t`, a [N, *row_shape] tensor with 1 <= N <= max_rows (N == `exactly` when given),
    float32, or uint8 where `uint8_ok` (images: byte / 255)."""
    dtype = t.dtype
    if dtype not in DTYPE_NAMES or (dtype == vae_pb2.UINT8 and not uint8_ok):
        expected = "FLOAT32 or UINT8" if uint8_ok else "FLOAT32"
        raise InvalidArgument(f"{field}.dtype", f"expected {expected}, got {DTYPE_NAMES.get(dtype, dtype)}")
    data = t.data  # one read: each read of a bytes field makes a new bytes object
    return shaped_rows(t.shape, data, dtype == vae_pb2.UINT8, field, row_shape, max_rows, exactly), data


def shaped_rows(
    shape: Sequence[int],
    data: bytes,
    uint8: bool,
    field: str,
    row_shape: Sequence[int],
    max_rows: int,
    exactly: int = 0,
) -> int:
    """N of a [N, *row_shape] tensor of float32 (or uint8) values held in `data`, any protocol's. The number of
    dimensions is checked before any per-dimension work, so a request's cost here does not grow with its shape
    list."""
    if len(shape) != 1 + len(row_shape):
        expected = _shape_text(("N", *row_shape))
        raise InvalidArgument(f"{field}.shape", f"expected {expected}, got {_shape_text(shape)}")
    shape = tuple(shape)
    if shape[1:] != tuple(row_shape):
        expected = _shape_text(("N", *row_shape))
        raise InvalidArgument(f"{field}.shape", f"expected {expected}, got {_shape_text(shape)}")
    n = shape[0]
    if exactly and n != exactly:
        raise InvalidArgument(f"{field}.shape", f"expected {_shape_text((exactly, *row_shape))}, got N = {n}")
    if not 1 <= n <= max_rows:
        expected = _shape_text(("N", *row_shape))
        raise InvalidArgument(f"{field}.shape", f"expected {expected} with 1 <= N <= {max_rows}, got N = {n}")
    nbytes = math.prod(shape) * (1 if uint8 else FLOAT32.itemsize)
    if len(data) != nbytes:
        expected = f"expected {nbytes} bytes ({'uint8' if uint8 else 'float32'} {_shape_text(shape)})"
        raise InvalidArgument(f"{field}.data", f"{expected}, got {len(data)}")
    return n


def stated_rows(shape: Sequence[int], most: int) -> int:
    """A tensor's leading dimension as the request states it, clamped to [0, most], nothing checked yet: what
    admission charges a call before validation refuses it or not."""
    return min(max(shape[0], 0), most) if shape else 0


def image_dtype(dtype: int, field: str = "image_dtype") -> bool:
    """Whether images go back as UINT8 (else FLOAT32); any other value is refused."""
    if dtype not in DTYPE_NAMES:
        raise InvalidArgument(field, f"expected FLOAT32 or UINT8, got {dtype}")
    return dtype == vae_pb2.UINT8


def importance_samples(k: int, max_k: int) -> int:
    """Score's K: 0 (the proto default) means 1."""
    if k > max_k:
        raise InvalidArgument("num_importance_samples", f"expected at most {max_k} (0 means 1), got {k}")
    return k or 1


def steps(n: int, max_steps: int) -> int:
    if not 2 <= n <= max_steps:
        raise InvalidArgument("steps", f"expected 2 <= steps <= {max_steps}, got {n}")
    return n


def check_images(x: np.ndarray, field: str = "images") -> None:
    """Every value finite and in [0, 1]."""
    if x.view("<u4").max() <= ONE_BITS:  # one integer reduction instead of min and max
        return
    lo, hi = x.min(), x.max()  # NaN propagates into both, so one comparison catches it
    if not (lo >= 0.0 and hi <= 1.0):
        if not np.isfinite(x).all():
            raise InvalidArgument(f"{field}.data", "expected finite values in [0, 1], got NaN or Inf")
        raise InvalidArgument(f"{field}.data", f"expected values in [0, 1], got values in [{lo:g}, {hi:g}]")
    # only -0.0 gets here


def check_latents(z: np.ndarray, field: str = "latents") -> None:
    """Every value finite."""
    if not np.isfinite(z).all():
        raise InvalidArgument(f"{field}.data", "expected finite values, got NaN or Inf")


def num_samples(n: int, max_rows: int) -> int:
    if not 1 <= n <= max_rows:
        raise InvalidArgument("num_samples", f"expected 1 <= num_samples <= {max_rows}, got {n}")
    return n


def temperature(t: float) -> float:
    """The noise scale: 0 (the proto default) means 1.0; negative, NaN, Inf or over MAX_TEMPERATURE is refused."""
    if not (math.isfinite(t) and t >= 0.0):
        raise InvalidArgument("temperature", f"expected a finite value >= 0 (0 means 1.0), got {t}")
    if t > MAX_TEMPERATURE:
        raise InvalidArgument("temperature", f"expected at most {MAX_TEMPERATURE:g}, got {t:g}")
    return t or 1.0


def check_decoded(images: np.ndarray, field: str = "latents") -> None:
    """Decoded pixels must be finite: latents far outside the prior can overflow the decoder's arithmetic."""
    if not np.isfinite(images).all():
        raise InvalidArgument(
            f"{field}.data", "the decoder computed NaN or Inf pixels from these latents: they are too large for it"
        )
