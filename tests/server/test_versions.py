"""Model versions while serving, on real servers: --version-policy, model_version on every call and in every
reply, loads and unloads by the OIP repository extension (--model-control explicit) and by polling, with
clients calling throughout; a corrupt version, a half-written folder, unloading the last version, a load racing
SIGTERM, the admin token, and hostile values for every new field and flag."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import run_cli
from tests.harness import ServerProcess, free_port, serve_argv, serving, wait_until
from vaeserve.client.api import to_tensor
from vaeserve.protos.inference import grpc_service_pb2 as pb
from vaeserve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server.models import CYCLE_HELD

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAILURES = 'vaeserve_model_load_failures_total{reason="%s"}'
IMAGE = np.random.default_rng(0).random((1, 1, 1, 8, 8), dtype=np.float32)[0]


def repo_of(model_repo: Path, tmp_path: Path) -> Path:
    """A copy of the shared repository (vae/1), to add versions to."""
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae", repo / "vae")
    return repo


def export(run: Path, repo: Path) -> None:
    """The next version of vae, exported for real (published by an atomic rename)."""
    run_cli("export", "--checkpoint", str(run / "best.pt"), "--repo", str(repo), "--name", "vae")


def corrupt_copy(repo: Path, source: int, version: int) -> Path:
    """vae/VERSION: version SOURCE's files with its model.json renumbered and its decoder truncated."""
    folder = repo / "vae" / str(version)
    shutil.copytree(repo / "vae" / str(source), folder)
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**info, "version": version}))
    decoder = folder / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:-10])
    return folder


def stubs(channel: grpc.Channel) -> tuple[vae_pb2_grpc.VaeServiceStub, pb_grpc.GRPCInferenceServiceStub]:
    return vae_pb2_grpc.VaeServiceStub(channel), pb_grpc.GRPCInferenceServiceStub(channel)


def encode(stub: vae_pb2_grpc.VaeServiceStub, version: int = 0) -> vae_pb2.EncodeResponse:
    return stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(IMAGE), model_version=version), timeout=30)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def served(server: ServerProcess) -> list[int]:
    with grpc.insecure_channel(server.target) as channel:
        return list(stubs(channel)[0].GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10).served_versions)


def info_series(server: ServerProcess) -> list[str]:
    return sorted(line.split('version="')[1].split('"')[0] for line in server.metrics().splitlines()
                  if line.startswith("vaeserve_model_info{"))  # fmt: skip


class Callers:
    """`n` clients calling Encode and Sample in a loop (bounded) until stopped: every status and answering
    version counted."""

    def __init__(self, target: str, n: int = 4, max_calls: int = 20_000) -> None:
        self.target, self.n, self.max_calls = target, n, max_calls
        self.codes: Counter = Counter()
        self.versions: Counter = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, args=(i,)) for i in range(n)]

    def _call(self, i: int) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = stubs(channel)[0]
            for _ in range(self.max_calls):
                if self._stop.is_set():
                    return
                try:
                    sample = vae_pb2.SampleRequest(num_samples=16)
                    reply = stub.Sample(sample, timeout=30) if i % 2 else encode(stub)
                    self.codes["OK"] += 1
                    self.versions[reply.model_version] += 1
                except grpc.RpcError as exc:
                    self.codes[f"{exc.code().name}: {exc.details()}"] += 1

    def __enter__(self) -> Callers:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: self.codes["OK"] >= 2 * self.n, "the callers to be calling", timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


@pytest.fixture(scope="module")
def two_versions(model_repo: Path, digits_conv_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vae/1 (MLP) and vae/2 (conv), exported for real."""
    repo = repo_of(model_repo, tmp_path_factory.mktemp("two"))
    export(digits_conv_run, repo)
    return repo


def test_a_policy_serves_several_versions_and_every_reply_names_its_version(two_versions: Path, tmp_path: Path) -> None:
    with (
        serving(two_versions, tmp_path / "serve.log", "--version-policy", "latest:2") as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        vae, oip = stubs(channel)
        info = vae.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
        assert (info.version, list(info.served_versions)) == (2, [1, 2])
        assert vae.GetModelInfo(vae_pb2.GetModelInfoRequest(model_version=1), timeout=10).version == 1
        assert [encode(vae, v).model_version for v in (0, 1, 2)] == [2, 1, 2]
        replies = {
            "Sample": vae.Sample(vae_pb2.SampleRequest(num_samples=2, model_version=1), timeout=10),
            "Decode": vae.Decode(vae_pb2.DecodeRequest(latents=to_tensor(np.zeros((1, 8), np.float32)),
                                                       model_version=1), timeout=10),
            "Reconstruct": vae.Reconstruct(vae_pb2.ReconstructRequest(images=to_tensor(IMAGE), model_version=1),
                                           timeout=10),
            "Score": vae.Score(vae_pb2.ScoreRequest(images=to_tensor(IMAGE), model_version=1), timeout=10),
            "Interpolate": vae.Interpolate(vae_pb2.InterpolateRequest(latents=to_tensor(np.zeros((2, 8), np.float32)),
                                                                      steps=3, model_version=1), timeout=10),
        }  # fmt: skip
        assert {method: reply.model_version for method, reply in replies.items()} == dict.fromkeys(replies, 1)
        metadata = oip.ModelMetadata(pb.ModelMetadataRequest(name="vae-decoder"), timeout=10)
        assert list(metadata.versions) == ["1", "2"]
        z = np.zeros((1, 8), np.float32)
        infer = pb.ModelInferRequest(model_name="vae-decoder", model_version="1", raw_input_contents=[z.tobytes()],
                                     inputs=[pb.ModelInferRequest.InferInputTensor(name="latent", datatype="FP32",
                                                                                   shape=[1, 8])])  # fmt: skip
        assert oip.ModelInfer(infer, timeout=10).model_version == "1"
        assert info_series(server) == ["1", "2"]

        for version, code, message in (
            (3, grpc.StatusCode.NOT_FOUND, "model_version: version 3 is not served (served: 1, 2)"),
            (-1, grpc.StatusCode.INVALID_ARGUMENT, "model_version: expected 0 (the newest served) or a version "
                                                   "number, got -1"),
            (2**62 + 1, grpc.StatusCode.INVALID_ARGUMENT, "model_version: expected 0"),
            (-(2**63), grpc.StatusCode.INVALID_ARGUMENT, "model_version: expected 0"),
        ):  # fmt: skip
            error = refusal(lambda version=version: encode(vae, version))
            assert error.code() == code and error.details().startswith(message), error.details()
            error = refusal(lambda version=version: vae.GetModelInfo(
                vae_pb2.GetModelInfoRequest(model_version=version), timeout=10))  # fmt: skip
            assert error.code() == code
        for version in ("3", "-1", "1e3", "x" * 300, "9" * 40):
            infer.model_version = version
            error = refusal(lambda: oip.ModelInfer(infer, timeout=10))
            assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 200, error.details()
        assert encode(vae).model_version == 2  # and the server carries on
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--version-policy", "latest:0"), "--version-policy: latest:N takes one N in [1, 64], got 'latest:0'"),
        (("--version-policy", "latest:-1"), "--version-policy: expected latest:N, all, or specific:V1,V2,..."),
        (("--version-policy", "latest:nan"), "--version-policy: expected latest:N, all, or specific:V1,V2,..."),
        (("--version-policy", "latest:1e300"), "--version-policy: expected latest:N"),
        (("--version-policy", "latest:99999999999999999999"), "--version-policy: latest:N takes one N in [1, 64]"),
        (("--version-policy", "specific:"), "--version-policy: expected latest:N"),
        (("--version-policy", "specific:0"), "--version-policy: specific: takes up to 64 version numbers"),
        (("--version-policy", "specific:1,2,x"), "--version-policy: expected latest:N"),
        (("--version-policy", ""), "--version-policy: expected latest:N"),
        (("--version-policy", "all:3"), "--version-policy: expected latest:N"),
        (("--version-policy", "x" * 5000), "--version-policy: expected at most 1024 characters"),
        (("--version", "1", "--version-policy", "all"), "--version and --version-policy: give one"),
        (("--version", "-1"), "--version: expected a version number or latest, got '-1'"),
        (("--model-control", "always"), "--model-control: invalid choice: 'always'"),
        (("--admin-token-file", "/nonexistent/tokens"), "--admin-token-file /nonexistent/tokens: cannot read it"),
    ],
)
def test_bad_lifecycle_flags_are_one_line_naming_the_flag(model_repo: Path, flags: tuple, message: str) -> None:
    argv = serve_argv(model_repo, *flags, port=free_port(), metrics_port=0)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    line = result.stderr.splitlines()[-1]
    assert result.returncode == 2 and line.startswith("vaeserve serve: error: ") and message in line, result.stderr
    assert len(line) < 300 and "Traceback" not in result.stderr


@pytest.fixture
def explicit(model_repo: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A server of a copy of vae/1 under --model-control explicit, and that copy."""
    repo = repo_of(model_repo, tmp_path)
    with serving(repo, tmp_path / "serve.log", "--model-control", "explicit") as server:
        yield server, repo
    assert server.returncode == 0 and "Traceback" not in server.output(), server.output()


def load(oip: pb_grpc.GRPCInferenceServiceStub) -> None:
    oip.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="vae"), timeout=120)


def test_a_loaded_version_goes_live_under_load_with_no_failed_call_and_the_old_one_is_freed(
    explicit: tuple[ServerProcess, Path], digits_conv_run: Path, digits_run: Path
) -> None:
    server, repo = explicit
    with grpc.insecure_channel(server.target) as channel:
        vae, oip = stubs(channel)
        with Callers(server.target) as callers:
            export(digits_conv_run, repo)
            assert served(server) == [1], "an explicit server loads only on request"
            load(oip)
            assert served(server) == [2]
            wait_until(lambda: callers.versions[2] >= 8, "calls answered by version 2")
            # A corrupt version: refused with its reason, counted, and version 2 keeps serving.
            corrupt_copy(repo, 2, 3)
            error = refusal(lambda: load(oip))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "version 3 not loaded (verify):" in error.details() and "decoder.onnx: SHA-256" in error.details()
            assert error.details().endswith("serving version(s) 2")
            before = callers.versions[2]
            wait_until(lambda: callers.versions[2] > before + 8, "version 2 to keep answering")
            # A later good version still loads.
            export(digits_run, repo)
            load(oip)
            wait_until(lambda: callers.versions[4] >= 8, "calls answered by version 4")
        assert set(callers.codes) == {"OK"}, callers.codes
        assert encode(vae).model_version == 4
        index = oip.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
        states = {m.version: (m.state, m.reason) for m in index}
        assert states["4"] == ("READY", "") and states["2"][0] == "UNAVAILABLE"
        assert states["3"][0] == "UNAVAILABLE" and "SHA-256" in states["3"][1]
        assert [m.version for m in oip.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10).models] == [
            "4"
        ]
    assert server.metric(FAILURES % "verify") == 1
    assert all(server.metric(FAILURES % reason) == 0 for reason in ("not_found", "limits", "session", "warm_up"))
    assert info_series(server) == ["4"]
    wait_until(lambda: "version 2: freed" in server.output(), "version 2 to be freed")
    ready = "version %d: sessions for heavy batches ready"
    wait_until(lambda: ready % 4 in server.output(), "version 4's sessions for heavy batches")
    log = server.output()
    assert "version 1: freed" in log and log.count("version 3 not loaded (verify)") == 1
    assert CYCLE_HELD not in log  # each freed by reference counting: no full collection stalled the calls
    # A swap holds at most one extra version: the new one's sessions for heavy batches come after the old is freed.
    for old, new in ((1, 2), (2, 4)):
        assert log.index(f"version {old}: freed") < log.index(ready % new), log


def test_unloading_the_last_version_refuses_calls_until_a_load(explicit: tuple[ServerProcess, Path]) -> None:
    server, _ = explicit
    with grpc.insecure_channel(server.target) as channel:
        vae, oip = stubs(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="vae"), timeout=30)
        error = refusal(lambda: encode(vae))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "no version of vae is served (all unloaded): load one, or retry later"
        assert refusal(lambda: vae.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)).code() == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert not oip.ModelReady(pb.ModelReadyRequest(name="vae-encoder"), timeout=10).ready
        assert not oip.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        # Out of the Service (readiness), but live: the process is not restarted.
        wait_until(lambda: status("vae.v1.VaeService") == NOT_SERVING, "readiness to go NOT_SERVING")
        assert status("") == SERVING
        assert info_series(server) == []
        index = oip.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
        assert [(m.version, m.state, m.reason) for m in index] == [("1", "UNAVAILABLE", "unloaded")]
        oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="vae"), timeout=30)  # twice: a no-op
        load(oip)
        assert encode(vae).model_version == 1
        wait_until(lambda: status("vae.v1.VaeService") == SERVING, "readiness to be SERVING again")
        assert info_series(server) == ["1"]


def test_hostile_repository_requests_get_clean_errors(explicit: tuple[ServerProcess, Path]) -> None:
    server, _ = explicit
    parameter = pb.ModelRepositoryParameter
    cases = [
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="vae", repository_name="other"),
         grpc.StatusCode.NOT_FOUND, "repository_name: this server has one repository"),
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="x" * 5000), grpc.StatusCode.NOT_FOUND,
         "model_name: the repository's model is 'vae'"),
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="vae-encoder"), grpc.StatusCode.NOT_FOUND,
         "model_name: the repository's model is 'vae' (served as vae-encoder, vae-decoder), not 'vae-encoder'"),
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=""), grpc.StatusCode.NOT_FOUND,
         "model_name:"),
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="vae", parameters={
            "config": parameter(string_param="{}")}), grpc.StatusCode.INVALID_ARGUMENT,
         "parameters: 'config' is not taken here"),
        ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="vae", parameters={
            "file:1/model.onnx": parameter(bytes_param=b"\0" * 100_000)}), grpc.StatusCode.INVALID_ARGUMENT,
         "parameters: 'file:1/model.onnx' is not taken here"),
        ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="vae", parameters={
            "unload_dependents": parameter(int64_param=-1)}), grpc.StatusCode.INVALID_ARGUMENT,
         "parameters: 'unload_dependents' is not taken here (taken: unload_dependents (bool_param)"),
        ("RepositoryIndex", pb.RepositoryIndexRequest(repository_name="\udcff".encode("utf-8", "surrogatepass")
                                                      .decode("utf-8", "replace") * 100),
         grpc.StatusCode.NOT_FOUND, "repository_name:"),
    ]  # fmt: skip
    with grpc.insecure_channel(server.target) as channel:
        for method, request, code, message in cases:
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            error = refusal(lambda call=call, request=request: call(request.SerializeToString(), timeout=10))
            assert error.code() == code and error.details().startswith(message), (method, error.details())
            assert len(error.details()) < 400
        for method in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            error = refusal(lambda call=call: call(b"\xff\xff\xff", timeout=10))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert encode(stubs(channel)[0]).model_version == 1  # nothing was loaded or lost
    assert server.metric(FAILURES % "verify") == 0


def test_model_control_none_refuses_loads_and_unloads_but_lists_the_repository(
    model_repo: Path, tmp_path: Path
) -> None:
    with serving(model_repo, tmp_path / "serve.log") as server, grpc.insecure_channel(server.target) as channel:
        _, oip = stubs(channel)
        for call in (
            lambda: load(oip),
            lambda: oip.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="vae"), timeout=10),
        ):
            error = refusal(call)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error.details().startswith("loads and unloads need --model-control explicit")
        index = oip.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
        assert [(m.name, m.version, m.state) for m in index] == [("vae", "1", "READY")]


def test_poll_skips_a_half_written_folder_once_and_loads_it_when_complete(
    model_repo: Path, digits_conv_run: Path, tmp_path: Path
) -> None:
    repo = repo_of(model_repo, tmp_path)
    staging = repo_of(model_repo, tmp_path / "staging")
    export(digits_conv_run, staging)
    flags = ("--model-control", "poll", "--poll-s", "0.2")
    with serving(repo, tmp_path / "serve.log", *flags) as server, Callers(server.target) as callers:
        # A copy in progress (not export's rename): model.json is there, the decoder is not yet.
        half = repo / "vae" / "2"
        half.mkdir()
        for file in (staging / "vae" / "2").iterdir():
            if file.name != "decoder.onnx":
                shutil.copy2(file, half / file.name)
        wait_until(lambda: server.metric(FAILURES % "verify", 0) == 1, "the half-written version to be refused")
        assert served(server) == [1]
        os.rename(staging / "vae" / "2" / "decoder.onnx", half / "decoder.onnx")  # the copy completes
        wait_until(lambda: callers.versions[2] >= 8, "calls answered by version 2", timeout=60)
        assert server.metric(FAILURES % "verify") == 1, "a folder that did not change is not retried"
    assert set(callers.codes) == {"OK"}, callers.codes
    log = server.output()
    assert log.count("version 2 not loaded (verify)") == 1 and "decoder.onnx: graph file not found" in log
    assert "version 1: freed" in log


def test_sighup_rescans_under_poll(model_repo: Path, digits_run: Path, tmp_path: Path) -> None:
    repo = repo_of(model_repo, tmp_path)
    flags = ("--model-control", "poll", "--poll-s", "86400")  # no scan of its own during the test
    with serving(repo, tmp_path / "serve.log", *flags) as server:
        export(digits_run, repo)
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: served(server) == [2], "the rescan to serve version 2", timeout=60)


def test_a_load_racing_sigterm_ends_cleanly(conv_model_repo: Path, digits_conv_run: Path, tmp_path: Path) -> None:
    repo = repo_of(conv_model_repo, tmp_path)
    # Big batches: the warm-up runs full batches of the conv model, so the load is still going when SIGTERM comes.
    flags = ("--model-control", "explicit", "--max-batch-size", "16384", "--max-concurrent-rpcs", "16384",
             "--max-num-samples", "16384", "--grace-period", "30")  # fmt: skip
    with serving(repo, tmp_path / "serve.log", *flags) as server:
        export(digits_conv_run, repo)
        with grpc.insecure_channel(server.target) as channel, ThreadPoolExecutor(1) as pool:
            loading = pool.submit(lambda: load(stubs(channel)[1]))
            wait_until(lambda: "version 2: loading" in server.output(), "the load to start", timeout=60)
            server.send_signal(signal.SIGTERM)
            assert server.wait(60) == 0
            error = loading.exception(timeout=60)
    # The load either finished inside the grace period or was cut off by the shutdown: never a crash.
    assert error is None or error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), error
    log = server.output()
    assert "stopped" in log and "Traceback" not in log, log
