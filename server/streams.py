"""The server's open-ended streams: the health service's Watch and reflection, which end only when their client
ends them. They end when the server closes instead (a drain then waits for calls, never for an idle stream), and
Watch streams, open to anyone without a token, are bounded in number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health

Handler = Callable[[Any, grpc.aio.ServicerContext], Any]  # a stream handler: an async generator or coroutine


class Streams:
    """Ends the streams it wraps once `close()` is called."""

    def __init__(self) -> None:
        self._closed: asyncio.Future | None = None

    def _closing(self) -> asyncio.Future:
        if self._closed is None:  # made on first use, on the server's event loop
            self._closed = asyncio.get_running_loop().create_future()
        return self._closed

    def close(self) -> None:
        if not self._closing().done():
            self._closed.set_result(None)

    def ending(self, behavior: Handler) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
        """`behavior` (a stream-response handler) as a coroutine handler whose stream ends, OK, on `close()`."""

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
            streaming = asyncio.ensure_future(_write_all(behavior(request, context), context))
            try:
                await asyncio.wait((streaming, self._closing()), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not streaming.done():
                    streaming.cancel()
                    await asyncio.gather(streaming, return_exceptions=True)
            if not streaming.cancelled():
                streaming.result()  # its abort or error is the call's

        return handler


async def _write_all(responses: Any, context: grpc.aio.ServicerContext) -> None:
    if hasattr(responses, "__aiter__"):
        async for response in responses:
            await context.write(response)
    else:  # a coroutine that writes its responses itself
        await responses


class BoundedHealth(health.aio.HealthServicer):
    """The standard health service, with at most `max_watches` Watch streams open (more: RESOURCE_EXHAUSTED, at
    once), each ending when the server closes. Check is unchanged."""

    def __init__(self, max_watches: int, streams: Streams) -> None:
        super().__init__()
        self.max_watches = max_watches
        self.watches = 0
        self._watch = streams.ending(super().Watch)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        if self.watches >= self.max_watches:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.watches} health Watch streams are open, as many as --max-health-watches "
                                f"allows: use Check, or retry later")  # fmt: skip
        self.watches += 1
        try:
            await self._watch(request, context)
        finally:
            self.watches -= 1
