"""Request validation and the server's noise, on their own (no server)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaeserve.client.api import to_tensor
from vaeserve.elbo import reparameterize
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.repository import IMAGE
from vaeserve.server import graphs, validation
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.noise import Noise, draw_eps

IMAGE_SHAPE = (1, 8, 8)


def images(t: vae_pb2.Tensor, max_rows: int = 8) -> np.ndarray:
    """What the server does with an images field: shape and size on arrival, values in the batcher."""
    n, data = validation.rows(t, "images", IMAGE_SHAPE, max_rows)
    x = np.frombuffer(data, "<f4").reshape(n, *IMAGE_SHAPE)
    validation.check_images(x)
    return x


def test_rows_are_counted_and_the_bytes_passed_on_as_they_are() -> None:
    x = np.random.default_rng(0).random((3, *IMAGE_SHAPE), dtype=np.float32)
    n, data = validation.rows(to_tensor(x), "images", IMAGE_SHAPE, 8)
    assert n == 3 and data == x.tobytes()


@pytest.mark.parametrize(
    ("shape", "data_len", "message"),
    [
        ((3, 1, 28, 28), None, "images.shape: expected [N, 1, 8, 8], got [3, 1, 28, 28]"),
        ((1, 8, 8), None, "images.shape: expected [N, 1, 8, 8], got [1, 8, 8]"),
        ((), 0, "images.shape: expected [N, 1, 8, 8], got []"),
        ((0, 1, 8, 8), 0, "images.shape: expected [N, 1, 8, 8] with 1 <= N <= 8, got N = 0"),
        ((9, 1, 8, 8), None, "images.shape: expected [N, 1, 8, 8] with 1 <= N <= 8, got N = 9"),
        ((2, 1, 8, 8), 511, "images.data: expected 512 bytes (float32 [2, 1, 8, 8]), got 511"),
    ],
)
def test_bad_image_tensors_name_the_field_and_expected_value(shape: tuple, data_len: int | None, message: str) -> None:
    n = data_len if data_len is not None else 4 * math.prod(shape)
    t = vae_pb2.Tensor(shape=shape, data=bytes(n))
    with pytest.raises(InvalidArgument) as info:
        images(t)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "images.data: expected finite values in [0, 1], got NaN or Inf"),
        (np.inf, "images.data: expected finite values in [0, 1], got NaN or Inf"),
        (1.5, "images.data: expected values in [0, 1], got values in [0, 1.5]"),
        (-0.25, "images.data: expected values in [0, 1], got values in [-0.25, 0]"),
    ],
)
def test_image_values_must_be_finite_and_in_unit_range(value: float, message: str) -> None:
    x = np.zeros((2, *IMAGE_SHAPE), np.float32)
    x[1, 0, 3, 4] = value
    with pytest.raises(InvalidArgument) as info:
        images(to_tensor(x))
    assert str(info.value) == message


def test_latents_check_dimension_and_finiteness() -> None:
    with pytest.raises(InvalidArgument, match=r"latents.shape: expected \[N, 8\], got \[2, 4\]"):
        validation.rows(to_tensor(np.zeros((2, 4))), "latents", (8,), 8)
    z = np.zeros((2, 8), np.float32)
    z[0, 0] = -np.inf
    with pytest.raises(InvalidArgument, match=r"latents\.data: expected finite values"):
        validation.check_latents(z)
    validation.check_latents(np.full((2, 8), 1e30, np.float32))  # large but finite latents are the caller's business


def test_num_samples_and_temperature() -> None:
    assert validation.num_samples(8, 8) == 8
    for n in (0, 9):
        with pytest.raises(InvalidArgument, match=rf"num_samples: expected 1 <= num_samples <= 8, got {n}"):
            validation.num_samples(n, 8)
    assert validation.temperature(0.0) == 1.0
    assert validation.temperature(0.5) == 0.5
    for t in (-1.0, math.nan, math.inf):
        with pytest.raises(InvalidArgument, match="temperature: expected a finite value >= 0"):
            validation.temperature(t)


@given(
    shape=st.lists(st.integers(-2, 10), max_size=5),
    extra_bytes=st.integers(-8, 8),
    fill=st.floats(allow_nan=True, allow_infinity=True, width=32),
)
def test_any_tensor_is_accepted_exactly_when_it_is_valid(shape: list[int], extra_bytes: int, fill: float) -> None:
    size = math.prod(shape) if shape and min(shape) >= 0 else 0
    t = vae_pb2.Tensor(shape=shape, data=np.full(max(0, size * 4 + extra_bytes) // 4, fill, "<f4").tobytes())
    valid = (len(shape) == 4 and tuple(shape[1:]) == IMAGE_SHAPE and 1 <= shape[0] <= 8 and extra_bytes == 0
             and 0.0 <= fill <= 1.0)  # fmt: skip
    try:
        x = images(t)
    except InvalidArgument as exc:
        assert not valid, exc
        assert str(exc).startswith(("images.shape: expected [N, 1, 8, 8]", "images.data: expected"))
    else:
        assert valid and x.shape == tuple(shape)


def test_eps_is_a_pure_function_of_the_seed() -> None:
    a, b = draw_eps(7, 5, 8), draw_eps(7, 5, 8)
    assert a == b
    assert a == np.random.Generator(np.random.PCG64(7)).standard_normal((5, 8), np.float32).tobytes()
    assert draw_eps(8, 5, 8) != a
    assert draw_eps(None, 5, 8) != draw_eps(None, 5, 8)  # fresh entropy when unseeded


def test_unseeded_noise_is_one_stream_taken_in_order_across_blocks() -> None:
    # A small block, so takes cross block boundaries (and one take is bigger than a block).
    stream = Noise(np.random.Generator(np.random.PCG64(5)), block=10)
    taken = b"".join(stream.take(n) for n in (3, 4, 5, 25, 1, 9))
    assert len(taken) == 4 * 47
    # The same values, in the same order, as one draw of the generator: nothing skipped, nothing repeated.
    assert taken == np.random.Generator(np.random.PCG64(5)).standard_normal(47, np.float32).tobytes()


def test_unseeded_noise_is_standard_normal() -> None:
    eps = np.frombuffer(b"".join(draw_eps(None, 100, 8) for _ in range(50)), np.float32)
    assert abs(eps.mean()) < 0.02 and abs(eps.std() - 1) < 0.02  # 40,000 draws: 5+ standard errors of slack


def test_reparameterize_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    mean, log_variance, eps = (rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3))
    z = reparameterize(mean, log_variance, eps)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, mean + np.sqrt(np.exp(log_variance)) * eps, rtol=1e-6)


@given(st.lists(st.integers(0, 2**32 - 1), min_size=64, max_size=64))
def test_image_values_are_checked_bit_pattern_by_bit_pattern(bits: list[int]) -> None:
    # Any float32 bit patterns (NaNs with payloads, subnormals, -0.0, Inf): accepted exactly when every
    # value is in [0, 1], as a float comparison says.
    x = np.array(bits, "<u4").view("<f4").reshape(1, *IMAGE_SHAPE)
    valid = bool(np.all((x >= 0.0) & (x <= 1.0)))
    try:
        got = images(to_tensor(x))
    except InvalidArgument:
        assert not valid
    else:
        assert valid and got.tobytes() == x.tobytes()


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, np.nextafter(np.float32(0), np.float32(1)), np.float32(0.5)])
def test_unit_range_edges_are_accepted(value: float) -> None:
    x = np.full((1, *IMAGE_SHAPE), value, np.float32)
    np.testing.assert_array_equal(images(to_tensor(x)), x)


@pytest.mark.parametrize(
    "value", [np.nextafter(np.float32(1), np.float32(2)), -np.nextafter(np.float32(0), np.float32(1)), -np.inf]
)
def test_just_outside_the_unit_range_is_refused(value: float) -> None:
    x = np.zeros((1, *IMAGE_SHAPE), np.float32)
    x[0, 0, 7, 7] = value
    with pytest.raises(InvalidArgument, match=r"images\.data: expected"):
        images(to_tensor(x))


def test_the_encoders_batch_function_reparameterizes_each_row_with_its_own_eps() -> None:
    rng = np.random.default_rng(1)
    mean, log_variance = (rng.standard_normal((5, 3)).astype(np.float32) for _ in range(2))
    images = rng.random((5, *IMAGE_SHAPE), dtype=np.float32)
    eps = np.frombuffer(draw_eps(3, 5, 3), np.float32).reshape(5, 3)
    encoder = graphs.encoder(IMAGE_SHAPE, latent_dim=3)
    got_mean, got_log_variance, z = encoder.compute(lambda x: [mean, log_variance], {IMAGE: images, graphs.EPS: eps})
    assert got_mean is mean and got_log_variance is log_variance
    for i in range(5):  # a row's z is the same computed alone
        np.testing.assert_array_equal(z[i], reparameterize(mean[i : i + 1], log_variance[i : i + 1], eps[i : i + 1])[0])
