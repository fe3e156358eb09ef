"""The Open Inference Protocol on a real server, spoken by NVIDIA's real tritonclient (in .venv-triton: it pins
protobuf < 7), checked against onnxruntime and vae.v1.VaeService; typed contents, errors, tokens and batching
across the two protocols through this process's own stubs of the protocol."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import ROOT, ServerProcess, serving, wait_until
from vaeserve.client.api import VaeClient
from vaeserve.protos.inference import grpc_service_pb2 as pb
from vaeserve.protos.inference import grpc_service_pb2_grpc as pb_grpc

TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
SCRIPT = Path(__file__).with_name("triton_client.py")
ROWS = 6


def triton(*args: str, **kwargs) -> subprocess.Popen | dict:
    if not TRITON_PYTHON.exists():
        pytest.skip(f"{TRITON_PYTHON} missing: `make test` creates it (tritonclient needs its own venv)")
    argv = [str(TRITON_PYTHON), str(SCRIPT), *args]
    if kwargs.get("background"):
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def checked(default_server: ServerProcess) -> dict:
    return triton("checks", default_server.target, "vae", str(ROWS))


def session(model_repo: Path, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_repo / "vae" / "1" / f"{graph}.onnx"), providers=["CPUExecutionProvider"])


def test_health_and_metadata(checked: dict) -> None:
    assert checked["live"] is True and checked["ready"] is True and checked["models_ready"] == [True, True]
    assert checked["unknown_model_ready"]["status"] == "StatusCode.NOT_FOUND"
    assert "no model 'nope' (this server has vae-encoder, vae-decoder)" in checked["unknown_model_ready"]["message"]
    assert checked["server_metadata"]["name"] == "vaeserve"
    encoder, decoder = checked["model_metadata"]["vae-encoder"], checked["model_metadata"]["vae-decoder"]
    assert encoder["versions"] == ["1"] and decoder["versions"] == ["1"]
    assert encoder["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert [o["name"] for o in encoder["outputs"]] == ["mean", "log_variance", "latents"]
    assert decoder["inputs"] == [{"name": "latent", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert decoder["outputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]


def test_inference_matches_onnxruntime_and_vae_v1(
    checked: dict, model_repo: Path, default_server: ServerProcess
) -> None:
    x = np.asarray(checked["images"], np.float32)
    z = np.asarray(checked["latents"], np.float32)
    mean, log_variance = session(model_repo, "encoder").run(None, {"image": x})
    encoded = {k: np.asarray(v, np.float32) for k, v in checked["encoded"].items()}
    np.testing.assert_allclose(encoded["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(encoded["log_variance"], log_variance, atol=1e-6)
    (image,) = session(model_repo, "decoder").run(["image"], {"latent": z})
    np.testing.assert_allclose(np.asarray(checked["decoded"]["image"], np.float32), image, atol=1e-6)
    pixels = np.rint(x * 255).astype(np.uint8)
    (from_bytes, _) = session(model_repo, "encoder").run(None, {"image": pixels.astype(np.float32) / 255})
    np.testing.assert_allclose(np.asarray(checked["encoded_uint8"]["mean"], np.float32), from_bytes, atol=1e-6)
    # Seeded latents: reproducible, and the very ones vae.v1 draws for the same seed.
    first, second = (np.asarray(s["latents"], np.float32) for s in checked["seeded"])
    np.testing.assert_array_equal(first, second)
    with VaeClient(default_server.target) as client:
        np.testing.assert_array_equal(first, client.encode(x, seed=7)[2])
        np.testing.assert_array_equal(np.asarray(checked["decoded"]["image"], np.float32), client.decode(z))


BAD = {
    "bad_shape": ("StatusCode.INVALID_ARGUMENT", "image.shape: expected [N, 1, 8, 8], got [6, 1, 7, 8]"),
    "bad_name": ("StatusCode.INVALID_ARGUMENT", "inputs[0].name: expected 'latent', got 'z'"),
    "bad_datatype": ("StatusCode.INVALID_ARGUMENT", "latent.datatype: expected FP32, got 'FP64'"),
    "bad_output": ("StatusCode.INVALID_ARGUMENT", "outputs: vae-decoder has outputs image, not 'logits'"),
    "bad_values": ("StatusCode.INVALID_ARGUMENT", "image.data: expected values in [0, 1]"),
    "bad_seed": ("StatusCode.INVALID_ARGUMENT", "parameters.seed: expected a non-negative int64_param"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_are_refused_naming_the_tensor(checked: dict, case: str) -> None:
    status, message = BAD[case]
    assert checked[case]["status"] == status and message in checked[case]["message"], checked[case]


def infer_request(model: str, name: str, array: np.ndarray, **contents) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=array.shape)
    request = pb.ModelInferRequest(model_name=model, inputs=[tensor])
    if contents:
        request.inputs[0].contents.CopyFrom(pb.InferTensorContents(**contents))
    else:
        request.raw_input_contents.append(array.astype("<f4").tobytes())
    return request


def test_typed_contents_work_like_raw_bytes(default_server: ServerProcess) -> None:
    z = np.random.default_rng(2).standard_normal((3, 8), dtype=np.float32)
    with grpc.insecure_channel(default_server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        raw = stub.ModelInfer(infer_request("vae-decoder", "latent", z), timeout=10)
        typed = stub.ModelInfer(infer_request("vae-decoder", "latent", z, fp32_contents=z.ravel()), timeout=10)
        pixels = np.arange(64, dtype=np.uint32).reshape(1, 1, 8, 8)
        request = infer_request("vae-encoder", "image", pixels.astype(np.float32), uint_contents=pixels.ravel())
        request.inputs[0].datatype = "UINT8"
        as_uint8 = stub.ModelInfer(request, timeout=10)
        request.inputs[0].contents.uint_contents[0] = 256
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=10)
    assert raw.raw_output_contents == typed.raw_output_contents and raw.outputs == typed.outputs
    assert [o.name for o in as_uint8.outputs] == ["mean", "log_variance", "latents"]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "image.contents: UINT8 values must be in 0..255"
    counted = default_server.metric('vaeserve_requests_total{code="OK",method="oip.ModelInfer"}')
    assert counted >= 3


def test_tokens_apply_to_the_protocol_too(model_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("oip-token\n")
    server = serving(model_repo, tmp_path / "serve.log", "--auth-token-file", str(tmp_path / "tokens"))
    with server as running, grpc.insecure_channel(running.target) as channel:
        ready = pb_grpc.GRPCInferenceServiceStub(channel).ModelReady
        with pytest.raises(grpc.RpcError) as refused:
            ready(pb.ModelReadyRequest(name="vae-encoder"), timeout=10)
        token = (("authorization", "Bearer oip-token"),)
        assert ready(pb.ModelReadyRequest(name="vae-encoder"), timeout=10, metadata=token).ready
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_oip_call_and_a_vae_v1_call_share_one_batch(conv_model_repo: Path, tmp_path: Path) -> None:
    big, ahead = 16384, 8  # full conv encoder runs queued ahead: the two small calls queue behind them
    flags = ("--max-batch-size", str(big), "--max-num-samples", str(big), "--max-concurrent-rpcs", str(big))
    rows, runs = 'vaeserve_batch_size_sum{graph="encoder"}', 'vaeserve_batch_size_count{graph="encoder"}'
    inflight, encoded = "vaeserve_inflight_requests", 'vaeserve_requests_total{code="OK",method="Encode"}'

    def calls_in_flight() -> tuple[int, int]:
        """(big calls not yet answered, other calls in flight), from one scrape. Each big run is a whole batch and
        the queue is first in, first out, so no small call is answered while a big one is not."""
        busy, done = server.metric_values(inflight, encoded, default=0.0)
        return ahead - int(done), int(busy) - (ahead - int(done))

    with serving(conv_model_repo, tmp_path / "serve.log", *flags) as server, VaeClient(server.target) as client:
        oip = triton("infer-on-go", server.target, "vae-encoder", "3", background=True)
        try:
            assert oip.stdout.readline().strip() == "ready"
            before = server.metric(rows), server.metric(runs)
            x = np.random.default_rng(3).random((big, 1, 8, 8), dtype=np.float32)
            bigs = [threading.Thread(target=client.encode, args=(x,)) for _ in range(ahead)]
            for thread in bigs:
                thread.start()
            # Every big call has reached the server (answered or in flight) and nothing else has.
            wait_until(lambda: calls_in_flight()[1] == 0, "the big calls to arrive", timeout=60)
            oip.stdin.write("go\n")
            oip.stdin.flush()
            small = threading.Thread(target=client.encode, args=(x[:5],))
            small.start()
            seen: list[tuple[int, int]] = []
            wait_until(lambda: seen.append(calls_in_flight()) or seen[-1][1] == 2, "both small calls in flight",
                       timeout=60)  # fmt: skip
            assert seen[-1][0] >= 1, "every big call was answered before both small calls were queued"
            for thread in (*bigs, small):
                thread.join(60)
            out = json.loads(oip.communicate(timeout=60)[0].splitlines()[-1])
        finally:
            oip.kill()
        assert np.asarray(out["mean"]).shape == (3, 8)
        # The big runs, then one that merged the OIP call's 3 rows with the vae.v1 call's 5.
        assert (server.metric(rows) - before[0], server.metric(runs) - before[1]) == (ahead * big + 8, ahead + 1)


_names = st.sampled_from(["vae-encoder", "vae-decoder", "", "nope", "x" * 300])
_input = st.builds(
    pb.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(["image", "latent", "", "y" * 300]),
    datatype=st.sampled_from(["FP32", "UINT8", "FP64", "BYTES", "", "z" * 300]),
    shape=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
    contents=st.one_of(st.none(), st.builds(pb.InferTensorContents, fp32_contents=st.lists(st.floats(width=32)),
                                              uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=64))),
)  # fmt: skip
_parameters = st.dictionaries(st.sampled_from(["seed", "other"]), st.one_of(
    st.builds(pb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.InferParameter, string_param=st.text(max_size=20)),
    st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1))), max_size=2)  # fmt: skip
_requests = st.builds(pb.ModelInferRequest, model_name=_names, model_version=st.sampled_from(["", "1", "2", "-1"]),
                      inputs=st.lists(_input, max_size=2), parameters=_parameters,
                      outputs=st.lists(st.builds(pb.ModelInferRequest.InferRequestedOutputTensor,
                                                 name=st.sampled_from(["mean", "image", "logits", ""])), max_size=3),
                      raw_input_contents=st.lists(st.binary(max_size=1024), max_size=2))  # fmt: skip
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_requests.map(lambda r: r.SerializeToString()), st.binary(max_size=512)))
def test_any_infer_request_ends_with_a_clean_status(default_server: ServerProcess, data: bytes) -> None:
    with grpc.insecure_channel(default_server.target) as channel:
        try:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(data, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert len(exc.details()) < 300, exc.details()  # bounded: never an echo of the input
    assert code in CLEAN, code
    assert "Traceback" not in default_server.output()
