"""Dynamic batching for one graph: concurrent requests are merged into one onnxruntime run, results split back.

One task per graph takes whatever is queued when a batch is due (up to `max_rows`) and runs it; requests that
arrive while a batch runs form the next one, so a busy server fills its batches by itself. With a batch delay,
a batch that is not full may also wait (at most the delay) until as many requests are queued as the previous
batch merged: the callers known to be active. A lone client's batches merge one request, so it never waits.

Requests bigger than `max_rows` are split, and their rest goes back to the end of the queue so a big request
cannot starve small ones; a request's rows are only ever contiguous slices of its own array, so rows of
different requests never mix. The queue is bounded (`QueueFull` at once),
and a request whose deadline passed or whose call was cancelled while queued is dropped, never computed.

Where a batch runs: a small model's batch takes tens of microseconds, less than handing it to a thread and
back costs the event loop (a thread hop plus GIL hand-offs between the loop, gRPC's poller and the worker),
so a batch whose predicted run time is under `inline_budget_s` runs on the loop itself. The prediction is a
running mean of seconds per row; heavier batches, and every batch on CUDA (budget 0), go to the worker thread
so the loop keeps reading requests while onnxruntime (which releases the GIL) computes.
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

RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]


class BatchObserver(Protocol):
    """What the batcher reports (`metrics.GraphMetrics` implements it)."""

    def queue_depth(self, n: int) -> None: ...

    def batch(self, rows: int, inference_seconds: float, queue_waits: Sequence[float]) -> None: ...


class InferenceFailed(RequestError):
    """onnxruntime raised while running a batch: a server fault, reported to every request in it."""


@dataclass(eq=False)
class _Request:
    x: np.ndarray
    future: asyncio.Future
    deadline: float | None  # loop.time() after which the result is of no use
    enqueued: float  # time.perf_counter() when submitted
    taken: int = 0  # rows already put into a batch
    chunks: list[list[np.ndarray]] = field(default_factory=list)  # per batch: one slice per output


class Batcher:
    """Queue + batching task for one graph; `await submit(x, timeout)` returns the graph's outputs for x."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        observer: BatchObserver,
        max_rows: int = 64,
        max_delay_s: float = 0.0,
        max_queue: int = 1024,
        inline_budget_s: float = 0.0,
    ) -> None:
        self.name = name
        self.run = run
        self.observer = observer
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.inline_budget_s = inline_budget_s
        self._seconds_per_row = 0.0  # measured run time per row (running mean): predicts the next batch's
        # For batches over the inline budget: the loop keeps reading new requests while onnxruntime runs the
        # current batch in this thread, and those requests form the next batch.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"onnx-{name}")
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._active = 1  # requests the previous batch merged: how many callers are sending concurrently
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def submit(self, x: np.ndarray, timeout: float | None = None) -> asyncio.Future:
        """Queues x [N, ...]; the future resolves to the outputs for x's N rows, in x's order."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"the {self.name} queue is full ({self.max_queue} requests waiting): retry later")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        deadline = None if timeout is None else loop.time() + timeout
        self._queue.append(_Request(x, future, deadline, time.perf_counter()))
        self._queued_rows += len(x)
        self.observer.queue_depth(len(self._queue))
        self._wakeup.set()
        return future

    def _take(self) -> tuple[list[tuple[_Request, int, int]], list[float]]:
        """Up to max_rows queued rows as (request, start, stop) slices, and the queue wait of newly started requests."""
        now, started = asyncio.get_running_loop().time(), time.perf_counter()
        batch: list[tuple[_Request, int, int]] = []
        waits: list[float] = []
        rows = 0
        while self._queue and rows < self.max_rows:
            req = self._queue.popleft()
            left = len(req.x) - req.taken
            if req.future.done():  # the call was cancelled while queued
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
            if req.taken < len(req.x):
                self._queue.append(req)  # the rest waits behind the requests already queued
        return batch, waits

    async def _wait_for_requests(self) -> None:
        """With a batch delay: wait until the active callers' requests or max_rows are queued, or the delay is over."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.max_delay_s
        while len(self._queue) < self._active and self._queued_rows < self.max_rows and (left := end - loop.time()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_delay_s > 0:
                await self._wait_for_requests()
            batch, waits = self._take()
            self.observer.queue_depth(len(self._queue))
            if not batch:
                continue
            self._active = len(batch)
            x = batch[0][0].x[batch[0][1] : batch[0][2]]
            if len(batch) > 1:
                x = np.concatenate([req.x[a:b] for req, a, b in batch])
            t0 = time.perf_counter()
            try:
                if self._seconds_per_row * len(x) < self.inline_budget_s:
                    outputs = self.run(x)
                else:
                    outputs = await loop.run_in_executor(self._executor, self.run, x)
            except Exception as exc:
                log.exception("%s: onnxruntime failed on a batch of %d rows", self.name, len(x))
                for req, _, _ in batch:
                    if not req.future.done():
                        req.future.set_exception(InferenceFailed(f"{self.name} inference failed: {exc}"))
                continue
            seconds = time.perf_counter() - t0
            per_row = seconds / len(x)
            # A running mean, seeded by the first run so that the prediction is not biased toward zero.
            self._seconds_per_row = 0.9 * self._seconds_per_row + 0.1 * per_row if self._seconds_per_row else per_row
            self.observer.batch(len(x), seconds, waits)
            offset = 0
            for req, a, b in batch:
                n = b - a
                req.chunks.append([out[offset : offset + n] for out in outputs])
                offset += n
                if b == len(req.x) and not req.future.done():
                    chunks = req.chunks
                    req.future.set_result(
                        chunks[0] if len(chunks) == 1 else [np.concatenate(c) for c in zip(*chunks, strict=True)]
                    )
