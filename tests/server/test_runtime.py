"""onnxruntime sessions: provider choice and the IO-binding path (exercised on CPU, where it binds host memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vaeserve.server.runtime import Cost, DeviceError, GraphSession


def test_cpu_session_runs_the_graph_with_and_without_io_binding(model_repo: Path) -> None:
    graph = GraphSession(model_repo / "vae" / "1" / "encoder.onnx", "image", ["mean", "log_variance"], device="cpu")
    assert graph.provider == "CPUExecutionProvider" and graph.cpu_reason == "CPU requested"
    graph.warm_up((1, 8, 8), 16)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    plain = graph.run(x)
    bound = graph._run_bound(x)
    assert graph.spin_rows >= 1  # measured at warm-up
    # What runs on the event loop is predicted from the warm-up timings: more time, never fewer rows.
    within = [graph.cost.rows_within(seconds, 16) for seconds in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 10.0)]
    assert within[0] == 0 and within[-1] == 16 and within == sorted(within)
    graph.spin_rows = 3  # so that 5 rows run on the worker's spinning session
    on_worker = graph.run_on_worker(x)
    assert graph.worker_session is not graph.session
    assert [a.shape for a in plain] == [(5, 8), (5, 8)]
    for a, b, c in zip(plain, bound, on_worker, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_auto_uses_cuda_only_where_it_really_works(model_repo: Path) -> None:
    decoder = model_repo / "vae" / "1" / "decoder.onnx"
    with pytest.raises(DeviceError, match="--device: expected one of auto, cpu, cuda, got 'tpu'"):
        GraphSession(decoder, "latent", ["image"], device="tpu")
    graph = GraphSession(decoder, "latent", ["image"], device="auto")
    if graph.provider == "CUDAExecutionProvider":  # a machine with a usable GPU: IO binding on the device
        assert graph.cpu_reason == "" and graph.run == graph._run_bound and graph.device_type == "cuda"
        assert graph.run_on_worker == graph.run  # one session on the device
        return
    assert graph.provider == "CPUExecutionProvider" and graph.cpu_reason  # the reason goes to the start-up log
    with pytest.raises(DeviceError, match="--device cuda: "):
        GraphSession(decoder, "latent", ["image"], device="cuda")


def test_cost_predicts_the_rows_that_fit_in_a_time() -> None:
    cost = Cost(fixed_s=0.5, per_row_s=0.25)  # one row 0.75 s, ten rows 3 s
    assert cost.rows_within(3.0, 64) == 10
    assert cost.rows_within(0.7, 64) == 0  # not even one row
    assert cost.rows_within(100.0, 64) == 64  # never past the batch limit
    assert Cost(fixed_s=0.5, per_row_s=0.0).rows_within(0.6, 64) == 64  # rows that cost nothing measurable
