"""A real server against a hostile client: oversized and malformed messages, shape bombs, values that overflow,
storms of cancelled and expiring calls, overload, SIGTERM under load, and flags out of range.

Each case is a regression test of a failure seen before (issue 13): the server answers with a clean status
that names the field, its memory stays bounded, and it keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import (
    METHOD,
    ClientsThroughSigterm,
    ServerProcess,
    at_once,
    cancel_storm,
    closed_loops,
    health_status,
    serving,
)
from vaeserve.cli import main as vaeserve
from vaeserve.client.api import VaeClient, to_tensor
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.server.config import AUTO_NUMBERS, BOUNDS, flag

GIB = 1 << 30
MAX_ROWS = 4096  # the default --max-num-samples


def peak_rss(server: ServerProcess) -> int:
    """The server's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def calls(target: str, requests: list[tuple[str, bytes]], timeout: float = 60) -> list[grpc.StatusCode]:
    """The requests (method, raw bytes) sent at once; the status of each."""
    return [outcome.code for outcome in await at_once(target, [(METHOD + m, d) for m, d in requests], timeout)]


def status(client_call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        client_call()
    return info.value


@pytest.fixture(scope="module")
def attacked_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """Default limits: the message size is derived from the digits model (about 1.1 MiB). The module's own, not the
    suite's shared `default_server`: it takes every hostile request below and must survive them (the last test), and
    it counts its malformed-message log lines (logged once a minute) from a fresh log."""
    with serving(model_repo, tmp_path_factory.mktemp("hostile") / "serve.log") as server:
        yield server


def encode_request(rows: int, fill: float = 0.5) -> bytes:
    images = np.full((rows, 1, 8, 8), fill, np.float32)
    return vae_pb2.EncodeRequest(images=to_tensor(images)).SerializeToString()


def test_message_limit_is_what_the_model_needs_and_memory_stays_bounded(attacked_server: ServerProcess) -> None:
    assert "max message 1.13 MiB" in attacked_server.output()
    target = attacked_server.target
    largest = encode_request(MAX_ROWS)  # the largest valid request: 1 MiB of images
    assert asyncio.run(calls(target, [("Encode", largest)])) == [grpc.StatusCode.OK]
    over = encode_request(2 * MAX_ROWS)  # 2 MiB: refused by the message limit before it is parsed
    refused_after_parsing = encode_request(MAX_ROWS, fill=math.nan)  # as large as allowed, refused by the checks
    statuses = asyncio.run(calls(target, [("Encode", over)] * 8 + [("Encode", refused_after_parsing)] * 8))
    assert statuses == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 8 + [grpc.StatusCode.INVALID_ARGUMENT] * 8
    sample = vae_pb2.SampleRequest(num_samples=MAX_ROWS).SerializeToString()
    assert asyncio.run(calls(target, [("Sample", sample)] * 16)) == [grpc.StatusCode.OK] * 16
    assert peak_rss(attacked_server) < GIB


def test_a_shape_bomb_is_refused_with_a_bounded_message(attacked_server: ServerProcess) -> None:
    dims = 250_000  # as many dimensions as the message limit lets through
    bomb = vae_pb2.EncodeRequest(images=vae_pb2.Tensor(shape=[1] * dims, data=b""))
    with VaeClient(attacked_server.target) as client:
        error = status(lambda: client.stub.Encode(bomb, timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == f"images.shape: expected [N, 1, 8, 8], got a shape of {dims} dimensions"
        assert client.sample(1, seed=0)[0].shape == (1, 1, 8, 8)


def test_values_that_overflow_are_refused_naming_the_field(attacked_server: ServerProcess) -> None:
    with VaeClient(attacked_server.target) as client:
        huge = np.full((3, 8), 3.4e38, np.float32) * np.array([1, -1] * 4, np.float32)  # finite, far outside N(0, I)
        error = status(lambda: client.decode(huge))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("latents.data: the decoder computed NaN or Inf pixels")
        error = status(lambda: client.sample(2, temperature=3.4e38))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "temperature: expected at most 10, got 3.4e+38"
        images = client.decode(np.full((2, 8), 30.0, np.float32))  # large but within what the decoder can take
        assert np.isfinite(images).all()


def test_malformed_messages_are_invalid_argument_counted_and_logged_once(attacked_server: ServerProcess) -> None:
    garbage = [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)) * 3]
    methods = METHODS
    counted = 'vaeserve_requests_total{code="INVALID_ARGUMENT",method="Decode"}'
    before = attacked_server.metric(counted, 0.0)
    with grpc.insecure_channel(attacked_server.target) as channel:
        for method in methods:
            for data in garbage * 20:
                with pytest.raises(grpc.RpcError) as refused:
                    channel.unary_unary(METHOD + method)(data, timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert refused.value.details() == f"request: not a valid vae.v1.{method}Request message" or (
                    method == "GetModelInfo"
                    and refused.value.details() == "request: not a valid vae.v1.GetModelInfoRequest message"
                )
    assert attacked_server.metric(counted) - before == 60
    log = attacked_server.output()
    assert "Traceback" not in log and "DecodeError" not in log
    assert sum("malformed request message" in line for line in log.splitlines()) == 1  # one line per minute


def test_a_storm_of_cancelled_and_expiring_calls_leaves_normal_calls_alone(model_repo: Path, tmp_path: Path) -> None:
    encode = encode_request(4)
    sample = vae_pb2.SampleRequest(num_samples=16).SerializeToString()
    with serving(model_repo, tmp_path / "serve.log") as server:
        work = [("Encode", encode), ("Sample", sample), ("Reconstruct", encode)]
        normal, storm = asyncio.run(cancel_storm(server.target, work, seconds=3.0))
        with VaeClient(server.target) as client:
            assert client.sample(3, seed=0)[0].shape == (3, 1, 8, 8)
        counted = server.metrics()
    assert set(normal) == {"OK"} and normal["OK"] > 0, normal
    assert sum(storm.values()) > 100, storm
    assert 'code="UNKNOWN"' not in counted and 'code="INTERNAL"' not in counted
    assert "Traceback" not in server.output()


def test_overload_is_shed_at_once_with_resource_exhausted(conv_model_repo: Path, tmp_path: Path) -> None:
    sample = vae_pb2.SampleRequest(num_samples=64).SerializeToString()
    flags = ("--max-wait-ms", "20", "--max-batch-size", "64", "--max-concurrent-rpcs", "128")

    async def main(target: str) -> tuple[collections.Counter, dict[str, str]]:
        # 300 clients, each backing off 10 ms after a refusal.
        tally = await closed_loops(target, METHOD + "Sample", sample, 300, 3.0, timeout=30, max_calls=1000,
                                   backoff=lambda _: 0.01)  # fmt: skip
        return tally.statuses, tally.details

    with serving(conv_model_repo, tmp_path / "serve.log", *flags) as server:
        seen, details = asyncio.run(main(server.target))
        with VaeClient(server.target) as client:  # and it serves normally right after
            assert client.sample(5, seed=0)[0].shape == (5, 1, 8, 8)
        assert peak_rss(server) < GIB
    assert set(seen) == {"OK", "RESOURCE_EXHAUSTED"}, seen
    assert details["RESOURCE_EXHAUSTED"].startswith("server overloaded: ")
    assert "retry with backoff" in details["RESOURCE_EXHAUSTED"]


WATCHES = 8


async def _watch_beyond_the_bound(target: str) -> tuple[grpc.aio.AioRpcError, int]:
    """WATCHES health Watch streams, then more: the refusal of the first one too many, and how many attempts a
    new stream took once one of the first had ended."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="vae.v1.VaeService")
        streams = [stub.Watch(request, timeout=60) for _ in range(WATCHES)]
        for stream in streams:
            assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
        extra = stub.Watch(request, timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await extra.read()
        assert (await stub.Check(request, timeout=10)).status == health_pb2.HealthCheckResponse.SERVING
        streams[0].cancel()  # one ends: its place is free once the server has seen it end
        for attempt in range(1, 1001):
            again = stub.Watch(request, timeout=60)
            try:
                assert (await again.read()).status == health_pb2.HealthCheckResponse.SERVING
                return refused.value, attempt
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        raise AssertionError("no Watch stream opened after one of the first ended")


def test_health_watch_streams_are_bounded_and_the_metrics_port_serves_only_metrics(
    model_repo: Path, tmp_path: Path
) -> None:
    import urllib.error
    import urllib.request

    with serving(model_repo, tmp_path / "serve.log", "--max-health-watches", str(WATCHES)) as server:
        refused, _ = asyncio.run(_watch_beyond_the_bound(server.target))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.details() == (f"{WATCHES} health Watch streams are open, as many as --max-health-watches "
                                     f"allows: use Check, or retry later")  # fmt: skip
        base = f"http://127.0.0.1:{server.metrics_port}"
        for path in ("/secret", "/metrics/../admin", "/favicon.ico", "/metricsx"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(base + path, timeout=10)
            assert missing.value.code == 404, path
        with urllib.request.urlopen(base + "/", timeout=10) as index:
            assert index.read() == b"vaeserve: Prometheus metrics at /metrics\n"
        assert "vaeserve_model_info" in server.metrics()
        with VaeClient(server.target) as client:
            assert client.sample(2, seed=0)[0].shape == (2, 1, 8, 8)
    assert server.returncode == 0 and "Traceback" not in server.output()


async def _load_through_sigterm(server: ServerProcess, clients: int = 32) -> tuple[collections.Counter, ...]:
    """`clients` closed-loop Encode(1) callers; SIGTERM once they all run. Each caller stops at its first refusal,
    as one retrying another replica would. The status counts of the calls sent before the signal and after it."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        callers = ClientsThroughSigterm(channel, server, "Encode", encode_request(1), clients, timeout=30)
        await callers.started()
        callers.send_sigterm()
        return await asyncio.wait_for(callers.finished(), 60)


@pytest.mark.parametrize("run", range(5))  # racy by nature: run it several times
def test_sigterm_under_load_completes_every_call_already_sent(model_repo: Path, tmp_path: Path, run: int) -> None:
    with serving(model_repo, tmp_path / "serve.log", "--grace-period", "20") as server:
        before, after = asyncio.run(_load_through_sigterm(server))
        assert server.wait(30) == 0
    assert set(before) == {"OK"}, before  # every call sent before SIGTERM completed
    assert set(after) <= {"OK", "UNAVAILABLE"} and after["UNAVAILABLE"] == 32, after  # then each client was told
    assert "grace period over" not in server.output()


@pytest.mark.parametrize("name", sorted(BOUNDS))
@pytest.mark.parametrize("value", ["1e300", "-1", "nan", "inf", "-inf", "12abc", ""])
def test_every_numeric_flag_out_of_range_is_an_error_naming_it(
    name: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    try:
        code = vaeserve(["serve", f"{flag(name)}={value}"])  # refused before anything is loaded
    except SystemExit as exc:  # argparse: not a number of the flag's type
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    low, high = BOUNDS[name]
    expected = f"expected {'auto or ' if name in AUTO_NUMBERS else ''}a number in [{low:g}, {high:g}], got "
    assert line.startswith((f"vaeserve serve: error: {flag(name)}: {expected}",
                            f"vaeserve serve: error: argument {flag(name)}: invalid ")), line  # fmt: skip


def test_a_whole_number_out_of_range_is_shown_as_given(capsys: pytest.CaptureFixture) -> None:
    assert vaeserve(["serve", "--max-message-mb", "2048"]) == 2
    assert capsys.readouterr().err.strip().endswith("--max-message-mb: expected a number in [0, 2047], got 2048")


def _tensor(shape: list[int], data: bytes, dtype: int) -> vae_pb2.Tensor:
    return vae_pb2.Tensor(shape=shape, data=data, dtype=dtype)


_shapes = st.lists(st.one_of(st.integers(-3, 9), st.integers(-(2**63), 2**63 - 1)), max_size=6)
_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
_dtypes = st.one_of(st.sampled_from([vae_pb2.FLOAT32, vae_pb2.UINT8]), st.integers(-(2**31), 2**31 - 1))
_tensors = st.builds(_tensor, _shapes, st.binary(max_size=2048), _dtypes)
_u32, _u64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
_messages = st.one_of(
    st.tuples(st.just("Sample"), st.builds(vae_pb2.SampleRequest, num_samples=_u32, seed=_u64, temperature=_floats,
                                           image_dtype=_dtypes)),
    st.tuples(st.just("Encode"), st.builds(vae_pb2.EncodeRequest, images=_tensors, seed=_u64)),
    st.tuples(st.just("Decode"), st.builds(vae_pb2.DecodeRequest, latents=_tensors, image_dtype=_dtypes)),
    st.tuples(st.just("Reconstruct"), st.builds(vae_pb2.ReconstructRequest, images=_tensors, image_dtype=_dtypes)),
    st.tuples(st.just("Score"), st.builds(vae_pb2.ScoreRequest, images=_tensors, num_importance_samples=_u32,
                                          seed=_u64)),
    st.tuples(st.just("Interpolate"), st.builds(vae_pb2.InterpolateRequest, images=st.one_of(st.none(), _tensors),
                                                latents=st.one_of(st.none(), _tensors), steps=_u32,
                                                spherical=st.booleans(), image_dtype=_dtypes)),
    st.tuples(st.just("GetModelInfo"), st.just(vae_pb2.GetModelInfoRequest())),
)  # fmt: skip
METHODS = ["Sample", "Encode", "Decode", "Reconstruct", "Score", "Interpolate", "GetModelInfo"]
_raw = st.tuples(st.sampled_from(METHODS), st.binary(max_size=512))
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_messages.map(lambda m: (m[0], m[1].SerializeToString())), _raw))
def test_any_request_ends_with_a_clean_status(attacked_server: ServerProcess, call: tuple[str, bytes]) -> None:
    method, data = call
    with grpc.insecure_channel(attacked_server.target, options=[("grpc.max_receive_message_length", -1)]) as channel:
        try:
            channel.unary_unary(METHOD + method)(data, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert len(exc.details()) < 300, exc.details()  # bounded: never an echo of the input
    assert code in CLEAN, (method, code)


def test_the_server_survives_the_random_requests(attacked_server: ServerProcess) -> None:
    """After everything above (the module's server got every hostile request): healthy, bounded, quiet log."""
    with VaeClient(attacked_server.target) as client:
        assert client.sample(4, seed=1)[0].shape == (4, 1, 8, 8)
    assert health_status(attacked_server.target) == health_pb2.HealthCheckResponse.SERVING
    assert peak_rss(attacked_server) < GIB
    assert "Traceback" not in attacked_server.output()
    assert 'code="UNKNOWN"' not in attacked_server.metrics() and 'code="INTERNAL"' not in attacked_server.metrics()
