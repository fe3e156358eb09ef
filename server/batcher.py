"""Dynamic batching for one graph: concurrent requests are merged into one onnxruntime run, results split back.

A request is bytes: the rows of each graph input as float32 C-order bytes, and its result is bytes: the rows
of each output. The batch is where numpy works, once per batch: it joins the requests' bytes into one array
per input, checks the values (`check`; request by request only if the batch fails), runs the graph and turns
each output into bytes once, which are then sliced per request. Inside a busy server every numpy call costs
several times its isolated timing, so a call that makes none is what keeps a small model's RPCs cheap
(measured, Encode(1) at 32 clients: 180 against 160 us of server CPU per call).

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
so a batch of at most `inline_rows` rows (those predicted to run within a budget: runtime.GraphSession) runs on
the loop itself. Heavier batches, and every batch on CUDA (`inline_rows` 0), go to the worker thread so the
loop keeps reading requests while onnxruntime (which releases the GIL) computes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .errors import DeadlineExpired, QueueFull, RequestError

log = logging.getLogger(__name__)

RunFn = Callable[..., Sequence[np.ndarray]]  # one array per graph input -> the graph's outputs, in order
CheckFn = Callable[[np.ndarray], None]  # raises a RequestError for bad values of the first input
FLOAT32 = np.dtype("<f4")


class BatchObserver(Protocol):
    """What the batcher reports (`metrics.GraphMetrics` implements it)."""

    def watch_queue(self, length: Callable[[], int]) -> None: ...

    def batch(self, rows: int, inference_seconds: float, queue_waits: Sequence[float]) -> None: ...


class InferenceFailed(RequestError):
    """onnxruntime raised while running a batch: a server fault, reported to every request in it."""


@dataclass(eq=False)
class _Request:
    inputs: Sequence[bytes]  # per graph input: the request's rows
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
        name: str,
        run: RunFn,
        observer: BatchObserver,
        input_shapes: Sequence[tuple[int, ...]],
        max_rows: int = 64,
        max_delay_s: float = 0.0,
        max_queue: int = 1024,
        inline_rows: int = 0,
        check: CheckFn | None = None,
        run_on_worker: RunFn | None = None,
    ) -> None:
        self.name = name
        self.run = run  # batches run on the event loop
        self.run_on_worker = run_on_worker or run  # batches handed to the worker thread
        self.observer = observer
        self.input_shapes = [tuple(shape) for shape in input_shapes]  # one row of each input
        self._row_bytes = [FLOAT32.itemsize * int(np.prod(shape)) for shape in self.input_shapes]
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.inline_rows = inline_rows
        self.check = check
        # For batches over inline_rows: the loop keeps reading new requests while onnxruntime runs the current
        # batch in this thread, and those requests form the next batch.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"onnx-{name}")
        self._queue: deque[_Request] = deque()
        observer.watch_queue(self._queue.__len__)
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
        self._executor.shutdown(wait=True)

    def submit(self, inputs: Sequence[bytes], rows: int, timeout: float | None = None) -> asyncio.Future:
        """Queues `rows` rows (per graph input, their float32 bytes); the future resolves to one bytes object
        per graph output holding the outputs for those rows, in order."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the {self.name} queue is full ({self.max_queue} requests waiting): retry later")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        deadline = None if timeout is None else loop.time() + timeout
        self._queue.append(_Request(inputs, rows, future, deadline, time.perf_counter()))
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

    def _input(self, batch: Sequence[Slice], i: int) -> np.ndarray:
        """Graph input i of `batch` as one array; no copy for a batch of one whole request."""
        size = self._row_bytes[i]
        # A whole-request slice of bytes is the bytes object itself: only merged batches copy (once, in join).
        parts = [req.inputs[i][a * size : b * size] for req, a, b in batch]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return np.frombuffer(data, FLOAT32).reshape(-1, *self.input_shapes[i])

    def _checked(self, batch: list[Slice], x: np.ndarray) -> list[Slice]:
        """The slices whose values pass `check`; the others' requests fail with its error. One check of the
        whole batch first: requests are checked one by one only when it fails."""
        if self.check is None:
            return batch
        try:
            self.check(x)
            return batch
        except RequestError:
            pass
        good = []
        for item in batch:
            try:
                self.check(self._input([item], 0))
                good.append(item)
            except RequestError as exc:
                if not item[0].future.done():
                    item[0].future.set_exception(exc)
        return good

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
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_delay_s > 0:
                await self._wait_for_requests()
            batch, waits = self._take()
            if not batch:
                continue
            self._active = len(batch)
            first = self._input(batch, 0)
            checked = self._checked(batch, first)
            if not checked:
                continue
            if len(checked) < len(batch):
                batch, first = checked, self._input(checked, 0)
            inputs = [first, *(self._input(batch, i) for i in range(1, len(self.input_shapes)))]
            rows = len(first)
            t0 = time.perf_counter()
            try:
                if rows <= self.inline_rows:
                    outputs = self.run(*inputs)
                else:
                    outputs = await loop.run_in_executor(self._executor, self.run_on_worker, *inputs)
            except Exception as exc:
                log.exception("%s: onnxruntime failed on a batch of %d rows", self.name, rows)
                for req, _, _ in batch:
                    if not req.future.done():
                        req.future.set_exception(InferenceFailed(f"{self.name} inference failed: {exc}"))
                continue
            self.observer.batch(rows, time.perf_counter() - t0, waits)
            self._reply(batch, [(out.tobytes(), out.nbytes // rows) for out in outputs])

    @staticmethod
    def _reply(batch: Sequence[Slice], outputs: Sequence[tuple[bytes, int]]) -> None:
        """Gives each request its rows of every output (bytes, and bytes per row); completes finished requests."""
        offset = 0
        for req, a, b in batch:
            end = offset + b - a
            # Slicing bytes copies only the slice; a batch of one whole request gets the bytes themselves.
            req.chunks.append([data[offset * size : end * size] for data, size in outputs])
            offset = end
            if b == req.rows and not req.future.done():
                chunks = req.chunks
                req.future.set_result(
                    chunks[0] if len(chunks) == 1 else [b"".join(c) for c in zip(*chunks, strict=True)]
                )
