"""The harness's own guarantees that other tests rely on."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable

import grpc

from tests.harness import Outcome, Tally, at_once, closed_loop, closed_loops, free_ports


def test_free_ports_are_distinct_free_and_avoid_the_taken_ones() -> None:
    taken = free_ports(1)
    ports = free_ports(64, taken=taken)
    assert len(set(ports)) == 64 and taken[0] not in ports
    for port in ports:  # each one can be listened on now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


async def _with_server(body: Callable[[str], Awaitable[object]]) -> object:
    """A real gRPC server on loopback whose raw method /t/Echo answers its request and refuses b"busy" with
    RESOURCE_EXHAUSTED, for `body(target)`."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"busy":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy: retry later")
        return request

    handler = grpc.method_handlers_generic_handler("t", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server(handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await body(f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


def test_calls_are_counted_by_how_they_end() -> None:
    async def body(target: str) -> tuple[list[Outcome], Tally, list[int]]:
        outcomes = await at_once(target, [("/t/Echo", b"hi"), ("/t/Echo", b"busy"), ("/t/Nothing", b"")], 10)
        tally, waits = Tally(), []

        def backoff(refusals: int) -> float:
            waits.append(refusals)
            return 0.0

        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary("/t/Echo")
            await closed_loop(call, b"busy", tally.add, until=math.inf, timeout=10, max_calls=3, backoff=backoff)
            await closed_loop(call, b"ok", tally.add, until=math.inf, timeout=10, max_calls=2)
            await closed_loop(call, b"ok", tally.add, until=0.0, timeout=10)  # already past: no call
        return outcomes, tally, waits

    outcomes, tally, waits = asyncio.run(_with_server(body))
    assert [o.code for o in outcomes] == [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                          grpc.StatusCode.UNIMPLEMENTED]  # fmt: skip
    assert outcomes[0].reply == b"hi" and outcomes[1].details == "busy: retry later" and outcomes[0].ms > 0
    assert tally.statuses == {"RESOURCE_EXHAUSTED": 3, "OK": 2}
    assert len(tally.latencies_ms) == 2 and tally.details == {"RESOURCE_EXHAUSTED": "busy: retry later"}
    assert waits == [1, 2, 3]  # the n-th refusal in a row


def test_closed_loops_run_each_client_to_its_count() -> None:
    def body(target: str) -> Awaitable[Tally]:
        return closed_loops(target, "/t/Echo", b"ok", 4, seconds=60, timeout=10, max_calls=3)

    tally = asyncio.run(_with_server(body))
    assert tally.statuses == {"OK": 12} and len(tally.latencies_ms) == 12
