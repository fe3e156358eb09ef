"""onnxruntime sessions: provider choice, the CPU session's two paths and the IO-binding path (exercised on CPU,
where it binds host memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from vaeserve.server.runtime import CPU, Cost, CpuSession, DeviceError, open_session, run_bound


def test_cpu_session_runs_the_graph_on_both_paths_and_with_io_binding(model_repo: Path) -> None:
    path = model_repo / "vae" / "1" / "encoder.onnx"
    graph, why_not = open_session(path, "image", ["mean", "log_variance"], device="cpu")
    assert isinstance(graph, CpuSession) and graph.provider == CPU and why_not == "CPU requested"
    graph.warm_up((1, 8, 8), 16)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    plain = graph.run(x)
    bound = run_bound(ort.InferenceSession(str(path), providers=[CPU]), "image", ["mean", "log_variance"], x, "cpu")
    assert graph.spin_rows >= 1  # measured at warm-up
    # What runs on the event loop is predicted from the warm-up timings: more time, never fewer rows.
    within = [graph.inline_rows(seconds, 16) for seconds in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 10.0)]
    assert within[0] == 0 and within[-1] == 16 and within == sorted(within)
    graph.spin_rows = 3  # so that 5 rows run on the worker's spinning session
    on_worker = graph.run_on_worker(x)
    assert graph.spinning is not graph.session
    assert [a.shape for a in plain] == [(5, 8), (5, 8)]
    for a, b, c in zip(plain, bound, on_worker, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_auto_uses_cuda_only_where_it_really_works(model_repo: Path) -> None:
    decoder = model_repo / "vae" / "1" / "decoder.onnx"
    with pytest.raises(DeviceError, match="--device: expected one of auto, cpu, cuda, got 'tpu'"):
        open_session(decoder, "latent", ["image"], device="tpu")
    graph, why_not = open_session(decoder, "latent", ["image"], device="auto")
    if graph.provider == "CUDAExecutionProvider":  # a machine with a usable GPU: IO binding on the device
        assert why_not == "" and graph.run_on_worker == graph.run  # one session on the device
        assert graph.inline_rows(10.0, 64) == 0  # every batch leaves the event loop
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
