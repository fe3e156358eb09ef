"""The service boundary: a servicer's methods become gRPC method handlers, and request errors become statuses.

Handlers are built from the service's descriptor with grpc's public constructors, not the generated
`add_XServicer_to_server`, for two reasons: the request is parsed here, inside the handler, instead of by gRPC
before it, so a malformed message is an INVALID_ARGUMENT that names the message type, counted like any other
call, rather than gRPC's UNKNOWN with a traceback in the log per call; and admission then sees the parsed
request, so it can charge a call its work. Each method is built once, at registration, outside in:
`wrap` (counting, the token check) around the request's bytes, the parse, `admit` around the servicer's method.

Every service is registered as a generic handler only, never as "registered methods": grpc.aio's server loop
keeps one pending request per registered method and waits on all of them (asyncio.wait) for every call it
accepts, so each registered method costs every call; with the 19 methods of our three services that was 6-9% of
the server's CPU per call (BENCHMARKS.md, "Design measurements"). A generic handler costs a call one dict lookup.

Below this module everything raises `RequestError`s; this is the one place they become a call's status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from .errors import RequestError

log = logging.getLogger(__name__)

Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[message.Message]]
Method = Callable[[message.Message, grpc.aio.ServicerContext], Awaitable[message.Message]]
Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
Admit = Callable[[str, Method], Method]
MALFORMED_LOG_INTERVAL_S = 60.0  # at most one warning line per interval however many malformed calls arrive


def add_service(
    server: grpc.aio.Server, service: ServiceDescriptor, servicer: object, wrap: Wrap, admit: Admit
) -> None:
    """Registers `servicer`'s methods (named as in the .proto, each `async (request, context) -> response`)."""
    handlers = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        behavior = _answering(admit(method.name, getattr(servicer, method.name)), request_type)
        # No deserializer: the handler gets the request's bytes and parses them itself (_answering).
        handler = grpc.unary_unary_rpc_method_handler(behavior, None, response_type.SerializeToString)
        handlers[method.name] = wrap(method.name, handler)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class GenericOnly:
    """`server` as a generated `add_XServicer_to_server` sees it: its methods become generic handlers only (the
    generated code registers them both ways; see the module's docstring for why not as registered methods)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Nothing: the same handlers came as a generic handler."""


def _gone(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return context.done() or (remaining is not None and remaining <= 0)


class _MalformedLog:
    """One warning line per interval, with the count since the last one: a client sending garbage in a loop
    must not be able to fill the disk."""

    def __init__(self) -> None:
        self.count = 0
        self.next_at = 0.0

    def note(self, type_name: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now >= self.next_at:
            log.warning("%d malformed request message(s) refused, the last a %s", self.count, type_name)
            self.count, self.next_at = 0, now + MALFORMED_LOG_INTERVAL_S


_malformed = _MalformedLog()


def _answering(method: Method, request_type: type[message.Message]) -> Behavior:
    """Parses the request, runs `method`, and turns a RequestError (or a parse failure) into the call's status."""
    type_name = request_type.DESCRIPTOR.full_name

    async def behavior(data: bytes, context: grpc.aio.ServicerContext) -> message.Message:
        try:
            request = request_type.FromString(data)
        except message.DecodeError:
            _malformed.note(type_name)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {type_name} message")
        try:
            return await method(request, context)
        except RequestError as exc:
            if _gone(context):  # cancelled by the client, or past its deadline: nobody is waiting for a status
                raise asyncio.CancelledError from exc
            try:
                await context.abort(exc.code, str(exc))
            except grpc.aio.AbortError:
                raise
            except Exception as failed:  # the call ended between the check and the abort: the same as above
                if not _gone(context):
                    raise
                raise asyncio.CancelledError from failed

    return behavior
