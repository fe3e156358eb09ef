"""The vae.v1 extensions on a real server: uint8 images both ways, Score (likelihood for anomaly detection) and
Interpolate, with onnxruntime, numpy and `vaeserve evaluate` as the references."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.harness import ServerProcess, serving
from vaeserve import elbo
from vaeserve.client.api import VaeClient, from_tensor, to_tensor
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.repository import sha256_file
from vaeserve.training.checkpoint import load_model
from vaeserve.training.data import load_dataset
from vaeserve.training.evaluate import evaluate, iw_nll

SHAPE = (1, 8, 8)


def uint8_tensor(a: np.ndarray) -> vae_pb2.Tensor:
    return vae_pb2.Tensor(shape=a.shape, data=np.ascontiguousarray(a, np.uint8).tobytes(), dtype=vae_pb2.UINT8)


def held_out(n: int) -> np.ndarray:
    return load_dataset({"name": "digits"}).test.numpy()[:n]


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(model_repo, tmp_path_factory.mktemp("api") / "serve.log", "--max-importance-samples", "200") as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[VaeClient]:
    with VaeClient(server.target, timeout=60) as c:
        yield c


def call(client: VaeClient, method: str, request) -> object:
    return getattr(client.stub, method)(request, timeout=60)


def refused(client: VaeClient, method: str, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(client, method, request)
    return info.value


# --- uint8 images -------------------------------------------------------------------------------------------


def test_uint8_images_mean_value_over_255_everywhere_images_go(client: VaeClient) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, *SHAPE), dtype=np.uint8)
    as_float = pixels.astype(np.float32) / 255
    for method, make in (("Encode", lambda t: vae_pb2.EncodeRequest(images=t, seed=3)),
                         ("Reconstruct", lambda t: vae_pb2.ReconstructRequest(images=t, seed=3))):  # fmt: skip
        by_bytes, by_floats = (
            call(client, method, make(uint8_tensor(pixels))),
            call(client, method, make(to_tensor(as_float))),
        )
        assert by_bytes == by_floats, method  # the same floats reached the graphs: byte-identical answers
    score = [call(client, "Score", vae_pb2.ScoreRequest(images=t, num_importance_samples=4, seed=1))
             for t in (uint8_tensor(pixels), to_tensor(as_float))]  # fmt: skip
    assert score[0] == score[1]
    ends = [call(client, "Interpolate", vae_pb2.InterpolateRequest(images=t, steps=3))
            for t in (uint8_tensor(pixels[:2]), to_tensor(as_float[:2]))]  # fmt: skip
    assert ends[0] == ends[1]


def test_images_come_back_as_uint8_when_asked(client: VaeClient) -> None:
    z = np.random.default_rng(1).standard_normal((6, 8), dtype=np.float32)
    requests = [("Sample", vae_pb2.SampleRequest(num_samples=6, seed=2)),
                ("Decode", vae_pb2.DecodeRequest(latents=to_tensor(z))),
                ("Reconstruct", vae_pb2.ReconstructRequest(images=to_tensor(held_out(6)), seed=2)),
                ("Interpolate", vae_pb2.InterpolateRequest(latents=to_tensor(z[:2]), steps=6))]  # fmt: skip
    for method, request in requests:
        as_float = call(client, method, request)
        request.image_dtype = vae_pb2.UINT8
        as_bytes = call(client, method, request)
        assert as_bytes.images.dtype == vae_pb2.UINT8 and list(as_bytes.images.shape) == [6, *SHAPE]
        assert len(as_bytes.images.data) == 6 * 64  # a quarter of the float32 bytes
        expected = np.rint(from_tensor(as_float.images) * 255).astype(np.uint8)
        np.testing.assert_array_equal(np.frombuffer(as_bytes.images.data, np.uint8).reshape(6, *SHAPE), expected)
        if method != "Decode":  # latents stay float32, whatever the images' type
            assert as_bytes.latents == as_float.latents


def test_mixed_types_in_one_batch_each_get_their_own(client: VaeClient) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (32, *SHAPE), dtype=np.uint8)
    requests = [vae_pb2.EncodeRequest(images=uint8_tensor(pixels[i : i + 1]) if i % 2 else
                                      to_tensor(pixels[i : i + 1].astype(np.float32) / 255), seed=i)
                for i in range(32)]  # fmt: skip
    with ThreadPoolExecutor(16) as pool:  # concurrent: the batcher merges uint8 and float32 requests
        together = list(pool.map(lambda r: call(client, "Encode", r), requests))
    alone = [call(client, "Encode", r) for r in requests]
    assert together == alone


BAD_TYPES = [
    ("Decode", vae_pb2.DecodeRequest(latents=uint8_tensor(np.zeros((1, 8)))),
     "latents.dtype: expected FLOAT32, got UINT8"),
    ("Encode", vae_pb2.EncodeRequest(images=vae_pb2.Tensor(shape=[1, *SHAPE], data=bytes(64), dtype=7)),
     "images.dtype: expected FLOAT32 or UINT8, got 7"),
    ("Encode", vae_pb2.EncodeRequest(images=vae_pb2.Tensor(shape=[1, *SHAPE], data=bytes(256), dtype=vae_pb2.UINT8)),
     "images.data: expected 64 bytes (uint8 [1, 1, 8, 8]), got 256"),
    ("Sample", vae_pb2.SampleRequest(num_samples=1, image_dtype=-3), "image_dtype: expected FLOAT32 or UINT8, got -3"),
    ("Interpolate", vae_pb2.InterpolateRequest(latents=uint8_tensor(np.zeros((2, 8))), steps=2),
     "latents.dtype: expected FLOAT32, got UINT8"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "request_", "message"), BAD_TYPES)
def test_wrong_types_are_refused_naming_the_field(client: VaeClient, method: str, request_, message: str) -> None:
    error = refused(client, method, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message


# --- Score --------------------------------------------------------------------------------------------------


def score(client: VaeClient, images: np.ndarray, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    r = call(client, "Score", vae_pb2.ScoreRequest(images=to_tensor(images), num_importance_samples=k, seed=seed))
    return {f: from_tensor(getattr(r, f)) for f in ("elbo", "log_likelihood", "reconstruction", "kl")}


@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_score_agrees_with_vaeserve_evaluate(
    kind: str, digits_run: Path, gaussian_run: Path, gaussian_model_repo: Path, client: VaeClient, tmp_path: Path
) -> None:
    run = digits_run if kind == "bernoulli" else gaussian_run
    model, ckpt = load_model(run / "best.pt")
    images = load_dataset(ckpt["dataset"]).test
    expected = evaluate(model, images, iw_samples=200, seed=0)
    if kind == "bernoulli":
        scored = score(client, images.numpy(), 200)
    else:
        with serving(gaussian_model_repo, tmp_path / "gaussian.log") as server, VaeClient(server.target) as c:
            assert c.info().likelihood == "gaussian"
            scored = score(c, images.numpy(), 200)
    n = len(images)
    assert all(v.shape == (n,) and v.dtype == np.float32 for v in scored.values())
    np.testing.assert_allclose(scored["elbo"], scored["reconstruction"] - scored["kl"], rtol=1e-5, atol=1e-3)
    assert scored["log_likelihood"].mean() > scored["elbo"].mean()  # the importance-weighted bound is tighter
    # The same estimators with other noise: the means agree within Monte-Carlo error.
    # Monte-Carlo error measured, not guessed: evaluate's own spread over other seeds.
    others = [iw_nll(model, images, 200, seed).item() for seed in (1, 2, 3)]
    estimates = np.array([expected["iw_nll"], *others])
    tolerance = max(4 * estimates.std(ddof=1), 0.02)
    assert abs(-scored["log_likelihood"].mean() - estimates.mean()) <= tolerance, (scored, estimates)
    assert scored["kl"].mean() == pytest.approx(expected["kl"], rel=1e-4)  # closed form: no noise at all
    assert -scored["elbo"].mean() == pytest.approx(expected["neg_elbo"], rel=0.02)


def test_one_importance_sample_is_the_single_sample_elbo_estimate(client: VaeClient) -> None:
    x = held_out(8)
    scored = score(client, x, k=1, seed=5)
    mean, log_variance, z = client.encode(x, seed=5)  # the same seed draws the same eps: the same z
    log_w_minus_log_px = elbo.log_prior(z) - elbo.log_posterior(z, mean, log_variance)
    np.testing.assert_allclose(scored["log_likelihood"] - scored["reconstruction"], log_w_minus_log_px, atol=2e-3)
    zero = score(client, x, k=0, seed=5)  # 0 means 1
    for field, values in scored.items():
        np.testing.assert_array_equal(zero[field], values)


def test_score_is_seeded_and_batched_across_callers(client: VaeClient, server: ServerProcess) -> None:
    x = held_out(12)
    alone = [score(client, x[i : i + 3], 20, seed=i) for i in range(0, 12, 3)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: score(client, x[i : i + 3], 20, seed=i), range(0, 12, 3)))
    for a, b in zip(alone, together, strict=True):
        for field in a:
            np.testing.assert_array_equal(a[field], b[field])
    before = server.metric("vaeserve_images_scored_total")
    score(client, x, 7)
    assert server.metric("vaeserve_images_scored_total") - before == 12
    assert server.metric('vaeserve_requests_total{code="OK",method="Score"}') >= 9


def test_anomalies_score_lower_than_digits(client: VaeClient) -> None:
    digits = held_out(50)
    noise = np.random.default_rng(0).random(digits.shape, dtype=np.float32)
    assert score(client, noise, 20)["log_likelihood"].max() < score(client, digits, 20)["log_likelihood"].min()


SCORE_BOUNDS = [
    (vae_pb2.ScoreRequest(images=to_tensor(np.zeros((1, *SHAPE))), num_importance_samples=201),
     "num_importance_samples: expected at most 200 (0 means 1), got 201"),
    (vae_pb2.ScoreRequest(num_importance_samples=2), "images.shape: expected [N, 1, 8, 8], got []"),
    (vae_pb2.ScoreRequest(images=to_tensor(np.full((1, *SHAPE), 2.0))),
     "images.data: expected values in [0, 1], got values in [2, 2]"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), SCORE_BOUNDS)
def test_score_refuses_bad_requests_naming_the_field(client: VaeClient, request_, message: str) -> None:
    error = refused(client, "Score", request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message


def test_a_version_without_logits_serves_but_cannot_score(model_repo: Path, tmp_path: Path) -> None:
    version = tmp_path / "models" / "vae" / "1"
    shutil.copytree(model_repo / "vae" / "1", version)
    decoder = onnx.load(version / "decoder.onnx")  # as exported before the logits output existed
    kept = [o for o in decoder.graph.output if o.name != "logits"]
    del decoder.graph.output[:]
    decoder.graph.output.extend(kept)
    onnx.save_model(decoder, version / "decoder.onnx")
    info = json.loads((version / "model.json").read_text())
    info["graphs"]["decoder"]["outputs"].pop("logits")
    info["graphs"]["decoder"]["sha256"] = sha256_file(version / "decoder.onnx")
    (version / "model.json").write_text(json.dumps(info))
    with serving(version.parents[1], tmp_path / "serve.log") as server, VaeClient(server.target) as old:
        assert old.info().can_score is False
        assert old.sample(2, seed=0)[0].shape == (2, *SHAPE)
        error = refused(old, "Score", vae_pb2.ScoreRequest(images=to_tensor(held_out(1))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "decoder's logits output" in error.details() and "export the checkpoint again" in error.details()
    assert "Score answers FAILED_PRECONDITION" in server.output()


# --- Interpolate --------------------------------------------------------------------------------------------


def decoder_session(model_repo: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_repo / "vae" / "1" / "decoder.onnx"), providers=["CPUExecutionProvider"])


def test_interpolation_between_images_starts_and_ends_at_their_means(client: VaeClient, model_repo: Path) -> None:
    x = held_out(2)
    r = call(client, "Interpolate", vae_pb2.InterpolateRequest(images=to_tensor(x), steps=9))
    latents, images = from_tensor(r.latents), from_tensor(r.images)
    mean, _, _ = client.encode(x)
    np.testing.assert_array_equal(latents[[0, -1]], mean)
    steps = np.diff(latents, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-5)  # a straight line
    (expected,) = decoder_session(model_repo).run(["image"], {"latent": latents})
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_spherical_interpolation_follows_the_arc(client: VaeClient) -> None:
    a, b = np.zeros((2, 8), np.float32)
    a[0], b[1] = 3.0, 3.0
    r = call(client, "Interpolate", vae_pb2.InterpolateRequest(latents=to_tensor(np.stack([a, b])), steps=5,
                                                               spherical=True))  # fmt: skip
    latents = from_tensor(r.latents)
    np.testing.assert_allclose(np.linalg.norm(latents, axis=1), 3.0, rtol=1e-5)  # on the circle, not the chord
    np.testing.assert_array_equal(latents[[0, -1]], np.stack([a, b]))
    np.testing.assert_allclose(latents[2], [3 / math.sqrt(2), 3 / math.sqrt(2), 0, 0, 0, 0, 0, 0], rtol=1e-5)


INTERPOLATE_BOUNDS = [
    (vae_pb2.InterpolateRequest(latents=to_tensor(np.zeros((2, 8))), steps=1),
     "steps: expected 2 <= steps <= 4096, got 1"),
    (vae_pb2.InterpolateRequest(latents=to_tensor(np.zeros((2, 8))), steps=5000),
     "steps: expected 2 <= steps <= 4096, got 5000"),
    (vae_pb2.InterpolateRequest(steps=3), "images: give the two endpoints either as images or as latents"),
    (vae_pb2.InterpolateRequest(images=to_tensor(np.zeros((2, *SHAPE))), latents=to_tensor(np.zeros((2, 8))),
                                steps=3), "images: give the two endpoints either as images or as latents, not both"),
    (vae_pb2.InterpolateRequest(images=to_tensor(np.zeros((3, *SHAPE))), steps=3),
     "images.shape: expected [2, 1, 8, 8], got N = 3"),
    (vae_pb2.InterpolateRequest(latents=to_tensor(np.full((2, 8), np.nan)), steps=3),
     "latents.data: expected finite values, got NaN or Inf"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), INTERPOLATE_BOUNDS)
def test_interpolate_refuses_bad_requests_naming_the_field(client: VaeClient, request_, message: str) -> None:
    error = refused(client, "Interpolate", request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message


def test_model_info_states_the_new_limits(client: VaeClient) -> None:
    info = client.info()
    assert (info.max_importance_samples, info.max_interpolation_steps, info.can_score) == (200, 4096, True)
