"""The batcher on its own: the real Batcher and real metrics around a numpy "graph" that records its batches.

The batcher takes and gives bytes by name; `ArrayBatcher` states the cases in numpy rows of width 3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import weakref

import numpy as np
import pytest

from vaeserve.server.batcher import Batcher, BatchObserver, InferenceFailed
from vaeserve.server.errors import DeadlineExpired, InvalidArgument, QueueFull
from vaeserve.server.graphs import GraphSpec, TensorSpec
from vaeserve.server.metrics import Metrics

WIDTH = 3  # values per row of the test graphs' input


class Runner:
    """What the batcher runs a graph with (runtime.Session): here both paths are plain functions."""

    def __init__(self, run, run_on_worker=None) -> None:
        self.run = run
        self.run_on_worker = run_on_worker or run


def spec(name: str, inputs: dict[str, int], widths: tuple[int, ...], compute, check=None) -> GraphSpec:
    """A graph of rows: inputs {name: values per row}, outputs out0, out1, ... of `widths` values per row."""
    return GraphSpec(
        name=name,
        inputs=tuple(TensorSpec(n, (w,)) for n, w in inputs.items()),
        outputs=tuple(TensorSpec(f"out{i}", (w,)) for i, w in enumerate(widths)),
        compute=compute,
        check=check,
    )


class ArrayBatcher:
    """A Batcher over rows of WIDTH float32 values, submitted and returned as numpy arrays.

    `widths`: values per row of each graph output, to turn the result bytes back into arrays; `check` is given
    the batch's input array."""

    def __init__(
        self, name: str, graph, observer: BatchObserver, widths: tuple[int, ...] = (WIDTH, 1), check=None, **kw
    ) -> None:
        checks = None if check is None else lambda batch: check(batch["x"])
        graph_spec = spec(name, {"x": WIDTH}, widths, lambda run, batch: run(batch["x"]), checks)
        self.batcher = Batcher(graph_spec, Runner(graph), observer, **kw)
        self.widths = widths

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    def submit(self, x: np.ndarray, timeout: float | None = None) -> asyncio.Future:
        """The batcher's future, decoded; cancelling it cancels the batcher's (as gRPC cancelling a handler does)."""
        queued = self.batcher.submit({"x": x.tobytes()}, len(x), timeout)  # raises QueueFull here, like the batcher
        result = asyncio.get_running_loop().create_future()

        def settle(done: asyncio.Future) -> None:
            if result.done():
                return
            if done.cancelled():
                result.cancel()
            elif done.exception() is not None:
                result.set_exception(done.exception())
            else:
                outputs = done.result()
                result.set_result([np.frombuffer(outputs[f"out{i}"], np.float32).reshape(-1, w)
                                   for i, w in enumerate(self.widths)])  # fmt: skip

        queued.add_done_callback(settle)
        result.add_done_callback(lambda r: queued.cancel() if r.cancelled() else None)
        return result


class Graph:
    """out = (2x, row sums); records every batch it is given; `gate` (when set up) holds a run until released."""

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.running = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.running.set()
        self.gate.wait(10)
        self.batches.append(x.copy())
        return [2 * x, x.sum(axis=1, keepdims=True)]


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None].repeat(WIDTH, axis=1)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def sample(metrics: Metrics, name: str, graph: str = "decoder") -> float:
    return metrics.registry.get_sample_value(name, {"graph": graph})


def test_concurrent_requests_share_a_run_and_get_their_own_rows_back() -> None:
    graph, metrics = Graph(gated=True), Metrics()

    async def main() -> None:
        b = ArrayBatcher("decoder", graph, metrics.graph("decoder"), max_rows=64)
        b.start()
        first = b.submit(rows(0, 1))
        await asyncio.to_thread(graph.running.wait, 10)  # the first batch is running: the next ones queue up
        pending = [b.submit(rows(100 * i, i)) for i in range(1, 6)]
        graph.gate.set()
        results = await asyncio.gather(first, *pending)
        for i, (doubled, sums) in enumerate(results):
            x = rows(0, 1) if i == 0 else rows(100 * i, i)
            np.testing.assert_array_equal(doubled, 2 * x)
            np.testing.assert_array_equal(sums, x.sum(axis=1, keepdims=True))
        await b.stop()

    run(main())
    assert [len(x) for x in graph.batches] == [1, 1 + 2 + 3 + 4 + 5]
    assert sample(metrics, "vaeserve_batch_size_count") == 2
    assert sample(metrics, "vaeserve_batch_size_sum") == 16
    assert sample(metrics, "vaeserve_queue_wait_seconds_count") == 6
    assert metrics.registry.get_sample_value("vaeserve_images_generated_total") == 16


def test_big_requests_are_split_and_take_turns_with_small_ones() -> None:
    graph, metrics = Graph(gated=True), Metrics()

    async def main() -> None:
        b = ArrayBatcher("decoder", graph, metrics.graph("decoder"), max_rows=4)
        b.start()
        big = b.submit(rows(0, 10))
        await asyncio.to_thread(graph.running.wait, 10)
        small = b.submit(rows(1000, 2))
        graph.gate.set()
        (big_out, _), (small_out, _) = await asyncio.gather(big, small)
        np.testing.assert_array_equal(big_out, 2 * rows(0, 10))
        np.testing.assert_array_equal(small_out, 2 * rows(1000, 2))
        await b.stop()

    run(main())
    # After each turn the big request's rest goes behind whatever is queued: the small one gets the next turn
    # and shares that run with the big one's last rows, each request keeping its own contiguous rows.
    assert [x[:, 0].tolist() for x in graph.batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [1000, 1001, 8, 9]]
    assert max(len(x) for x in graph.batches) <= 4


def test_a_full_queue_refuses_at_once() -> None:
    graph = Graph(gated=True)

    async def main() -> None:
        b = ArrayBatcher("encoder", graph, Metrics().graph("encoder"), max_rows=1, max_queue=2)
        b.start()
        running = b.submit(rows(0, 1))
        await asyncio.to_thread(graph.running.wait, 10)
        queued = [b.submit(rows(1, 1)), b.submit(rows(2, 1))]
        with pytest.raises(QueueFull, match="the encoder queue is full"):
            b.submit(rows(3, 1))
        graph.gate.set()
        await asyncio.gather(running, *queued)
        await b.submit(rows(4, 1))  # room again once the queue drained
        await b.stop()

    run(main())
    assert len(graph.batches) == 4


def test_expired_and_cancelled_requests_are_dropped_not_computed() -> None:
    graph = Graph(gated=True)

    async def main() -> None:
        b = ArrayBatcher("decoder", graph, Metrics().graph("decoder"), max_rows=64)
        b.start()
        running = b.submit(rows(0, 1))
        await asyncio.to_thread(graph.running.wait, 10)
        expired = b.submit(rows(100, 1), timeout=0.01)
        cancelled = b.submit(rows(200, 1))
        kept = b.submit(rows(300, 1), timeout=30)
        cancelled.cancel()
        await asyncio.sleep(0.05)  # past the first deadline, while the batch before it still runs
        graph.gate.set()
        await running
        with pytest.raises(DeadlineExpired, match="deadline passed while queued for the decoder"):
            await expired
        (out, _) = await kept
        np.testing.assert_array_equal(out, 2 * rows(300, 1))
        await b.stop()

    run(main())
    assert [x[:, 0].tolist() for x in graph.batches] == [[0], [300]]


def test_a_failing_run_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls = []

    def flaky(x: np.ndarray) -> list[np.ndarray]:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [x]

    async def main() -> None:
        b = ArrayBatcher("decoder", flaky, Metrics().graph("decoder"), widths=(WIDTH,), max_rows=8)
        b.start()
        with pytest.raises(InferenceFailed, match="decoder inference failed: boom"):
            await b.submit(rows(0, 2))
        (out,) = await b.submit(rows(5, 2))
        np.testing.assert_array_equal(out, rows(5, 2))
        await b.stop()

    run(main())


def test_with_a_delay_a_lone_caller_never_waits_and_concurrent_callers_are_awaited() -> None:
    graph = Graph()

    async def main() -> None:
        b = ArrayBatcher("decoder", graph, Metrics().graph("decoder"), max_rows=64, max_delay_s=30.0)
        b.start()
        for i in range(3):  # one caller at a time: each request runs at once, not after the 30 s delay
            await asyncio.wait_for(b.submit(rows(i, 1)), 10)
        await asyncio.gather(b.submit(rows(10, 1)), b.submit(rows(11, 1)))  # two callers now
        first = b.submit(rows(20, 1))
        await asyncio.sleep(0.05)  # the batch waits for the second active caller...
        assert len(graph.batches) == 4
        await asyncio.wait_for(asyncio.gather(first, b.submit(rows(21, 1))), 10)  # ...which releases it
        await b.stop()

    run(main())
    assert [x[:, 0].tolist() for x in graph.batches] == [[0], [1], [2], [10, 11], [20, 21]]


def test_with_a_delay_a_full_batch_does_not_wait() -> None:
    graph = Graph()

    async def main() -> None:
        b = ArrayBatcher("decoder", graph, Metrics().graph("decoder"), max_rows=4, max_delay_s=30.0)
        b.start()
        await asyncio.gather(b.submit(rows(0, 1)), b.submit(rows(1, 1)), b.submit(rows(2, 1)))  # three callers
        await asyncio.wait_for(b.submit(rows(10, 4)), 10)  # one full request: runs although two are missing
        await b.stop()

    run(main())
    assert [len(x) for x in graph.batches] == [3, 4]


class ThreadRecorder:
    """A graph that records which thread ran each batch."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return [x]


def _run_batches(graph: ThreadRecorder, inline_rows: int, sizes: list[int]) -> str:
    loop_thread = ""

    async def main() -> None:
        nonlocal loop_thread
        loop_thread = threading.current_thread().name
        b = ArrayBatcher(
            "encoder", graph, Metrics().graph("encoder"), widths=(WIDTH,), max_rows=64, inline_rows=inline_rows
        )
        b.start()
        for n in sizes:  # one at a time: each is its own batch
            (out,) = await b.submit(rows(0, n))
            np.testing.assert_array_equal(out, rows(0, n))
        await b.stop()

    run(main())
    return loop_thread


def test_small_batches_run_on_the_event_loop_and_large_ones_on_the_worker_thread() -> None:
    graph = ThreadRecorder()
    loop_thread = _run_batches(graph, inline_rows=10, sizes=[1, 10, 1, 11, 60, 1])
    worker = "onnx-encoder_0"
    assert graph.threads == [loop_thread, loop_thread, loop_thread, worker, worker, loop_thread]


def test_no_inline_rows_always_uses_the_worker_thread() -> None:
    graph = ThreadRecorder()
    loop_thread = _run_batches(graph, inline_rows=0, sizes=[1, 1, 1])
    assert loop_thread not in graph.threads
    assert set(graph.threads) == {"onnx-encoder_0"}


def test_values_are_checked_once_per_batch_and_a_bad_request_fails_alone() -> None:
    graph, checked = Graph(gated=True), []

    def check(x: np.ndarray) -> None:
        checked.append(len(x))
        if (x < 0).any():
            raise InvalidArgument("latents.data", "expected values >= 0")

    async def main() -> None:
        b = ArrayBatcher("decoder", graph, Metrics().graph("decoder"), max_rows=64, check=check)
        b.start()
        first = b.submit(rows(0, 1))
        await asyncio.to_thread(graph.running.wait, 10)
        good, bad, also_good = b.submit(rows(10, 2)), b.submit(rows(-5, 3)), b.submit(rows(20, 1))
        graph.gate.set()
        await first
        with pytest.raises(InvalidArgument, match=r"latents\.data: expected values >= 0"):
            await bad
        (out, _), (also_out, _) = await good, await also_good
        np.testing.assert_array_equal(out, 2 * rows(10, 2))
        np.testing.assert_array_equal(also_out, 2 * rows(20, 1))
        await b.stop()

    run(main())
    # The first batch passed as a whole; the second failed as a whole, then each request was checked alone.
    assert checked == [1, 6, 2, 3, 1]
    assert [x[:, 0].tolist() for x in graph.batches] == [[0], [10, 11, 20]]


def test_every_input_is_joined_row_aligned() -> None:
    # A graph of two inputs, like the encoder with its noise: each request's rows keep their own second input.
    seen = []

    def graph(x: np.ndarray, eps: np.ndarray) -> list[np.ndarray]:
        seen.append(len(x))
        return [x[:, :1] + eps]

    async def main() -> list[dict[str, bytes]]:
        two_inputs = spec("encoder", {"x": WIDTH, "eps": 2}, (2,), lambda run, batch: run(batch["x"], batch["eps"]))
        b = Batcher(two_inputs, Runner(graph), Metrics().graph("encoder"), max_rows=64, max_delay_s=1.0)
        b.start()
        requests = [(rows(100 * i, i), np.full((i, 2), i, np.float32)) for i in (1, 2, 3)]
        results = await asyncio.gather(*(b.submit({"x": x.tobytes(), "eps": e.tobytes()}, len(x)) for x, e in requests))
        await b.stop()
        for (x, e), out in zip(requests, results, strict=True):
            np.testing.assert_array_equal(np.frombuffer(out["out0"], np.float32).reshape(-1, 2), x[:, :1] + e)
        return results

    run(main())
    assert seen == [6]  # one run for the three


def test_worker_batches_use_the_worker_function() -> None:
    # run and run_on_worker are the same graph in two sessions (runtime.CpuSession): which one a batch gets
    # follows where it runs.
    inline, on_worker = ThreadRecorder(), ThreadRecorder()

    async def main() -> None:
        one_input = spec("encoder", {"x": WIDTH}, (WIDTH,), lambda run, batch: run(batch["x"]))
        b = Batcher(one_input, Runner(inline, on_worker), Metrics().graph("encoder"), max_rows=64, inline_rows=10)
        b.start()
        for n in (1, 1, 60):
            out = (await b.submit({"x": rows(0, n).tobytes()}, n))["out0"]
            np.testing.assert_array_equal(np.frombuffer(out, np.float32).reshape(n, WIDTH), rows(0, n))
        await b.stop()

    run(main())
    # 1-row batches run on the loop, the 60-row one on the worker thread.
    assert inline.threads == ["MainThread", "MainThread"] and on_worker.threads == ["onnx-encoder_0"]


def test_outputs_without_one_row_per_batch_row_fail_the_batch_clearly() -> None:
    calls = []

    def short(x: np.ndarray) -> list[np.ndarray]:
        calls.append(len(x))
        return [x[:-1] if len(calls) == 1 else x]  # the first run loses a row

    async def main() -> None:
        b = ArrayBatcher("decoder", short, Metrics().graph("decoder"), widths=(WIDTH,), max_rows=8)
        b.start()
        with pytest.raises(
            InferenceFailed, match=r"decoder output out0 came out float32 \[2, 3\] for a batch of 3 rows"
        ):
            await b.submit(rows(0, 3))
        (out,) = await b.submit(rows(5, 2))  # and the batcher goes on
        np.testing.assert_array_equal(out, rows(5, 2))
        await b.stop()

    run(main())


def test_output_checks_fail_only_the_requests_whose_rows_fail() -> None:
    graph = Graph(gated=True)

    def finite(outputs) -> None:
        if not np.isfinite(outputs[0]).all():
            raise InvalidArgument("latents.data", "decoded to NaN")

    def nan_for_negative(x: np.ndarray) -> list[np.ndarray]:
        doubled, sums = graph(x)
        return [np.where(x < 0, np.float32("nan"), doubled), sums]

    async def main() -> None:
        graph_spec = spec("decoder", {"x": WIDTH}, (WIDTH, 1), lambda run, batch: run(batch["x"]))
        graph_spec = dataclasses.replace(graph_spec, check_outputs=finite)
        b = Batcher(graph_spec, Runner(nan_for_negative), Metrics().graph("decoder"), max_rows=64)
        b.start()
        first = b.submit({"x": rows(0, 1).tobytes()}, 1)
        await asyncio.to_thread(graph.running.wait, 10)
        good, bad = b.submit({"x": rows(10, 2).tobytes()}, 2), b.submit({"x": rows(-5, 3).tobytes()}, 3)
        later = b.submit({"x": rows(20, 1).tobytes()}, 1)
        graph.gate.set()
        await first
        with pytest.raises(InvalidArgument, match=r"latents\.data: decoded to NaN"):
            await bad
        for result, x in ((await good, rows(10, 2)), (await later, rows(20, 1))):
            np.testing.assert_array_equal(np.frombuffer(result["out0"], np.float32).reshape(-1, WIDTH), 2 * x)
        await b.stop()

    run(main())
    assert [len(x) for x in graph.batches] == [1, 6]  # the bad request shared the run, then failed alone


@pytest.mark.parametrize("waiting", [False, True])
def test_a_stopped_batcher_frees_its_graph_without_the_garbage_collector(waiting: bool) -> None:
    # A retired model version's sessions are freed when its batchers stop (models.Models._freed): a reference
    # cycle through a stopped batcher would keep them until a full garbage collection, into the next swap.
    async def main() -> weakref.ref:
        graph = Graph()
        graph_spec = spec("decoder", {"x": WIDTH}, (WIDTH, 1), lambda run, batch: run(batch["x"]))
        b = Batcher(graph_spec, Runner(graph), Metrics().graph("decoder"), max_rows=64, max_delay_s=30.0)
        b.start()
        one = rows(0, 1).tobytes()
        await asyncio.gather(b.submit({"x": one}, 1), b.submit({"x": one}, 1))  # one batch: two callers active
        if waiting:  # stopped while a batch waits (up to the delay) for the second caller's next request
            b.submit({"x": one}, 1)
            await asyncio.to_thread(graph.running.clear)  # a loop turn: the batching task takes it and waits
        await b.stop()
        return weakref.ref(graph)

    gc.collect()
    gc.disable()
    try:
        graph = asyncio.run(main())
        assert graph() is None, [type(o).__name__ for o in gc.get_referrers(graph())]
    finally:
        gc.enable()
