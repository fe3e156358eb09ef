"""Counting RPCs (`Metrics.counting`) in a real grpc.aio server on loopback, with a probe service of known outcomes.

Every status a handler can end with goes through the real gRPC machinery: a return, `await context.abort(...)`,
`context.set_code(...)`, an unexpected exception, a client cancellation, a deadline that passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TypeVar

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.metrics.probe import SERVICE, call, probe_server
from vaeserve.server.metrics import Metrics

T = TypeVar("T")


async def eventually(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Server-side cancellation lands after the client already saw its status: wait for it, bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def requests(m: Metrics, method: str, code: str) -> float:
    return m.registry.get_sample_value("vaeserve_requests_total", {"method": method, "code": code}) or 0.0


def duration_count(m: Metrics, method: str) -> float:
    return m.registry.get_sample_value("vaeserve_request_duration_seconds_count", {"method": method}) or 0.0


def all_requests(m: Metrics) -> float:
    samples = (s for family in m.registry.collect() if family.name == "vaeserve_requests" for s in family.samples)
    return sum(s.value for s in samples if s.name == "vaeserve_requests_total")


def run(scenario: Callable[[], Coroutine[object, object, T]]) -> T:
    return asyncio.run(scenario())


@pytest.mark.parametrize("registered", [True, False], ids=["registered-methods", "generic-handler-only"])
def test_each_outcome_is_counted_once_with_its_status_code(registered: bool):
    m = Metrics()

    async def scenario() -> None:
        async with probe_server(m, registered=registered) as (_, channel):
            outcomes = {"Ok": 3, "Invalid": 2, "NotFound": 1, "Boom": 1}
            for method, n in outcomes.items():
                for _ in range(n):
                    await call(channel, method)

    run(scenario)
    assert requests(m, "Ok", "OK") == 3
    assert requests(m, "Invalid", "INVALID_ARGUMENT") == 2
    assert requests(m, "NotFound", "NOT_FOUND") == 1
    assert requests(m, "Boom", "UNKNOWN") == 1
    assert all_requests(m) == 7  # nothing counted twice or under another code
    for method, n in {"Ok": 3, "Invalid": 2, "NotFound": 1, "Boom": 1}.items():
        assert duration_count(m, method) == n
    assert m.registry.get_sample_value("vaeserve_inflight_requests") == 0


def test_client_sees_the_code_the_metric_records():
    m = Metrics()

    async def scenario() -> dict[str, grpc.StatusCode]:
        async with probe_server(m) as (_, channel):
            return {method: await call(channel, method) for method in ("Ok", "Invalid", "NotFound", "Boom")}

    seen = run(scenario)
    for method, code in seen.items():
        assert requests(m, method, code.name) == 1, (method, code)


def test_inflight_counts_running_calls_and_cancellation_is_counted():
    m = Metrics()

    async def scenario() -> None:
        async with probe_server(m) as (probe, channel):
            hanging = channel.unary_unary(f"/{SERVICE}/Hang")(b"x")
            await probe.started.wait()
            assert m.registry.get_sample_value("vaeserve_inflight_requests") == 1
            hanging.cancel()
            await eventually(lambda: requests(m, "Hang", "CANCELLED") == 1, "Hang counted as CANCELLED")
            assert m.registry.get_sample_value("vaeserve_inflight_requests") == 0

    run(scenario)
    assert all_requests(m) == 1


def test_deadline_passing_in_the_handler_is_counted_as_deadline_exceeded():
    m = Metrics()

    async def scenario() -> None:
        async with probe_server(m) as (_, channel):
            assert await call(channel, "Hang", timeout=0.2) == grpc.StatusCode.DEADLINE_EXCEEDED
            await eventually(lambda: requests(m, "Hang", "DEADLINE_EXCEEDED") == 1, "Hang counted")

    run(scenario)
    assert all_requests(m) == 1
    assert m.registry.get_sample_value("vaeserve_inflight_requests") == 0


def test_server_streams_are_counted_once_when_they_end():
    m = Metrics()

    async def scenario() -> None:
        async with probe_server(m) as (_, channel):
            chunks = [c async for c in channel.unary_stream(f"/{SERVICE}/Chunks")(b"x")]
            assert chunks == [b"x"] * 3
            with pytest.raises(aio.AioRpcError) as info:
                async for _ in channel.unary_stream(f"/{SERVICE}/ChunksThenAbort")(b"x"):
                    pass
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    run(scenario)
    assert requests(m, "Chunks", "OK") == 1
    assert requests(m, "ChunksThenAbort", "RESOURCE_EXHAUSTED") == 1
    assert all_requests(m) == 2
    assert m.registry.get_sample_value("vaeserve_inflight_requests") == 0


def test_health_checks_and_unknown_methods_are_not_counted():
    m = Metrics()

    async def scenario() -> None:
        async with probe_server(m) as (_, channel):
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert await call(channel, "NoSuchMethod") == grpc.StatusCode.UNIMPLEMENTED

    run(scenario)
    assert all_requests(m) == 0
    assert duration_count(m, "Check") == 0


def test_instances_do_not_share_counts():
    first, second = Metrics(), Metrics()

    async def scenario() -> None:
        async with probe_server(first) as (_, channel):
            await call(channel, "Ok")

    run(scenario)
    assert requests(first, "Ok", "OK") == 1
    assert requests(second, "Ok", "OK") == 0
