"""Which calls the server's own services take: every call while serving; none once draining (UNAVAILABLE, so
clients retry another replica: sent once the server has stopped taking calls, so the retry does go elsewhere);
and none beyond what the server can serve within --max-wait-ms (RESOURCE_EXHAUSTED at once, the load shed on
arrival rather than queued without bound).

How much is "what the server can serve": Little's law. A call admitted behind `inflight` others waits about
inflight / rate, where rate is the calls per second the server has been completing; so at most rate * max_wait
calls are admitted at once, never fewer than `floor` (a cold or idle server has no rate yet) and never more
than `ceiling` (--max-concurrent-rpcs). The rate is re-measured every RATE_INTERVAL_S while calls complete, so
the limit follows the load and the model.

What this cannot see: the aio server picks one new call up per event loop turn, so tiny calls arriving faster
than that wait inside gRPC's core before any handler runs. There they wait at most their deadline
(DEADLINE_EXCEEDED), never a bare CANCELLED (config.grpc_options raises the core's own limit); the cure for
that regime is more event loops (--reuse-port, replicas), not refusing calls the loop never reaches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

RATE_INTERVAL_S = 0.25
RATE_SMOOTHING = 0.5  # weight of the newest interval's rate in the running estimate
QUIET_POLL_S = 0.01


class Admission:
    def __init__(self, max_wait_s: float, floor: int, ceiling: int) -> None:
        self.max_wait_s = max_wait_s
        self.floor, self.ceiling = floor, ceiling
        self.limit = floor
        self.inflight = 0
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
        deadline = time.monotonic() + timeout
        while time.monotonic() - self._last_arrival < quiet_s:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(QUIET_POLL_S)
        return True

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        self._last_arrival = time.monotonic()
        if self._held < self.ceiling:
            self._held += 1
            try:
                await self._closed.wait()
            finally:
                self._held -= 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: retry the call")

    def admitting(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`behavior` (an async unary-unary method) behind admission: refused while draining or over the limit."""

        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.draining:
                await self._refuse(context)
            if self.inflight >= self.limit:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._overloaded())
            self.inflight += 1
            try:
                return await behavior(request, context)
            finally:
                self.inflight -= 1
                self._completed += 1

        return admitted

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
