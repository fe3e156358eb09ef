"""Every RPC against a real server on loopback, checked against onnxruntime run in-process on the same graphs."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MAX_MESSAGE_MB, MAX_NUM_SAMPLES
from tests.harness import ServerProcess
from vaeserve.client.api import VaeClient, from_tensor, to_tensor
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

SHAPE = (1, 8, 8)
LATENT_DIM = 8


def graph(repo: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / "vae" / "1" / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def eps(seed: int, n: int) -> np.ndarray:
    """The noise the contract promises for a seed: PCG64(seed) standard normals [n, latent_dim], float32."""
    return np.random.Generator(np.random.PCG64(seed)).standard_normal((n, LATENT_DIM), dtype=np.float32)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def test_the_start_up_log_says_how_batches_run_and_why(server: ServerProcess) -> None:
    # Defaults measured at warm-up, not tuned for one model: the worker's threads and the event loop's budget. The
    # digits MLP's full batch (32 rows here) runs in microseconds: no spinning session, and no threads measured.
    log = server.output()
    assert re.search(r"encoder: the worker runs the event loop's session, 1 intra-op thread \(a full batch on one "
                     r"thread runs within 5 ms: no batch to spin for\)", log), log  # fmt: skip
    assert re.search(r"batches run on the event loop up to \d+ rows \(encoder\) and \d+ rows \(decoder\): predicted "
                     r"within \d+ us \(auto: how long one batch may hold the event loop, or the round trip to the "
                     r"worker thread where longer \(\d+ us, measured at start\)\)", log), log  # fmt: skip


def test_model_info(client: VaeClient) -> None:
    info = client.info()
    assert (info.name, info.version, info.latent_dim) == ("vae", 1, LATENT_DIM)
    assert list(info.image_shape) == list(SHAPE)
    assert info.likelihood in ("bernoulli", "gaussian")
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.metadata["latent_dim"] == str(LATENT_DIM)
    assert (info.max_batch_size, info.max_num_samples) == (32, MAX_NUM_SAMPLES)


def test_encode_is_the_encoder_graph_plus_the_seeds_reparameterization(client: VaeClient, model_repo: Path) -> None:
    x = images(5)
    mean, log_variance, latents = client.encode(x, seed=11)
    want_mean, want_log_variance = graph(model_repo, "encoder").run(None, {"image": x})
    np.testing.assert_allclose(mean, want_mean, atol=1e-6)
    np.testing.assert_allclose(log_variance, want_log_variance, atol=1e-6)
    np.testing.assert_allclose(latents, mean + np.exp(0.5 * log_variance) * eps(11, 5), rtol=1e-6, atol=1e-6)
    assert latents.tobytes() == client.encode(x, seed=11)[2].tobytes()


def test_decode_is_the_decoder_graph(client: VaeClient, model_repo: Path) -> None:
    z = np.random.default_rng(1).standard_normal((7, LATENT_DIM), dtype=np.float32)
    out = client.decode(z)
    assert out.shape == (7, *SHAPE)
    np.testing.assert_allclose(out, graph(model_repo, "decoder").run(None, {"latent": z})[0], atol=1e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(("temperature", "scale"), [(0.0, 1.0), (1.0, 1.0), (0.5, 0.5)])
def test_sample_decodes_the_seeds_noise_times_temperature(
    client: VaeClient, model_repo: Path, temperature: float, scale: float
) -> None:
    out, latents = client.sample(6, seed=3, temperature=temperature)
    assert latents.tobytes() == (eps(3, 6) * np.float32(scale)).tobytes()
    np.testing.assert_allclose(out, graph(model_repo, "decoder").run(None, {"latent": latents})[0], atol=1e-6)


def test_reconstruct_is_encode_reparameterize_decode(client: VaeClient, model_repo: Path) -> None:
    x = images(4, seed=2)
    out, latents = client.reconstruct(x, seed=5)
    mean, log_variance = graph(model_repo, "encoder").run(None, {"image": x})
    np.testing.assert_allclose(latents, mean + np.exp(0.5 * log_variance) * eps(5, 4), atol=1e-5)
    np.testing.assert_allclose(out, graph(model_repo, "decoder").run(None, {"latent": latents})[0], atol=1e-6)


def test_unseeded_requests_draw_fresh_noise(client: VaeClient) -> None:
    assert client.sample(2)[1].tobytes() != client.sample(2)[1].tobytes()
    x = images(2)
    assert client.encode(x)[2].tobytes() != client.encode(x)[2].tobytes()


def test_requests_up_to_the_limit_are_split_into_batches(client: VaeClient, model_repo: Path) -> None:
    # 512 rows with --max-batch-size 32: sixteen runs, rows back in order.
    out, latents = client.sample(MAX_NUM_SAMPLES, seed=9)
    assert latents.tobytes() == eps(9, MAX_NUM_SAMPLES).tobytes()
    np.testing.assert_allclose(out, graph(model_repo, "decoder").run(None, {"latent": latents})[0], atol=1e-6)


async def _mixed_burst(target: str, probe: vae_pb2.ReconstructRequest, others: int) -> vae_pb2.ReconstructResponse:
    """The probe amid `others` concurrent calls of every kind (seeded and not, of many sizes); returns the probe's."""
    rng = np.random.default_rng(0)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        calls = []
        for i in range(others):
            n = int(rng.integers(1, 40))
            seed = int(rng.integers(1 << 32)) if i % 2 else None
            kind = i % 4
            if kind == 0:
                calls.append(stub.Sample(vae_pb2.SampleRequest(num_samples=n, seed=seed)))
            elif kind == 1:
                calls.append(stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(images(n, i)), seed=seed)))
            elif kind == 2:
                z = rng.standard_normal((n, LATENT_DIM)).astype(np.float32)
                calls.append(stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(z))))
            else:
                calls.append(stub.Reconstruct(vae_pb2.ReconstructRequest(images=to_tensor(images(n, i)), seed=seed)))
            if i == others // 2:
                calls.append(stub.Reconstruct(probe))
        responses = await asyncio.gather(*calls)
        return responses[others // 2 + 1]


def test_seeded_results_do_not_depend_on_what_they_are_batched_with(server: ServerProcess, client: VaeClient) -> None:
    x = images(3, seed=42)
    alone_images, alone_latents = client.reconstruct(x, seed=1234)
    probe = vae_pb2.ReconstructRequest(images=to_tensor(x), seed=1234)
    rows_before = server.metric('vaeserve_batch_size_sum{graph="decoder"}')
    runs_before = server.metric('vaeserve_batch_size_count{graph="decoder"}')
    for _ in range(5):  # until the burst really shared runs (it nearly always does the first time)
        r = asyncio.run(_mixed_burst(server.target, probe, others=60))
        assert from_tensor(r.latents).tobytes() == alone_latents.tobytes()  # the noise: byte-identical
        np.testing.assert_allclose(from_tensor(r.images), alone_images, atol=1e-5)
        rows = server.metric('vaeserve_batch_size_sum{graph="decoder"}') - rows_before
        runs = server.metric('vaeserve_batch_size_count{graph="decoder"}') - runs_before
        if rows > runs:
            break
    assert rows > runs, "no decoder run merged two requests"


def _status(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def tensor(shape: tuple[int, ...], fill: float = 0.5, nbytes: int | None = None) -> vae_pb2.Tensor:
    n = 4 * math.prod(shape) if nbytes is None else nbytes
    return vae_pb2.Tensor(shape=shape, data=np.full(n // 4, fill, "<f4").tobytes()[:n].ljust(n, b"\0"))


BAD_REQUESTS = [
    ("Encode", vae_pb2.EncodeRequest(images=tensor((3, 1, 28, 28))),
     "images.shape: expected [N, 1, 8, 8], got [3, 1, 28, 28]"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((8, 8))), "images.shape: expected [N, 1, 8, 8], got [8, 8]"),
    ("Encode", vae_pb2.EncodeRequest(), "images.shape: expected [N, 1, 8, 8], got []"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((0, 1, 8, 8))),
     f"images.shape: expected [N, 1, 8, 8] with 1 <= N <= {MAX_NUM_SAMPLES}, got N = 0"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((2, 1, 8, 8), nbytes=100)),
     "images.data: expected 512 bytes (float32 [2, 1, 8, 8]), got 100"),
    ("Encode", vae_pb2.EncodeRequest(images=tensor((2, 1, 8, 8), math.nan)),
     "images.data: expected finite values in [0, 1], got NaN or Inf"),
    ("Reconstruct", vae_pb2.ReconstructRequest(images=tensor((2, 1, 8, 8), math.inf)),
     "images.data: expected finite values in [0, 1], got NaN or Inf"),
    ("Reconstruct", vae_pb2.ReconstructRequest(images=tensor((2, 1, 8, 8), 255.0)),
     "images.data: expected values in [0, 1], got values in [255, 255]"),
    ("Reconstruct", vae_pb2.ReconstructRequest(images=tensor((MAX_NUM_SAMPLES + 1, 1, 8, 8))),
     f"images.shape: expected [N, 1, 8, 8] with 1 <= N <= {MAX_NUM_SAMPLES}, got N = {MAX_NUM_SAMPLES + 1}"),
    ("Decode", vae_pb2.DecodeRequest(latents=tensor((4, 16))), "latents.shape: expected [N, 8], got [4, 16]"),
    ("Decode", vae_pb2.DecodeRequest(latents=tensor((4, 8), -math.inf)),
     "latents.data: expected finite values, got NaN or Inf"),
    ("Decode", vae_pb2.DecodeRequest(latents=tensor((0, 8))),
     f"latents.shape: expected [N, 8] with 1 <= N <= {MAX_NUM_SAMPLES}, got N = 0"),
    ("Sample", vae_pb2.SampleRequest(num_samples=0),
     f"num_samples: expected 1 <= num_samples <= {MAX_NUM_SAMPLES}, got 0"),
    ("Sample", vae_pb2.SampleRequest(num_samples=MAX_NUM_SAMPLES + 1),
     f"num_samples: expected 1 <= num_samples <= {MAX_NUM_SAMPLES}, got {MAX_NUM_SAMPLES + 1}"),
    ("Sample", vae_pb2.SampleRequest(num_samples=1, temperature=-1.0),
     "temperature: expected a finite value >= 0 (0 means 1.0), got -1.0"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "request_", "message"), BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_field_and_expected_value(
    client: VaeClient, method: str, request_: object, message: str
) -> None:
    error = _status(getattr(client.stub, method), request_, timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


def test_oversized_message_is_resource_exhausted(client: VaeClient) -> None:
    n = MAX_MESSAGE_MB * (1 << 20) // (4 * 64) + 1  # one image more than fits
    error = _status(client.stub.Encode, vae_pb2.EncodeRequest(images=tensor((n, 1, 8, 8))), timeout=10)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()
    assert client.sample(1, seed=0)[0].shape == (1, *SHAPE)  # and the server carries on


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(-1, 9), max_size=5),
    extra=st.integers(-4, 4),
    fill=st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, math.nan, math.inf]),
)
def test_random_requests_get_an_answer_never_a_crash(client: VaeClient, shape: list, extra: int, fill: float) -> None:
    size = math.prod(shape) if shape and min(shape) >= 0 else 0
    t = tensor(tuple(shape), fill, nbytes=max(0, 4 * size + extra))
    for call, request in ((client.stub.Encode, vae_pb2.EncodeRequest(images=t)),
                          (client.stub.Decode, vae_pb2.DecodeRequest(latents=t))):  # fmt: skip
        try:
            call(request, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            assert exc.details().startswith(("images.", "latents."))


def test_reflection_lists_the_services(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in response.list_services_response.service}
    assert {"vae.v1.VaeService", "grpc.health.v1.Health"} <= names
