"""Calls that cost far more than their bytes say, against a real server (issue 22, items 1 and 2): an Open
Inference Protocol request naming its outputs many times, and Score at its limits (N images x K samples).

The server must refuse what it cannot bound before computing it, charge admitted calls their work rather than
one call each, keep its event loop answering other calls while the costliest admitted call runs, and stop
working for a call nobody waits for any more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.harness import ServerProcess, health_status, serving, wait_until
from vaeserve.client.api import to_tensor
from vaeserve.protos.inference import grpc_service_pb2 as oip
from vaeserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

SHAPE = (1, 8, 8)
MAX_ROWS, MAX_K = 4096, 1000  # the default --max-num-samples and --max-importance-samples
SCORED = "vaeserve_score_samples_total"  # likelihood rows computed


def infer(target: str, model: str, outputs: list[str], rows: int = 1) -> oip.ModelInferResponse:
    name, shape = ("image", [rows, *SHAPE]) if model == "vae-encoder" else ("latent", [rows, 8])
    request = oip.ModelInferRequest(model_name=model, outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(
        name=n) for n in outputs])  # fmt: skip
    request.inputs.add(name=name, datatype="FP32", shape=shape)
    request.raw_input_contents.append(np.full(shape, 0.5, np.float32).tobytes())
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
        return oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.mark.parametrize(("model", "output"), [("vae-encoder", "latents"), ("vae-decoder", "image")])
def test_an_output_named_many_times_is_refused_before_computing(
    default_server: ServerProcess, model: str, output: str
) -> None:
    counted = 'vaeserve_requests_total{code="INVALID_ARGUMENT",method="oip.ModelInfer"}'
    before = default_server.metric(counted, 0)
    # 200 names once made 200 copies of the largest reply; 80,000 names of one row still fit the message limit.
    for repeats, rows in ((2, MAX_ROWS), (200, MAX_ROWS), (80_000, 1)):
        error = refusal(
            lambda repeats=repeats, rows=rows: infer(default_server.target, model, [output] * repeats, rows)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == f"outputs: {output!r} is asked for more than once: name each output once"
    # A call is counted as its handler ends, which can be just after the client has its status.
    wait_until(lambda: default_server.metric(counted, 0) - before >= 3, "the refusals to be counted")
    assert default_server.metric(counted) - before == 3
    assert "Traceback" not in default_server.output()


def test_unknown_and_garbage_output_names_are_refused(default_server: ServerProcess) -> None:
    for name in ("", "nope", "\x00\xff" * 1000, "latents " * 10):
        error = refusal(lambda name=name: infer(default_server.target, "vae-encoder", ["mean", name]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("outputs: vae-encoder has outputs mean, log_variance, latents, not ")
        assert len(error.details()) < 100 + 4 * 64  # the name is quoted short (64 characters, escaped)


def test_the_largest_valid_reply_fits_the_message_limit(default_server: ServerProcess) -> None:
    """Every output once, at the most rows: the biggest reply a request can ask for is served."""
    reply = infer(default_server.target, "vae-encoder", ["mean", "log_variance", "latents"], rows=MAX_ROWS)
    assert [o.name for o in reply.outputs] == ["mean", "log_variance", "latents"]
    assert [len(raw) for raw in reply.raw_output_contents] == [MAX_ROWS * 8 * 4] * 3
    reply = infer(default_server.target, "vae-decoder", [], rows=MAX_ROWS)
    assert [len(raw) for raw in reply.raw_output_contents] == [MAX_ROWS * 64 * 4]


def score_request(n: int, k: int, seed: int = 0) -> vae_pb2.ScoreRequest:
    images = np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)
    return vae_pb2.ScoreRequest(images=to_tensor(images), num_importance_samples=k, seed=seed)


async def _costliest_score_beside_others(default_server: ServerProcess) -> dict:
    """Starts the costliest Score admitted (N x K at their limits), and while it runs: a second one, small calls on
    the other graphs, and health checks; then cancels it."""
    async with grpc.aio.insecure_channel(default_server.target) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        before = default_server.metric(SCORED, 0)
        costly = stub.Score(score_request(MAX_ROWS, MAX_K), timeout=600)
        await asyncio.to_thread(
            wait_until, lambda: default_server.metric(SCORED, 0) > before, "the costly Score to start"
        )
        second = stub.Score(score_request(MAX_ROWS, MAX_K, seed=1), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second
        small = await asyncio.gather(
            stub.Sample(vae_pb2.SampleRequest(num_samples=16, seed=1), timeout=60),
            stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(np.full((4, *SHAPE), 0.5, np.float32))), timeout=60),
            stub.Score(score_request(2, 3), timeout=60),  # a small Score gets its turn between the big one's batches
            return_exceptions=True,
        )
        health = [await asyncio.to_thread(health_status, default_server.target) for _ in range(5)]
        still_running = not costly.done()
        costly.cancel()
        # The handler has ended once no call is in flight: its queued chunks were dropped then.
        await asyncio.to_thread(wait_until, lambda: default_server.metric("vaeserve_inflight_requests") == 0,
                                "the cancelled Score's handler to end")  # fmt: skip
        at_end = default_server.metric(SCORED)
        # A Score of one row is computed after whatever batch was running when the handler ended.
        await stub.Score(score_request(1, 1), timeout=60)
        return {"refused": refused.value, "small": small, "health": health, "still_running": still_running,
                "computed": at_end - before, "after": default_server.metric(SCORED) - at_end}  # fmt: skip


def test_the_costliest_score_is_charged_its_work_and_stops_when_cancelled(default_server: ServerProcess) -> None:
    seen = asyncio.run(_costliest_score_beside_others(default_server))
    assert seen["still_running"]  # everything below happened while it ran
    refused = seen["refused"]
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.details().startswith("server overloaded: the likelihood's calls in flight (4,096,000 rows)")
    sample, encode, small_score = seen["small"]
    assert isinstance(sample, vae_pb2.SampleResponse) and list(sample.images.shape) == [16, *SHAPE]
    assert isinstance(encode, vae_pb2.EncodeResponse) and list(encode.mean.shape) == [4, 8]
    assert isinstance(small_score, vae_pb2.ScoreResponse) and list(small_score.elbo.shape) == [2]
    assert seen["health"] == [1] * 5  # SERVING, answered while the costly call ran
    # Cancelled: far fewer rows computed than it asked for, and nothing more of it after its handler ended (at
    # most the batch that was running then, plus the one row of the next call).
    assert seen["computed"] < MAX_ROWS * MAX_K / 2
    assert seen["after"] <= 1024 + 1
    counted = 'vaeserve_requests_total{code="RESOURCE_EXHAUSTED",method="Score"}'
    wait_until(lambda: default_server.metric(counted, 0) >= 1, "the refused Score to be counted")


def test_an_idle_server_admits_the_costliest_score_and_answers_it(model_repo: Path, tmp_path: Path) -> None:
    """Charging work must not make the largest valid call impossible: on an idle graph it is admitted and
    answered (here at the largest N x K a smaller --max-importance-samples allows, to keep the test short)."""
    flags = ("--max-importance-samples", "20")
    with serving(model_repo, tmp_path / "serve.log", *flags) as s, grpc.insecure_channel(s.target) as channel:
        reply = vae_pb2_grpc.VaeServiceStub(channel).Score(score_request(MAX_ROWS, 20), timeout=300)
    assert list(reply.log_likelihood.shape) == [MAX_ROWS]
    values = np.frombuffer(reply.log_likelihood.data, np.float32)
    assert np.isfinite(values).all()
