"""onnxruntime sessions: provider choice, the CPU session's two paths and the IO-binding path (exercised on CPU,
where it binds host memory)."""

from __future__ import annotations

import dataclasses
import functools
import os
import timeit
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from vaeserve.repository import open_version
from vaeserve.server.cpus import available_cpus
from vaeserve.server.handoff import LOOP_HOLD_S, auto_inline_budget_s, worker_handoff_s
from vaeserve.server.models import architecture
from vaeserve.server.runtime import (
    CPU,
    SPIN_AFTER_S,
    THREADS_SLACK,
    Cost,
    CpuSession,
    DeviceError,
    cuda_options,
    open_session,
    preload_cuda,
    run_bound,
)


def warm_for_spinning(graph: CpuSession, row_shape: tuple[int, ...]) -> int:
    """Warms `graph` up at a full batch its loop's session runs for at least 8 x SPIN_AFTER_S, whatever the
    machine, and returns its rows: a full batch that still runs longer than SPIN_AFTER_S on the spinning session
    (a shorter one never spins: add_heavy builds nothing), on up to 8 threads even if they scaled perfectly.
    Each size is timed here, not read off graph.cost: a Cost kept for the architecture was fitted at the first
    version's sizes, and one fitted to microsecond runs on a busy machine may predict no growth with rows. So the
    graph must not have been warmed up at other sizes before (its Cost is kept, not timed again: a server warms
    every graph at one size, --max-batch-size): add_heavy would decide from the Cost of a small batch."""
    rows = 16
    while True:
        x = np.zeros((rows, *row_shape), dtype=np.float32)
        graph.run(x)  # allocations, not timed
        if min(timeit.repeat(functools.partial(graph.run, x), number=1, repeat=3)) >= 8 * SPIN_AFTER_S:
            break
        rows *= 2
        assert rows <= 1 << 20, f"{graph.path} ran {rows >> 1} rows within {8 * SPIN_AFTER_S} s"
    graph.warm_up(row_shape, rows)
    assert graph.cost.seconds(rows) >= SPIN_AFTER_S, f"{graph.path}: a Cost fitted at other sizes ({graph.cost})"
    return rows


def add_heavy(graph: CpuSession, row_shape: tuple[int, ...], max_rows: int) -> None:
    """As a version does (models.add_heavy): measured, then built."""
    graph.measure_heavy(row_shape, max_rows)
    graph.add_heavy(row_shape, max_rows)


def test_cpu_session_runs_the_graph_on_both_paths_and_with_io_binding(model_repo: Path) -> None:
    path = model_repo / "vae" / "1" / "encoder.onnx"
    graph, why_not = open_session(path, "image", ["mean", "log_variance"], device="cpu", intra=2)
    assert isinstance(graph, CpuSession) and graph.provider == CPU and why_not == "CPU requested"
    rows = warm_for_spinning(graph, (1, 8, 8))  # before any other warm-up: the Cost add_heavy decides from
    means = graph.with_outputs(["mean"])  # a view made before the spinning session exists (as the batchers are)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    plain = graph.run(x)
    bound = run_bound(ort.InferenceSession(str(path), providers=[CPU]), "image", ["mean", "log_variance"], x, "cpu")
    before_heavy = graph.run_on_worker(x)  # no spinning session yet: the loop's session runs every batch
    assert graph.spinning.session is None
    # What runs on the event loop is predicted from the warm-up timings: more time, never fewer rows.
    within = [graph.inline_rows(seconds, 16) for seconds in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 10.0)]
    assert within[0] == 0 and within[-1] == 16 and within == sorted(within)
    add_heavy(graph, (1, 8, 8), rows)
    assert graph.spinning.session is not None and 1 <= graph.spinning.rows <= rows  # measured as it was built
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
    rows = warm_for_spinning(graph, (latent_dim,))
    add_heavy(graph, (latent_dim,), rows)
    spinning = graph.spinning
    cpus = max(1, int(available_cpus()))
    assert set(spinning.timings) >= {1, cpus} and max(spinning.timings) == cpus  # 1 to the CPUs it may use
    fastest = min(spinning.timings.values())
    assert spinning.timings[spinning.threads] <= fastest * (1 + THREADS_SLACK)  # about as fast as any count ...
    assert all(seconds > fastest * (1 + THREADS_SLACK)
               for t, seconds in spinning.timings.items() if t < spinning.threads)  # ... and the fewest  # fmt: skip
    assert graph.session.get_session_options().intra_op_num_threads == 1  # the event loop's batches: its core alone
    if spinning.threads == 1:  # test_one_thread_builds_no_second_session
        assert spinning.session is None
    else:
        assert spinning.session.get_session_options().intra_op_num_threads == spinning.threads
        assert f"worker session {spinning.threads} intra-op thread(s)" in graph.describe()
    assert spinning.timings[1] == graph.cost.seconds(rows)  # one thread: the loop's own session, timed at warm-up
    given, _ = open_session(path, "latent", ["image"], device="cpu", intra=3)
    add_heavy(given, (latent_dim,), warm_for_spinning(given, (latent_dim,)))
    assert given.spinning.threads == 3 and given.spinning.timings == {}  # --intra-op-threads given: not measured
    assert given.spinning.session is not None


@pytest.mark.parametrize("intra", [0, 1])
def test_no_second_session_when_nothing_would_spin(model_repo: Path, intra: int) -> None:
    """One intra-op thread has no pool threads to spin; a graph whose full batch runs within SPIN_AFTER_S on
    one thread has no batch to spin for (neither are its threads measured): the worker runs the loop's session."""
    path = model_repo / "vae" / "1" / "decoder.onnx"
    graph, _ = open_session(path, "latent", ["image"], device="cpu", intra=intra)
    assert isinstance(graph, CpuSession)
    latent_dim = graph.session.get_inputs()[0].shape[1]
    if intra == 1:
        rows = warm_for_spinning(graph, (latent_dim,))  # long enough to spin for, but one thread
    else:
        rows = 16
        graph.warm_up((latent_dim,), rows)
        assert graph.cost.seconds(rows) < SPIN_AFTER_S  # 16 rows of the digits MLP: microseconds
    add_heavy(graph, (latent_dim,), rows)
    assert graph.spinning.session is None and graph.spinning.rows > rows  # no batch reaches a second session
    assert graph.spinning.timings == {}  # nothing measured for a session not built
    assert "the worker runs the event loop's session, 1 intra-op thread" in graph.describe()
    z = np.random.default_rng(0).standard_normal((rows, latent_dim), dtype=np.float32)
    np.testing.assert_array_equal(graph.run_on_worker(z)[0], graph.run(z)[0])


def test_what_was_timed_is_reused_by_later_versions_of_the_architecture(model_repo: Path) -> None:
    """A later version built alike (models.architecture: the same training configuration, variant and graph)
    is warmed up, but neither its costs nor the worker's threads are timed again."""
    model = open_version(model_repo, "vae", 1)
    key = architecture(model, "decoder")
    retrained = dataclasses.replace(model, version=2, info={**model.info, "version": 2})
    assert key is not None and architecture(retrained, "decoder") == key != architecture(model, "encoder")
    older = dataclasses.replace(model, info={k: v for k, v in model.info.items() if k != "model_config"})
    assert architecture(older, "decoder") is None  # an export without the record: timed every time
    key += "-" + os.urandom(4).hex()  # not the key other tests' sessions in this process were timed under
    graphs = []
    for shared in (key, key, key + "-other", None):
        graph, _ = open_session(model.decoder_path, "latent", ["image"], device="cpu", intra=0, architecture=shared)
        assert isinstance(graph, CpuSession)
        add_heavy(graph, (model.latent_dim,), warm_for_spinning(graph, (model.latent_dim,)))
        graphs.append(graph)
    first, again, other, unshared = graphs
    assert again.measured is first.measured and again.cost is first.cost  # the first's timings, not new ones
    assert (again.spinning.threads, again.spinning.timings) == (first.spinning.threads, first.spinning.timings)
    assert again.spinning.reused and "measured for an earlier version of this architecture" in again.describe()
    assert again.spinning.rows == first.spinning.rows  # from the spinning session's reused cost
    for fresh in (other, unshared):  # another architecture, or none: timed afresh
        assert fresh.measured is not first.measured and fresh.cost is not first.cost and not fresh.spinning.reused
    assert not first.spinning.reused and "earlier version" not in first.describe()
    x = np.random.default_rng(0).standard_normal((64, model.latent_dim), dtype=np.float32)
    np.testing.assert_array_equal(again.run_on_worker(x)[0], first.run_on_worker(x)[0])  # warmed, and serving
    assert first.spinning.timings  # measured: a full batch long enough to spin for


def test_the_round_trip_to_the_worker_is_measured_once() -> None:
    measured = worker_handoff_s()
    assert 0 < measured < 1.0 and worker_handoff_s() == measured  # a thread's round trip, once per process
    # auto: one batch holds the event loop for at most LOOP_HOLD_S, unless handing it over costs more
    assert auto_inline_budget_s() == max(LOOP_HOLD_S, measured)


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
