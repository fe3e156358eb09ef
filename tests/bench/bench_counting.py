"""What counting an RPC (`Metrics.counted`) costs per call: `python -m tests.bench.bench_counting`.

Two figures:
- isolated: the counting wrapper around an empty async handler, against the bare handler, in one event loop
  (a stand-in context gives the wrapper the two calls it makes on a real one);
- end to end: sequential unary calls over loopback to a real grpc.aio server, not counted, counted by the
  handler wrapped once at registration (what the server does), and counted by a grpc.aio server interceptor
  (the other public way: the same wrapper, chosen per call), rounds alternated so all see the same machine
  load. Noisy on a busy machine; the isolated figure is the wrapper's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc
from grpc import aio

from tests.bench.report import markdown_table, write_section
from vaeserve.server.metrics import Metrics

METHOD = "/vae.v1.VaeService/Encode"


async def _echo(request: bytes, context: object) -> bytes:
    return request


def _identity(data: bytes) -> bytes:
    return data


HANDLER = grpc.unary_unary_rpc_method_handler(_echo, _identity, _identity)


class _Context:
    """The two ServicerContext calls the wrapper makes on a call that returns normally."""

    def code(self) -> None:
        return None

    def time_remaining(self) -> float:
        return 1.0


async def _isolated_ns(calls: int) -> tuple[float, float]:
    counted_handler = Metrics().counted("Encode", HANDLER)
    context = _Context()

    async def bare() -> None:
        await HANDLER.unary_unary(b"x", context)

    async def counted() -> None:
        await counted_handler.unary_unary(b"x", context)

    timings = {}
    for name, fn in (("bare", bare), ("counted", counted)) * 3:  # best of three each: the least disturbed run
        start = time.perf_counter_ns()
        for _ in range(calls):
            await fn()
        per_call = (time.perf_counter_ns() - start) / calls
        timings[name] = min(timings.get(name, per_call), per_call)
    return timings["bare"], timings["counted"]


class _CountingInterceptor(aio.ServerInterceptor):
    """Counting as an interceptor would do it: per call, find the method's counted handler (cached, the best
    case) behind the continuation's coroutine."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._counted: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        cached = self._counted.get(details.method)
        if cached is None or cached[0] is not handler:
            method = details.method.rsplit("/", 1)[-1]
            cached = self._counted[details.method] = (handler, self._metrics.counted(method, handler))
        return cached[1]


VARIANTS = ("not counted", "wrapped handler", "interceptor")


async def _loopback_us(calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    """{variant: (median us per call, median per-round difference to "not counted")}."""
    servers, channels, ports = [], [], []
    for variant in VARIANTS:
        interceptors = [_CountingInterceptor(Metrics())] if variant == "interceptor" else []
        server = aio.server(interceptors=interceptors)
        handler = Metrics().counted("Encode", HANDLER) if variant == "wrapped handler" else HANDLER
        server.add_registered_method_handlers("vae.v1.VaeService", {"Encode": handler})
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    try:
        for port in ports:
            channels.append(aio.insecure_channel(f"127.0.0.1:{port}"))
        stubs = [channel.unary_unary(METHOD) for channel in channels]
        for stub in stubs:  # connect and warm up
            for _ in range(200):
                await stub(b"x")
        per_call: list[list[float]] = [[] for _ in VARIANTS]
        for _ in range(rounds):
            for i, stub in enumerate(stubs):
                start = time.perf_counter()
                for _ in range(calls):
                    await stub(b"x")
                per_call[i].append((time.perf_counter() - start) / calls * 1e6)
        result = {}
        for variant, times in zip(VARIANTS, per_call, strict=True):
            differences = [t - base for base, t in zip(per_call[0], times, strict=True)]
            result[variant] = (statistics.median(times), statistics.median(differences))
        return result
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per isolated run (default: %(default)s)")
    parser.add_argument("--rpcs", type=int, default=500, help="RPCs per loopback round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=20, help="loopback rounds per variant (default: %(default)s)")
    args = parser.parse_args()

    bare_ns, counted_ns = asyncio.run(_isolated_ns(args.calls))
    loopback = asyncio.run(_loopback_us(args.rpcs, args.rounds))
    rows = [["isolated: handler path, per call", f"{bare_ns / 1000:.2f} us", f"{counted_ns / 1000:.2f} us", "-",
             f"{(counted_ns - bare_ns) / 1000:.2f} us", "-"],
            ["loopback unary RPC, sequential", *(f"{loopback[v][0]:.1f} us" for v in VARIANTS),
             f"{loopback['wrapped handler'][1]:.1f} us", f"{loopback['interceptor'][1]:.1f} us"]]  # fmt: skip
    header = ["measure", "not counted", "wrapped handler", "interceptor", "cost: wrapped", "cost: interceptor"]
    body = markdown_table(header, rows)
    body += (
        f"\n\nIsolated: {args.calls} calls, best of 3. Loopback: {args.rounds} alternated rounds of {args.rpcs} RPCs"
        " per variant, median per-call time, cost = median of the per-round differences to the uncounted server."
        "\nThe server counts with handlers wrapped once, when the servicer is registered (grpc's public handler"
        " constructors); an interceptor reaches the same wrapper through a coroutine and a lookup per call."
        "\nReproduce: `.venv/bin/python -m tests.bench.bench_counting`."
    )
    print(body)
    write_section("counting", "Cost of counting RPCs", body)


if __name__ == "__main__":
    main()
