"""The server process: start-up failures, health, graceful drain on SIGTERM/SIGINT, deadlines, queue overflow."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import (
    ClientsThroughSigterm,
    ServerProcess,
    SlowLink,
    free_port,
    free_ports,
    health_status,
    serve_argv,
    serving,
    wait_until,
)
from vaeserve.client.api import VaeClient, to_tensor
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server.config import DeviceError, ServeConfig

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BIG = 4096  # rows of one conv decoder run: tens of milliseconds on one CPU thread
BIG_BATCHES = ("--max-batch-size", str(BIG), "--max-concurrent-rpcs", str(BIG))
HUGE = 65536  # rows of one conv decoder run: most of a second on this machine's cores


def run_serve(repo: Path, *flags: str) -> subprocess.CompletedProcess:
    """`vaeserve serve` expected to fail at start-up."""
    cmd = serve_argv(repo, *flags, port=free_port(), metrics_port=0)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_a_repository_that_fails_verification_stops_the_server_with_its_message(
    model_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae", repo / "vae")
    decoder = repo / "vae" / "1" / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:-10])
    result = run_serve(repo)
    assert result.returncode != 0
    assert "vaeserve serve: error:" in result.stderr and "decoder.onnx: SHA-256" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_serve(tmp_path / "nowhere")
    assert result.returncode != 0 and "model 'vae' not found" in result.stderr
    nowhere = tmp_path / "nowhere"
    assert result.stderr.splitlines()[-1] == (
        f"vaeserve serve: error: {nowhere}/vae: model 'vae' not found: the repository folder {nowhere} does not "
        f"exist; create a model with `make model REPO={nowhere}`, or `vaeserve train --out runs/default` then "
        f"`vaeserve export --checkpoint runs/default/best.pt --repo {nowhere} --name vae`"
    )
    result = run_serve(repo, "--name", "digits")
    assert f"model 'digits' not found: {repo} holds vae; create a model with `make model REPO={repo} NAME=digits`" in (
        result.stderr
    )


def test_an_unknown_device_is_refused_by_the_cli_and_the_config(model_repo: Path) -> None:
    """One check (config.check_device) and one message, whether the device comes from a flag or a ServeConfig."""
    result = run_serve(model_repo, "--device", "tpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    refusal = "--device: expected one of auto, cpu, cuda, got "
    assert result.stderr.splitlines()[-1] == f"vaeserve serve: error: {refusal}'tpu'"
    for hostile in ("", "CUDA", " cpu", "cuda:0", "x" * 10_000, "nan", "-1", "\x00"):
        with pytest.raises(DeviceError, match="^" + refusal):
            ServeConfig(device=hostile).check()


def test_device_cuda_without_cuda_fails_clearly(model_repo: Path) -> None:
    result = run_serve(model_repo, "--device", "cuda")
    assert result.returncode != 0
    assert "vaeserve serve: error: --device cuda:" in result.stderr
    assert "Traceback" not in result.stderr


def test_flags_come_from_the_environment_and_are_checked(model_repo: Path, tmp_path: Path) -> None:
    env = {"VAESERVE_MAX_BATCH_SIZE": "7", "VAESERVE_MAX_NUM_SAMPLES": "99", "VAESERVE_LOG_FORMAT": "json"}
    with serving(model_repo, tmp_path / "serve.log", env=env) as server, VaeClient(server.target) as client:
        info = client.info()
    assert (info.max_batch_size, info.max_num_samples) == (7, 99)
    lines = [json.loads(line) for line in server.output().splitlines()]
    messages = " | ".join(line["message"] for line in lines)
    for fact in ("event loop uvloop", "model vae version 1", "execution provider CPUExecutionProvider",
                 "intra-op thread", "gRPC listening on", "objects alive at start frozen",
                 "max 7 rows", "SERVING", "draining", "stopped"):  # fmt: skip
        assert fact in messages

    result = run_serve(model_repo, "--max-batch-size", "64", "--max-concurrent-rpcs", "8")
    assert result.returncode == 2
    assert "--max-concurrent-rpcs: expected >= --max-batch-size (64), got 8" in result.stderr
    result = run_serve(model_repo, "--max-num-samples", "5000", "--max-message-mb", "1")
    assert result.returncode == 2
    assert "--max-num-samples 5000: a full response of [1, 8, 8] images is 1.4 MiB, more than --max-message-mb 1" in (
        result.stderr
    )
    result = run_serve(model_repo, "--event-loop", "trio")
    assert result.returncode == 2 and "--event-loop: invalid choice: 'trio'" in result.stderr
    result = run_serve(model_repo, "--otlp-endpoint", "localhost:4317")
    assert result.returncode == 2 and "--otlp-endpoint: expected http://HOST:PORT" in result.stderr


def test_a_port_in_use_is_one_line_before_the_model_loads(server: ServerProcess, model_repo: Path) -> None:
    """Each busy port (gRPC, metrics, health) is the only line the server prints: found before anything loads, so
    no model or gRPC log comes before it."""
    busy, metrics = server.port, server.metrics_port
    cases = {
        "--port": (serve_argv(model_repo, port=busy, metrics_port=0), busy, "VAESERVE_PORT"),
        "--metrics-port": (serve_argv(model_repo, port=free_port(), metrics_port=metrics), metrics,
                           "VAESERVE_METRICS_PORT"),
        "--health-port": (serve_argv(model_repo, "--health-port", str(busy), port=free_port(), metrics_port=0), busy,
                          "VAESERVE_HEALTH_PORT"),
    }  # fmt: skip
    for flag, (argv, port, env) in cases.items():
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (
            2,
            f"vaeserve serve: error: {flag} {port}: 127.0.0.1:{port} is in use (another vaeserve?); choose another "
            f"with {flag} or {env}\n",
        )


def test_a_host_that_cannot_be_listened_on_is_one_line(model_repo: Path) -> None:
    cases = {
        "nonexistent.invalid": "--host nonexistent.invalid: cannot resolve it to an address to listen on (",
        "10.255.255.1": "--host 10.255.255.1: not an address of this machine, cannot listen on it (",
        "a" * 300: f"--host {'a' * 300}: cannot resolve it to an address to listen on (",
    }
    for host, message in cases.items():
        result = run_serve(model_repo, "--host", host)
        assert result.returncode == 2 and result.stderr.startswith(f"vaeserve serve: error: {message}"), host
        assert result.stderr.count("\n") == 1
    port, metrics_port = free_ports(2)
    argv = serve_argv(model_repo, "--metrics-host", "nonexistent.invalid", port=port, metrics_port=metrics_port)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.stderr.startswith("vaeserve serve: error: --metrics-host nonexistent.invalid: cannot resolve")


def test_reuse_port_lets_two_processes_share_the_port_and_its_connections(model_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    with (
        serving(model_repo, tmp_path / "first.log", "--reuse-port", port=port) as first,
        serving(model_repo, tmp_path / "second.log", port=port, env={"VAESERVE_REUSE_PORT": "true"}) as second,
    ):
        for _ in range(24):  # new connections (a channel's own): the kernel spreads them over both listeners
            with VaeClient(first.target, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
                images, _ = client.sample(2, seed=0)
            assert images.shape == (2, 1, 8, 8)
        served = [s.metric('vaeserve_requests_total{code="OK",method="Sample"}', 0.0) for s in (first, second)]
    assert sum(served) == 24
    assert min(served) > 0, f"one process got every connection: {served}"
    assert "port shared with other processes" in second.output()


def test_health_watch_sees_serving_then_not_serving_on_sigterm(model_repo: Path, tmp_path: Path) -> None:
    seen = []
    with serving(model_repo, tmp_path / "serve.log", "--grace-period", "1") as server:
        with grpc.insecure_channel(server.target) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="vae.v1.VaeService"), timeout=30
            )
            seen.append(next(stream).status)
            server.send_signal(signal.SIGTERM)
            with contextlib.suppress(grpc.RpcError):  # the stream is cut when the server stops
                for response in stream:
                    seen.append(response.status)
        assert server.wait() == 0
    assert seen[:2] == [SERVING, NOT_SERVING]


def test_sigterm_drains_in_flight_calls_refuses_new_ones_and_exits_0(conv_model_repo: Path, tmp_path: Path) -> None:
    flags = (*BIG_BATCHES, "--max-num-samples", str(4 * BIG), "--grace-period", "30")
    with serving(conv_model_repo, tmp_path / "serve.log", *flags) as server:
        with VaeClient(server.target) as client, ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.sample, 4 * BIG, 5)  # several conv runs: long enough to catch in flight
            wait_until(lambda: server.metric("vaeserve_inflight_requests") >= 1, "the call to be in flight")
            server.send_signal(signal.SIGTERM)
            # New calls are still served for a moment (those already on their way when the signal came), then
            # refused: poll until one is.
            refused = None
            while refused is None:
                try:
                    client.sample(1, seed=0)
                except grpc.RpcError as exc:
                    refused = exc
            images, latents = in_flight.result(timeout=60)
        assert server.wait() == 0
    assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.details() == "the server is shutting down: retry the call"
    assert images.shape == (4 * BIG, 1, 8, 8) and latents.shape == (4 * BIG, 8)
    assert "draining" in server.output()


async def _port_closes(port: int, bound_s: float) -> bool:
    """Polls until `port` refuses TCP connections (the server stopped listening); False after `bound_s`."""
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:  # accepted as the listener closed: the next attempt tells
            continue
        writer.close()
        await asyncio.sleep(0.01)  # the poll's interval
    return False


async def _retry_through_sigterm(
    server: ServerProcess, clients: int = 32, bound_s: float = 30.0
) -> tuple[collections.Counter, bool, bool, bool]:
    """`clients` callers of Encode(1) that retry every refusal at once; SIGTERM once each has had a call answered.
    The status counts of the calls sent after the signal; whether the server stopped listening (within
    `bound_s`); whether its log said by then that its calls in flight had been answered; whether it had exited
    while the clients retried."""
    request = vae_pb2.EncodeRequest(images=to_tensor(np.zeros((1, 1, 8, 8), np.float32))).SerializeToString()
    async with grpc.aio.insecure_channel(server.target) as channel:
        callers = ClientsThroughSigterm(channel, server, "Encode", request, clients, retry_for_s=bound_s)
        await callers.started()
        callers.send_sigterm()
        closed = await _port_closes(server.port, bound_s)
        answered_before = "every call in flight answered" in server.output()
        _, after = await callers.finished()
        exited = server.returncode is not None
    return after, closed, answered_before, exited


HUGE_CALLS = ("--max-batch-size", str(HUGE), "--max-num-samples", str(2 * HUGE), "--max-concurrent-rpcs", str(HUGE))
DRAIN_FLAGS = (*HUGE_CALLS, "--grace-period", "60")


def _big_call(pool: ThreadPoolExecutor, client: VaeClient, server: ServerProcess) -> Future:
    """Sample(2 * HUGE) through `client` (two full conv runs: seconds), returned once `server` counts it in
    flight."""
    call = pool.submit(client.sample, 2 * HUGE, 0)
    wait_until(lambda: server.metric("vaeserve_inflight_requests") >= 1, "the call to be in flight")
    return call


def test_a_drain_sends_goaway_once_its_calls_are_answered_then_exits(conv_model_repo: Path, tmp_path: Path) -> None:
    """Refused calls do not hold a drain open: with clients retrying at once all along, the server refuses them
    while its call in flight runs, sends GOAWAY and stops listening as soon as that call's response is written,
    and exits: long before --grace-period 60. The call in flight gets its whole response."""
    with (
        serving(conv_model_repo, tmp_path / "serve.log", *DRAIN_FLAGS) as server,
        VaeClient(server.target, timeout=120) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        in_flight = _big_call(pool, client, server)
        after, closed, answered_before, exited = asyncio.run(_retry_through_sigterm(server))
        images, _ = in_flight.result(timeout=120)
        assert closed, "the server still listened 30 s after SIGTERM"
        assert answered_before, "the server stopped listening before its call in flight was answered"
        assert exited, "the server still ran 30 s after SIGTERM with clients retrying (it waited out the grace period)"
        assert server.wait() == 0
    assert images.shape == (2 * HUGE, 1, 8, 8)
    assert after["UNAVAILABLE"] > 0 and set(after) <= {"OK", "UNAVAILABLE"}, after  # refused, never cancelled
    log = server.output()
    assert "draining: GOAWAY sent, no new calls taken: every call in flight answered" in log
    assert "grace period over" not in log and "stopped" in log


def test_a_drain_delivers_a_big_response_whole_to_a_slow_reader(conv_model_repo: Path, tmp_path: Path) -> None:
    """A response of 36 MiB to a client on a slow link, still computing at SIGTERM: the server's kernel holds
    megabytes of it when the server is done writing. A GOAWAY sent before then would let gRPC's core close the
    connection right after that write, and the client's next flow-control update would reset it, losing the
    rest (as in grpc-go#5358); the whole response arrives, and the server exits 0. Meanwhile a new call is
    refused, and held so its client does not call again at once; but a caller whose deadline comes first is
    told UNAVAILABLE before it, never DEADLINE_EXCEEDED."""
    request = vae_pb2.EncodeRequest(images=to_tensor(np.zeros((1, 1, 8, 8), np.float32)))
    with (
        serving(conv_model_repo, tmp_path / "serve.log", *DRAIN_FLAGS) as server,
        SlowLink(server.target) as link,
        VaeClient(link.target, timeout=120) as client,
        ThreadPoolExecutor(1) as pool,
        grpc.insecure_channel(server.target) as channel,
    ):
        in_flight = _big_call(pool, client, server)
        server.send_signal(signal.SIGTERM)
        encode = vae_pb2_grpc.VaeServiceStub(channel).Encode  # Encode: not queued behind the decoder's big call
        refused, held = None, 0.0
        while refused is None:  # served until the settle period ends, then refused
            sent = time.monotonic()
            try:
                encode(request, timeout=1.0)
            except grpc.RpcError as exc:
                refused, held = exc, time.monotonic() - sent
        still_running = not in_flight.done()
        images, latents = in_flight.result(timeout=120)
        assert server.wait() == 0
    assert images.shape == (2 * HUGE, 1, 8, 8) and latents.shape == (2 * HUGE, 8)
    assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
    assert refused.details() == "the server is shutting down: retry the call"
    assert held > 0.5, f"refused after {held:.3f} s: not held (its client would call again at once)"
    assert still_running, "the call in flight ended before the refusal: the refusal was not held to its deadline"


def test_a_call_still_unanswered_when_the_grace_period_ends_is_cancelled(conv_model_repo: Path, tmp_path: Path) -> None:
    """--grace-period 1 with two full conv runs (seconds) in flight: the drain stops waiting for it, says so, cancels
    it and exits 0; the caller gets an error, not a hang."""
    with (
        serving(conv_model_repo, tmp_path / "serve.log", *HUGE_CALLS, "--grace-period", "1") as server,
        VaeClient(server.target, timeout=120) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        in_flight = _big_call(pool, client, server)
        server.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as cut:
            in_flight.result(timeout=120)
        assert server.wait() == 0
    assert cut.value.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}, cut.value
    log = server.output()
    assert "grace period over: cancelling the calls in flight (1 unanswered)" in log
    assert "GOAWAY sent" not in log and "stopped" in log


def test_sighup_and_sigusr_neither_kill_nor_drain_the_server(model_repo: Path, tmp_path: Path) -> None:
    """Signals whose default action ends a process: SIGHUP reloads (without --auth-token-file there is nothing
    to), SIGUSR1 and SIGUSR2 are ignored; each says so in the log, and the server carries on serving."""
    with serving(model_repo, tmp_path / "serve.log") as server:
        for sig, line in ((signal.SIGHUP, "SIGHUP: nothing to reload (no --auth-token-file)"),
                          (signal.SIGUSR1, "SIGUSR1 ignored"), (signal.SIGUSR2, "SIGUSR2 ignored"),
                          (signal.SIGHUP, "SIGHUP: nothing to reload")):  # fmt: skip
            seen = server.output().count(line)
            server.send_signal(sig)
            wait_until(lambda line=line, seen=seen: server.output().count(line) > seen, f"{sig.name} to be logged")
            assert server.returncode is None, f"{sig.name} ended the server"
        with VaeClient(server.target) as client:
            assert client.sample(2, seed=0)[0].shape == (2, 1, 8, 8)
        assert health_status(server.target) == SERVING
    assert server.returncode == 0 and "draining" in server.output()  # the stop at the end drained as usual
    assert server.output().count("draining: NOT_SERVING") == 1


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_sigint_stops_cleanly_on_either_event_loop(model_repo: Path, tmp_path: Path, event_loop: str) -> None:
    with serving(model_repo, tmp_path / "serve.log", "--event-loop", event_loop) as server:
        with VaeClient(server.target) as client:
            assert client.sample(2, seed=0)[0].shape == (2, 1, 8, 8)
        server.send_signal(signal.SIGINT)
        assert server.wait() == 0
    assert f"event loop {event_loop}" in server.output()
    assert "Traceback" not in server.output()


@pytest.fixture(scope="module")
def busy_server(conv_model_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A conv server whose full batches take long enough for a queue to build up."""
    log = tmp_path_factory.mktemp("busy") / "serve.log"
    with serving(conv_model_repo, log, *BIG_BATCHES, "--max-queue", "5") as server:
        yield server


def _decode_burst(target: str, n: int) -> list[grpc.RpcError | None]:
    """n concurrent full-batch Decode calls; the error (or None) of each."""
    z = to_tensor(np.zeros((BIG, 8), np.float32))
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        futures = [stub.Decode.future(vae_pb2.DecodeRequest(latents=z), timeout=60) for _ in range(n)]
        return [f.exception() for f in futures]


def test_a_full_queue_answers_resource_exhausted_at_once(busy_server: ServerProcess) -> None:
    for _ in range(5):  # the burst must arrive while a batch runs; it nearly always does at once
        errors = _decode_burst(busy_server.target, 12)
        refused = [e for e in errors if e is not None]
        if refused:
            break
    assert refused, "12 concurrent calls never overflowed a queue of 5"
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "the decoder queue is full (5 requests waiting)" in refused[0].details()
    # Every queued call is answered: the five waiting when the first refusal went out, and one more when the burst
    # found a batch already running (on a loaded machine the batcher may not have taken one off the queue yet).
    assert sum(e is None for e in errors) >= 5


def test_calls_that_expire_or_are_cancelled_while_queued_are_not_computed(
    conv_model_repo: Path, tmp_path: Path
) -> None:
    flags = ("--max-batch-size", str(HUGE), "--max-num-samples", str(HUGE), "--max-concurrent-rpcs", str(HUGE))
    rows = 'vaeserve_batch_size_sum{graph="decoder"}'
    expired = 'vaeserve_requests_total{code="DEADLINE_EXCEEDED",method="Sample"}'
    cancelled = 'vaeserve_requests_total{code="CANCELLED",method="Sample"}'
    depth = 'vaeserve_queue_depth{graph="decoder"}'
    with (
        serving(conv_model_repo, tmp_path / "serve.log", *flags) as server,
        grpc.insecure_channel(server.target, options=[("grpc.max_receive_message_length", -1)]) as channel,
    ):
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        z = to_tensor(np.zeros((HUGE, 8), np.float32))
        ahead = [stub.Decode.future(vae_pb2.DecodeRequest(latents=z), timeout=120) for _ in range(2)]
        # One full run under way, one queued behind it: more than a second of work before anything else runs.
        wait_until(lambda: server.metric("vaeserve_inflight_requests") == 2 and server.metric(depth) == 1,
                   "one decoder run in progress and one queued")  # fmt: skip
        late = stub.Sample.future(vae_pb2.SampleRequest(num_samples=7), timeout=0.5)
        abandoned = stub.Sample.future(vae_pb2.SampleRequest(num_samples=5), timeout=120)
        wait_until(lambda: server.metric(depth) == 3, "both calls queued behind the runs ahead")
        assert not any(f.done() for f in ahead), "the runs ahead finished before the calls were queued"
        abandoned.cancel()
        assert late.exception(timeout=60).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for f in ahead:
            f.result(timeout=120)
        # The server had both calls and dropped them: their 7 + 5 rows were never run.
        wait_until(lambda: server.metric(cancelled, 0.0) == 1, "the cancelled call to be counted")
        assert server.metric(expired) == 1
        assert server.metric(rows) == 2 * HUGE
        with VaeClient(server.target) as client:
            assert client.sample(7, seed=0)[0].shape == (7, 1, 8, 8)  # and the server carries on


def test_cli_module_runs_as_a_script() -> None:
    result = subprocess.run([sys.executable, "-m", "vaeserve.cli", "serve", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "VAESERVE_MAX_BATCH_DELAY_MS" in result.stdout
