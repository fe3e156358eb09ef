"""onnxruntime sessions: provider choice, the CPU session's two paths and the IO-binding path (exercised on CPU,
where it binds host memory)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from vaeserve.server.cpus import available_cpus
from vaeserve.server.handoff import worker_handoff_s
from vaeserve.server.runtime import (
    CPU,
    THREADS_SLACK,
    Cost,
    CpuSession,
    DeviceError,
    cuda_options,
    open_session,
    preload_cuda,
    run_bound,
)


def test_cpu_session_runs_the_graph_on_both_paths_and_with_io_binding(model_repo: Path) -> None:
    path = model_repo / "vae" / "1" / "encoder.onnx"
    graph, why_not = open_session(path, "image", ["mean", "log_variance"], device="cpu")
    assert isinstance(graph, CpuSession) and graph.provider == CPU and why_not == "CPU requested"
    graph.warm_up((1, 8, 8), 16)
    means = graph.with_outputs(["mean"])  # a view made before the spinning session exists (as the batchers are)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    plain = graph.run(x)
    bound = run_bound(ort.InferenceSession(str(path), providers=[CPU]), "image", ["mean", "log_variance"], x, "cpu")
    before_heavy = graph.run_on_worker(x)  # no spinning session yet: the loop's session runs every batch
    assert graph.spinning.session is None
    # What runs on the event loop is predicted from the warm-up timings: more time, never fewer rows.
    within = [graph.inline_rows(seconds, 16) for seconds in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 10.0)]
    assert within[0] == 0 and within[-1] == 16 and within == sorted(within)
    graph.add_heavy((1, 8, 8), 16)
    assert graph.spinning.rows >= 1  # measured as it was built
    graph.spinning.rows = 3  # so that 5 rows run on the worker's spinning session
    on_worker = graph.run_on_worker(x)
    assert graph.spinning.session is not graph.session and means.spinning is graph.spinning
    assert [a.shape for a in plain] == [(5, 8), (5, 8)]
    for a, b, c, d in zip(plain, bound, on_worker, before_heavy, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)
    (mean,) = means.run_on_worker(x)
    np.testing.assert_array_equal(mean, plain[0])


def test_the_workers_threads_are_measured_and_the_loops_session_runs_on_one(model_repo: Path) -> None:
    path = model_repo / "vae" / "1" / "decoder.onnx"
    latent_dim = ort.InferenceSession(str(path), providers=[CPU]).get_inputs()[0].shape[1]
    graph, _ = open_session(path, "latent", ["image"], device="cpu", intra=0)
    assert isinstance(graph, CpuSession) and graph.spinning.threads == 0  # chosen when the spinning one is built
    graph.warm_up((latent_dim,), 64)
    graph.add_heavy((latent_dim,), 64)
    spinning = graph.spinning
    cpus = max(1, int(available_cpus()))
    assert set(spinning.timings) >= {1, cpus} and max(spinning.timings) == cpus  # 1 to the CPUs it may use
    fastest = min(spinning.timings.values())
    assert spinning.timings[spinning.threads] <= fastest * (1 + THREADS_SLACK)  # about as fast as any count ...
    assert all(seconds > fastest * (1 + THREADS_SLACK)
               for t, seconds in spinning.timings.items() if t < spinning.threads)  # ... and the fewest  # fmt: skip
    assert graph.session.get_session_options().intra_op_num_threads == 1  # the event loop's batches: its core alone
    assert spinning.session.get_session_options().intra_op_num_threads == spinning.threads
    assert f"worker session {spinning.threads} intra-op thread(s)" in graph.describe()
    given, _ = open_session(path, "latent", ["image"], device="cpu", intra=3)
    given.warm_up((latent_dim,), 64)
    given.add_heavy((latent_dim,), 64)
    assert given.spinning.threads == 3 and given.spinning.timings == {}  # --intra-op-threads given: not measured


def test_the_round_trip_to_the_worker_is_measured_once() -> None:
    measured = worker_handoff_s()
    assert 0 < measured < 1.0 and worker_handoff_s() == measured  # a thread's round trip, once per process


def test_auto_uses_cuda_only_where_it_really_works(model_repo: Path) -> None:
    decoder = model_repo / "vae" / "1" / "decoder.onnx"
    with pytest.raises(DeviceError, match="--device: expected one of auto, cpu, cuda, got 'tpu'"):
        open_session(decoder, "latent", ["image"], device="tpu")
    graph, why_not = open_session(decoder, "latent", ["image"], device="auto")
    if graph.provider == "CUDAExecutionProvider":  # a machine with a usable GPU: IO binding on the device
        assert why_not == "" and graph.run_on_worker == graph.run  # one session on the device
        assert graph.inline_rows(10.0, 64) == 0  # every batch leaves the event loop
        cpu, _ = open_session(decoder, "latent", ["image"], device="cpu")
        latent_dim = ort.InferenceSession(str(decoder), providers=[CPU]).get_inputs()[0].shape[1]
        z = np.random.default_rng(0).standard_normal((256, latent_dim), dtype=np.float32)
        np.testing.assert_allclose(graph.run(z)[0], cpu.run(z)[0], atol=1e-4)  # the same images as on the CPU
        return
    assert graph.provider == CPU and why_not  # the reason goes to the start-up log
    with pytest.raises(DeviceError, match="--device cuda: "):
        open_session(decoder, "latent", ["image"], device="cuda")


def test_cost_predicts_the_rows_that_fit_in_a_time() -> None:
    cost = Cost(fixed_s=0.5, per_row_s=0.25)  # one row 0.75 s, ten rows 3 s
    assert cost.rows_within(3.0, 64) == 10
    assert cost.rows_within(0.7, 64) == 0  # not even one row
    assert cost.rows_within(100.0, 64) == 64  # never past the batch limit
    assert Cost(fixed_s=0.5, per_row_s=0.0).rows_within(0.6, 64) == 64  # rows that cost nothing measurable


def test_cuda_provider_options_bound_the_arena() -> None:
    exact = {"arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"}  # float32 as on the CPU
    assert cuda_options(2048) == {**exact, "gpu_mem_limit": str(2048 << 20)}
    assert cuda_options(0) == exact  # 0: onnxruntime's own (no) limit


def test_preloading_cuda_libraries_reports_in_one_line(capfd: pytest.CaptureFixture) -> None:
    missing = preload_cuda()
    out, err = capfd.readouterr()
    assert out == err == ""  # onnxruntime's page of failures is not printed...
    if "CUDAExecutionProvider" in ort.get_available_providers() and missing:
        assert missing.startswith("Failed to load lib")  # ...its first line becomes part of the reason


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # v2, no quota: the affinity
        ({"cpu.max": "150000 100000\n"}, 1.5),  # v2: 1.5 CPUs
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
        ({}, None),  # no cgroup files at all
    ],
)
def test_available_cpus_follow_the_containers_quota(tmp_path: Path, files: dict[str, str], cpus: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (affinity if cpus is None else min(affinity, cpus))
