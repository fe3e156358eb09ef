"""Dynamic batching for one graph: concurrent requests are merged into one onnxruntime run, results split back.

What a batcher runs is described by a `graphs.GraphSpec`: the named inputs a request gives, the outputs it gets
back, the value checks and the computation. A request is bytes: the rows of each input as float32 C-order
bytes (or, for image inputs a request marks `uint8_in`, one byte a value meaning byte / 255), and its result is
bytes: the rows of each output, by name (as bytes round(value * 255) for outputs it marks `uint8_out`). The
batch is where numpy works, once per batch: it joins the requests' bytes into one array per input, checks the
values (request by request only if the batch fails), computes and turns each output into bytes once (per type
asked for), which are then sliced per request. With a small model a call's cost is the Python around it, so
numpy once per batch instead of per call saves server CPU per call (180 -> 160 us for Encode(1) at 32 clients:
BENCHMARKS.md, "Design measurements").

One task per graph takes whatever is queued when a batch is due (up to `max_rows`) and runs it; requests that
arrive while a batch runs form the next one, so a busy server fills its batches by itself. With a batch delay,
a batch that is not full may also wait (at most the delay) until as many requests are queued as the previous
batch merged: the callers known to be active. A lone client's batches merge one request, so it never waits.

Requests bigger than `max_rows` are split, and their rest goes back to the end of the queue so a big request
cannot starve small ones; a request's rows are only ever contiguous slices of its own data, so rows of
different requests never mix. The queue is bounded (`QueueFull` at once), and a request whose deadline passed
or whose call was cancelled while queued is dropped, never computed.

Where a batch runs: a small model's batch takes tens of microseconds, less than handing it to a thread and
back costs the event loop (a thread hop plus GIL hand-offs between the loop, gRPC's poller and the worker),
so a batch of at most `inline_rows` rows (those predicted to run within a budget: runtime.Session) runs on
the loop itself. Heavier batches, and every batch on CUDA (`inline_rows` 0), go to the worker thread so the
loop keeps reading requests while onnxruntime (which releases the GIL) computes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .errors import DeadlineExpired, QueueFull, RequestError
from .graphs import GraphSpec, RunFn

log = logging.getLogger(__name__)

FLOAT32 = np.dtype("<f4")
UINT8 = np.dtype("u1")
NONE: frozenset[str] = frozenset()


class Runner(Protocol):
    """What runs a batch's graph (runtime.Session): `run` on the event loop, `run_on_worker` on the worker."""

    def run(self, x: np.ndarray) -> Sequence[np.ndarray]: ...

    def run_on_worker(self, x: np.ndarray) -> Sequence[np.ndarray]: ...


class BatchObserver(Protocol):
    """What the batcher reports (`metrics.GraphMetrics` implements it)."""

    def watch_queue(self, length: Callable[[], int]) -> None: ...

    def unwatch_queue(self, length: Callable[[], int]) -> None: ...

    def batch(self, rows: int, inference_seconds: float, queue_waits: Sequence[float]) -> None: ...


class InferenceFailed(RequestError):
    """onnxruntime raised while running a batch: a server fault, reported to every request in it."""


@dataclass(eq=False)
class _Request:
    inputs: Sequence[bytes]  # per input of the spec, in order: the request's rows
    uint8_in: frozenset[str]  # inputs given as bytes of uint8 (images / 255), not float32
    uint8_out: frozenset[str]  # outputs wanted as bytes of round(value * 255)
    rows: int
    future: asyncio.Future
    deadline: float | None  # loop.time() after which the result is of no use
    enqueued: float  # time.perf_counter() when submitted
    taken: int = 0  # rows already put into a batch
    chunks: list[list[bytes]] = field(default_factory=list)  # per batch: one slice per output


Slice = tuple[_Request, int, int]  # a request's rows [start, stop) in a batch


class Batcher:
    """Queue + batching task for one graph; `await submit(inputs, rows, timeout)` returns the outputs' bytes."""

    def __init__(
        self,
        spec: GraphSpec,
        runner: Runner,
        observer: BatchObserver,
        max_rows: int = 64,
        max_delay_s: float = 0.0,
        max_queue: int = 1024,
        inline_rows: int = 0,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.runner = runner
        self.observer = observer
        self._input_names = spec.input_names
        self._input_shapes = [t.row_shape for t in spec.inputs]
        self._row_bytes = [FLOAT32.itemsize * math.prod(shape) for shape in self._input_shapes]
        self._output_names = spec.output_names
        self._output_shapes = [t.row_shape for t in spec.outputs]
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.inline_rows = inline_rows
        # For batches over inline_rows: the loop keeps reading new requests while onnxruntime runs the current
        # batch in this thread, and those requests form the next batch.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"onnx-{spec.name}")
        self._queue: deque[_Request] = deque()
        self._length = self._queue.__len__
        observer.watch_queue(self._length)
        self._queued_rows = 0
        self._active = 1  # requests the previous batch merged: how many callers are sending concurrently
        # Set by submit once `_wake_at` requests (or max_rows rows) are queued: the batching task wakes once per
        # batch, not once per request (each wake-up is a task step and a timer on the event loop).
        self._wakeup = asyncio.Event()
        self._wake_at = 1
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # In a thread: a batch still running there (the call that queued it gone) must not stall the event loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.observer.unwatch_queue(self._length)

    def submit(
        self,
        inputs: Mapping[str, bytes],
        rows: int,
        timeout: float | None = None,
        uint8_in: frozenset[str] = NONE,
        uint8_out: frozenset[str] = NONE,
    ) -> asyncio.Future:
        """Queues `rows` rows (per input of the spec, by name, their float32 bytes, or uint8 for those named in
        `uint8_in`; an optional input left out is zeros); the future resolves to {output name: bytes of those
        rows} (uint8 for those in `uint8_out`)."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the {self.name} queue is full ({self.max_queue} requests waiting): retry later")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        deadline = None if timeout is None else loop.time() + timeout
        ordered = [inputs[t.name] if t.name in inputs or not t.optional else bytes(rows * size)
                   for t, size in zip(self.spec.inputs, self._row_bytes, strict=True)]  # fmt: skip
        self._queue.append(_Request(ordered, uint8_in, uint8_out, rows, future, deadline, time.perf_counter()))
        self._queued_rows += rows
        if self._enough(self._wake_at):
            self._wakeup.set()
        return future

    def _enough(self, requests: int) -> bool:
        """Whether a batch of `requests` requests, or a full one (max_rows), is queued."""
        return len(self._queue) >= requests or self._queued_rows >= self.max_rows

    def _take(self) -> tuple[list[Slice], list[float]]:
        """Up to max_rows queued rows as (request, start, stop) slices, and the queue wait of newly started requests."""
        now, started = asyncio.get_running_loop().time(), time.perf_counter()
        batch: list[Slice] = []
        waits: list[float] = []
        rows = 0
        while self._queue and rows < self.max_rows:
            req = self._queue.popleft()
            left = req.rows - req.taken
            if req.future.done():  # the call was cancelled, or a part of it failed, while queued
                self._queued_rows -= left
                continue
            if req.deadline is not None and now >= req.deadline:
                self._queued_rows -= left
                req.future.set_exception(DeadlineExpired(f"the deadline passed while queued for the {self.name}"))
                continue
            n = min(left, self.max_rows - rows)
            if req.taken == 0:
                waits.append(started - req.enqueued)
            batch.append((req, req.taken, req.taken + n))
            req.taken += n
            rows += n
            self._queued_rows -= n
            if req.taken < req.rows:
                self._queue.append(req)  # the rest waits behind the requests already queued
        return batch, waits

    def _inputs(self, batch: Sequence[Slice]) -> dict[str, np.ndarray]:
        """The inputs of `batch` by name, one float32 array each; no copy for a batch of one whole float32 request."""
        arrays = {}
        for i, name in enumerate(self._input_names):
            shape = self._input_shapes[i]
            if any(name in req.uint8_in for req, _, _ in batch):  # converted once per batch, part by part
                values = math.prod(shape)
                parts = [_from_uint8(req.inputs[i][a * values : b * values])
                         if name in req.uint8_in else
                         np.frombuffer(req.inputs[i][a * 4 * values : b * 4 * values], FLOAT32)
                         for req, a, b in batch]  # fmt: skip
                arrays[name] = (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(-1, *shape)
                continue
            size = self._row_bytes[i]
            # A whole-request slice of bytes is the bytes object itself: only merged batches copy (once, in join).
            parts = [req.inputs[i][a * size : b * size] for req, a, b in batch]
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            arrays[name] = np.frombuffer(data, FLOAT32).reshape(-1, *shape)
        return arrays

    @staticmethod
    def _passing(batch: list[Slice], check: Callable[[object], None], whole: object, part: Callable[[int], object]):
        """The slices whose values pass `check`; the others' requests fail with its error. One check of the
        whole batch first: each slice's values (`part(i)` for batch[i]) are checked alone only when it fails."""
        try:
            check(whole)
            return batch
        except RequestError:
            pass
        good = []
        for i, item in enumerate(batch):
            try:
                check(part(i))
                good.append(item)
            except RequestError as exc:
                if not item[0].future.done():
                    item[0].future.set_exception(exc)
        return good

    def _compute(self, rows: int, inputs: Mapping[str, np.ndarray], run: RunFn) -> list[np.ndarray]:
        """The spec's outputs for a batch of `rows` rows, each checked to hold one row of its declared shape per
        batch row: a graph that returned other rows must not have its bytes sliced out to callers."""
        outputs = list(self.spec.compute(run, inputs))
        if len(outputs) != len(self._output_names):
            raise InferenceFailed(f"{self.name} gave {len(outputs)} outputs, expected {len(self._output_names)}")
        for name, shape, out in zip(self._output_names, self._output_shapes, outputs, strict=True):
            if out.shape != (rows, *shape) or out.dtype != FLOAT32:
                raise InferenceFailed(
                    f"{self.name} output {name} came out {out.dtype} {list(out.shape)} for a batch of {rows} rows, "
                    f"expected float32 {[rows, *shape]}"
                )
        return outputs

    async def _wait_for_requests(self) -> None:
        """With a batch delay: wait until the active callers' requests or max_rows are queued, or the delay is over."""
        if self._enough(self._active):
            return
        loop = asyncio.get_running_loop()
        self._wakeup.clear()
        self._wake_at = self._active
        # A timer that sets the same event: asyncio.wait_for would make a task per wait.
        timer = loop.call_at(loop.time() + self.max_delay_s, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()
            self._wake_at = 1

    async def _loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if self.max_delay_s > 0:
                    await self._wait_for_requests()
                batch, waits = self._take()
                if batch:
                    self._active = len(batch)
                    await self._run(batch, waits)
        except asyncio.CancelledError:
            # stop() cancels this task only to end it, so it ends normally here. A task left cancelled keeps its
            # CancelledError, whose traceback holds this frame and so this batcher and its runner (a model
            # version's sessions) in a reference cycle that only a full garbage collection frees: a retired
            # version's memory stayed taken into the next swap (BENCHMARKS.md, "Model versions going live while
            # serving", peak RSS).
            return

    async def _run(self, batch: list[Slice], waits: list[float]) -> None:
        """Checks, computes and answers one batch; every request in it ends with its rows or an error."""
        inputs = self._inputs(batch)
        if self.spec.check is not None:
            checked = self._passing(batch, self.spec.check, inputs, lambda i: self._inputs([batch[i]]))
            if not checked:
                return
            if len(checked) < len(batch):
                batch, inputs = checked, self._inputs(checked)
        rows = sum(b - a for _, a, b in batch)
        t0 = time.perf_counter()
        try:
            if rows <= self.inline_rows:
                outputs = self._compute(rows, inputs, self.runner.run)
            else:
                run = self.runner.run_on_worker
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._compute, rows, inputs, run
                )
        except Exception as exc:
            if isinstance(exc, InferenceFailed):
                log.error("%s", exc)
            else:
                log.exception("%s: onnxruntime failed on a batch of %d rows", self.name, rows)
                exc = InferenceFailed(f"{self.name} inference failed: {exc}")
            for req, _, _ in batch:
                if not req.future.done():
                    req.future.set_exception(exc)
            return
        self.observer.batch(rows, time.perf_counter() - t0, waits)
        if self.spec.check_outputs is not None:
            starts = list(itertools.accumulate((b - a for _, a, b in batch), initial=0))

            def rows_of(i: int) -> list[np.ndarray]:
                return [out[starts[i] : starts[i + 1]] for out in outputs]

            self._passing(batch, self.spec.check_outputs, outputs, rows_of)
        self._reply(batch, [_Encoded(out, rows, any(name in req.uint8_out for req, _, _ in batch))
                            for name, out in zip(self._output_names, outputs, strict=True)])  # fmt: skip

    def _reply(self, batch: Sequence[Slice], outputs: Sequence[_Encoded]) -> None:
        """Gives each request its rows of every output and completes finished requests; a request that already
        failed (an output check) is skipped, its rows keeping their place."""
        offset = 0
        for req, a, b in batch:
            end = offset + b - a
            if not req.future.done():
                # Slicing bytes copies only the slice; a batch of one whole request gets the bytes themselves.
                encoded = [out.uint8 if name in req.uint8_out else out.float32
                           for name, out in zip(self._output_names, outputs, strict=True)]  # fmt: skip
                req.chunks.append([data[offset * size : end * size] for data, size in encoded])
                if b == req.rows:
                    chunks = req.chunks
                    parts = chunks[0] if len(chunks) == 1 else [b"".join(c) for c in zip(*chunks, strict=True)]
                    req.future.set_result(dict(zip(self._output_names, parts, strict=True)))
            offset = end


class _Encoded:
    """One output of a batch as (bytes, bytes per row): float32, and uint8 (round(value * 255)) when asked for."""

    __slots__ = ("float32", "uint8")

    def __init__(self, out: np.ndarray, rows: int, uint8: bool) -> None:
        self.float32 = (out.tobytes(), out.nbytes // rows)
        self.uint8 = (_to_uint8(out).tobytes(), out.size // rows) if uint8 else (b"", 0)


def _from_uint8(data: bytes) -> np.ndarray:
    """uint8 bytes as float32 byte / 255, in one pass."""
    return np.divide(np.frombuffer(data, UINT8), np.float32(255), dtype=FLOAT32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as round(value * 255), anything outside clipped: in float32 and in place, a tenth of the
    time the obvious expression takes (which computes in float64)."""
    scaled = values * np.float32(255)
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(UINT8)
