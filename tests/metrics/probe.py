"""A probe gRPC service of known outcomes on a real grpc.aio server on loopback, counted and intercepted as asked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2_grpc

from vaeserve.server.metrics import Metrics

SERVICE = "test.v1.Probe"


def _identity(data: bytes) -> bytes:
    return data


class Probe:
    """Handlers whose outcome is known in advance; `started` is set when `Hang` begins."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def ok(self, request: bytes, context: aio.ServicerContext) -> bytes:
        return request

    async def invalid(self, request: bytes, context: aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "images: expected shape [N,1,8,8]")

    async def not_found(self, request: bytes, context: aio.ServicerContext) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such model")
        return b""

    async def boom(self, request: bytes, context: aio.ServicerContext) -> bytes:
        raise RuntimeError("a bug")

    async def hang(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self.started.set()
        await asyncio.Event().wait()  # until cancelled
        return request

    async def chunks(self, request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield request

    async def chunks_then_abort(self, request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        yield request
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many chunks")

    def add_to(self, server: aio.Server, metrics: Metrics | None, registered: bool) -> None:
        """Like generated `add_XServicer_to_server`: a generic handler, and (`registered`) the registered methods
        gRPC looks up first; each handler counted by `metrics` when given, as the server registers its own."""
        unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        methods = {
            "Ok": unary(self.ok, _identity, _identity),
            "Invalid": unary(self.invalid, _identity, _identity),
            "NotFound": unary(self.not_found, _identity, _identity),
            "Boom": unary(self.boom, _identity, _identity),
            "Hang": unary(self.hang, _identity, _identity),
            "Chunks": stream(self.chunks, _identity, _identity),
            "ChunksThenAbort": stream(self.chunks_then_abort, _identity, _identity),
        }
        if metrics is not None:
            methods = {name: metrics.counted(name, handler) for name, handler in methods.items()}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, methods)])
        if registered:
            server.add_registered_method_handlers(SERVICE, methods)


@contextlib.asynccontextmanager
async def probe_server(
    metrics: Metrics | None, *interceptors: aio.ServerInterceptor, registered: bool = True
) -> AsyncIterator[tuple[Probe, aio.Channel]]:
    """The probe (counted by `metrics` when given) and health services behind `interceptors`, and a channel."""
    probe = Probe()
    server = aio.server(interceptors=interceptors)
    probe.add_to(server, metrics, registered)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield probe, channel
    finally:
        await server.stop(None)


async def call(
    channel: aio.Channel, method: str, timeout: float | None = None, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    try:
        await channel.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=timeout, metadata=metadata)
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
