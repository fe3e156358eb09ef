"""Which calls the server's own services take: every call while serving; none once draining (UNAVAILABLE, so
clients retry another replica: sent once the server has stopped taking calls, so the retry does go elsewhere, or
just before the caller's deadline, so a refusal is never a DEADLINE_EXCEEDED);
and none beyond what the server can serve within --max-wait-ms (RESOURCE_EXHAUSTED at once, the load shed on
arrival rather than queued without bound).

Two measures of "what the server can serve", and a call must pass both:

- Calls. Little's law: a call admitted behind `inflight` others waits about inflight / rate, where rate is the
  calls per second the server has been completing; so at most rate * max_wait calls are admitted at once, never
  fewer than `floor` (a cold or idle server has no rate yet) and never more than `ceiling`
  (--max-concurrent-rpcs). The rate is re-measured every RATE_INTERVAL_S while calls complete, so the limit
  follows the load and the model. This is what bounds many small calls, whose cost is the Python gRPC layer.
- Work. Calls differ in size by a factor of millions (Encode(1) is one encoder row; Score(4096, K=1000) is four
  million decoder rows), so each call is also charged its rows on each graph it runs (`work`, read from the
  request before anything is computed), at the seconds per row its graph took at warm-up. A call of at most one
  batch (--max-batch-size rows) on a graph waits about a batch per call ahead of it, however big those are (the
  batcher takes a big call's rows a batch at a time and puts its rest back behind the queue), which the call
  limit bounds. A bigger call holds the graph for many batches, so it is admitted only while the work already
  in flight on that graph is predicted to take at most --max-wait-ms: an idle graph takes any valid call,
  however large, but a second huge Score is refused while the first runs, and small calls still get their turn.

What this cannot see: the aio server picks one new call up per event loop turn, so tiny calls arriving faster
than that wait inside gRPC's core before any handler runs. There they wait at most their deadline
(DEADLINE_EXCEEDED), never a bare CANCELLED (config.grpc_options raises the core's own limit); the cure for
that regime is more event loops (--reuse-port, replicas), not refusing calls the loop never reaches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from .errors import Overloaded, ShuttingDown

RATE_INTERVAL_S = 0.25
RATE_SMOOTHING = 0.5  # weight of the newest interval's rate in the running estimate
QUIET_POLL_S = 0.01
HOLD_SHARE = 0.9  # a held refusal goes out after this share of the time its caller's deadline leaves: the rest
# covers a busy event loop and the way back, so the caller reads UNAVAILABLE, never DEADLINE_EXCEEDED


Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]  # a servicer's method: parsed request -> reply
Work = Callable[[Any], Mapping[str, int]]  # a request -> the rows it will run on each graph, by graph name


class Admission:
    def __init__(
        self, max_wait_s: float, floor: int, ceiling: int, batch_rows: int, row_seconds: Mapping[str, float]
    ) -> None:
        """batch_rows: the most rows of a batch; row_seconds: each graph's predicted seconds per row (warm-up)."""
        self.max_wait_s = max_wait_s
        self.batch_rows = batch_rows
        self.row_seconds = dict(row_seconds)
        self.rows = dict.fromkeys(row_seconds, 0)  # rows of the calls in flight, per graph: integers, so exact
        self.floor, self.ceiling = floor, ceiling
        self.limit = floor
        self.inflight = 0  # admitted calls not yet answered: computing, or gRPC still writing their responses
        self.rate = 0.0  # calls completed per second, smoothed
        self.draining = False
        self._completed = 0
        self._last_arrival = 0.0  # time.monotonic() when a call last arrived, admitted or not
        self._closed = asyncio.Event()  # set once the server takes no new calls: refusals held until then go out
        self._held = 0  # refusals waiting for _closed
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._measure(), name="admission-rate")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def drain(self) -> None:
        """From now on every new call is refused with UNAVAILABLE, held until `closed()`: a client told at once
        would retry at once, and calls would never stop arriving (up to `ceiling` held; more are told at once)."""
        self.draining = True
        self._last_arrival = time.monotonic()

    def closed(self) -> None:
        """The server takes no new calls (GOAWAY sent): the held refusals go out, and clients retry elsewhere."""
        self._closed.set()

    async def settled(self, quiet_s: float, timeout: float) -> bool:
        """Waits (at most `timeout` s) until no call has arrived for `quiet_s`: none is then left waiting inside
        gRPC's core, where closing the server would cancel it (a bare CANCELLED) instead of refusing it. Whether
        that happened."""
        return await _polled(lambda: time.monotonic() - self._last_arrival >= quiet_s, timeout)

    async def answered(self, timeout: float) -> bool:
        """Waits (at most `timeout` s) until every admitted call has been answered, its response handed to the
        kernel: only then may the server send GOAWAY (see serve.py). Whether that happened."""
        return await _polled(lambda: not self.inflight, timeout)

    async def _held_back(self, context: grpc.aio.ServicerContext) -> None:
        """A refusal while draining waits until the server takes no new calls, or until just before its caller's
        deadline (up to `ceiling` of them wait)."""
        self._last_arrival = time.monotonic()
        if self._held < self.ceiling:
            left = context.time_remaining()
            self._held += 1
            try:
                await asyncio.wait_for(self._closed.wait(), None if left is None else left * HOLD_SHARE)
            except asyncio.TimeoutError:  # the caller's deadline is near: refuse now
                pass
            finally:
                self._held -= 1

    def _answered(self, _rpc: asyncio.Task) -> None:
        """An admitted call's RPC has ended: its response is written (or it was cancelled)."""
        self.inflight -= 1
        self._completed += 1

    def admitting(self, method: Method, work: Work) -> Method:
        """`method` (a servicer's, taking the parsed request) behind admission: refused while draining, over the
        call limit, or, for a call of more than a batch on a graph (`work`), while that graph has more work in
        flight than it can do within --max-wait-ms."""

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await self._held_back(context)
                raise ShuttingDown("the server is shutting down: retry the call")
            if self.inflight >= self.limit:
                raise Overloaded(self._overloaded())
            rows = work(request)
            for graph, n in rows.items():
                if n > self.batch_rows and self._seconds(graph) > self.max_wait_s:
                    raise Overloaded(self._busy(graph))
            self.inflight += 1
            # Counted until the task serving the RPC (grpc.aio runs the handler in it) ends: after the response is
            # written, not when `method` returns. Not context.add_done_callback: the context would keep the callback,
            # which holds the context, a cycle per call left to the garbage collector (default-model Encode(1) at 32
            # clients, 7 alternated rounds against the parent commit: 442 vs 344 us of server CPU per call; this
            # way, 268 vs 317).
            asyncio.current_task().add_done_callback(self._answered)
            for graph, n in rows.items():
                self.rows[graph] += n
            try:
                return await method(request, context)
            finally:
                for graph, n in rows.items():
                    self.rows[graph] -= n

        return admitted

    def _seconds(self, graph: str) -> float:
        """The predicted compute time of the rows in flight on `graph`."""
        return self.rows[graph] * self.row_seconds[graph]

    def _busy(self, graph: str) -> str:
        return (f"server overloaded: the {graph}'s calls in flight ({self.rows[graph]:,} rows) would take about "
                f"{self._seconds(graph) * 1e3:.0f} ms, more than --max-wait-ms {self.max_wait_s * 1e3:g}; retry "
                f"with backoff, or send smaller calls")  # fmt: skip

    def _overloaded(self) -> str:
        wait_ms = self.inflight / self.rate * 1e3 if self.rate else float("inf")
        return (f"server overloaded: {self.inflight} calls in flight would take about {wait_ms:.0f} ms, more than "
                f"--max-wait-ms {self.max_wait_s * 1e3:g}; retry with backoff")  # fmt: skip

    async def _measure(self) -> None:
        last, completed = time.monotonic(), self._completed
        while True:
            await asyncio.sleep(RATE_INTERVAL_S)
            now = time.monotonic()
            done = self._completed - completed
            if done:  # an idle interval says nothing about capacity: keep the last estimate
                rate = done / (now - last)
                self.rate = rate if not self.rate else RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * self.rate
                self.limit = max(self.floor, min(self.ceiling, int(self.rate * self.max_wait_s)))
            last, completed = now, self._completed


async def _polled(done: Callable[[], bool], timeout: float) -> bool:
    """Polls `done` every QUIET_POLL_S on the event loop until it holds (True) or `timeout` s have passed (False):
    the drain's conditions change with every call, where an event set by each call would cost the calls."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(QUIET_POLL_S)
    return True
