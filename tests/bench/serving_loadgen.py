"""The serving benchmark's load generator: closed-loop gRPC clients at a fixed concurrency, in their own process.

Every server gets the same client: one pre-serialized request sent as raw bytes (no serializer on either
side), so client-side protobuf work is the same for vaeserve, the baselines and Triton. `concurrency`
coroutines on one asyncio loop each send the next call as soon as the previous one returns; calls that
finish inside the measured window count, after a warm-up. Prints one JSON object per concurrency.

    python -m tests.bench.serving_loadgen --target 127.0.0.1:50051 --method /vae.v1.VaeService/Encode \
        --request encode1.bin --concurrency 1 8 32 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from tests.harness import UNLIMITED_MESSAGES, Outcome, closed_loop  # the harness's clients: grpc only, no vaeserve


def group_cpu_seconds(pgids: list[int] | None) -> float | None:
    """User + system CPU seconds of the live processes in the process groups `pgids` (Linux /proc)."""
    if not pgids:
        return None
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process exited meanwhile
            continue
        if int(fields[2]) in pgids:  # fields after "(comm)": state ppid pgrp ... utime(12) stime(13)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def measure(
    channels: list[grpc.aio.Channel],
    method: str,
    request: bytes,
    concurrency: int,
    warmup: float,
    duration: float,
    server_pgids: list[int] | None = None,
) -> dict:
    calls = [channel.unary_unary(method) for channel in channels]  # no (de)serializers: bytes in, bytes out
    start = time.perf_counter() + warmup
    stop = start + duration
    latencies: list[float] = []
    cpu: list[float | None] = []

    async def cpu_at_window_edges() -> None:
        for edge in (start, stop):
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            cpu.append(group_cpu_seconds(server_pgids))

    errors: dict[str, int] = {}
    response_bytes = 0

    def record(outcome: Outcome) -> None:
        """Every refusal counts; an answer counts when it was sent and received inside the measured window."""
        nonlocal response_bytes
        if outcome.code != grpc.StatusCode.OK:
            key = f"{outcome.code.name}: {outcome.details}"
            errors[key] = errors.get(key, 0) + 1
        elif outcome.sent >= start and outcome.ended <= stop:
            latencies.append(outcome.ended - outcome.sent)
            response_bytes = len(outcome.reply)

    # Clients spread round-robin over the targets' channels.
    clients = (closed_loop(calls[i % len(calls)], request, record, stop, timeout=30) for i in range(concurrency))
    await asyncio.gather(cpu_at_window_edges(), *clients)
    ms = np.array(latencies) * 1e3 if latencies else np.zeros(1)
    server_cpu = None if not server_pgids else cpu[1] - cpu[0]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "rps": len(latencies) / duration,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        # Server CPU per call: the figure the shared 2-core machine's noise disturbs least.
        "server_cpu_us": server_cpu / len(latencies) * 1e6 if server_cpu is not None and latencies else None,
        "errors": errors,
        "response_bytes": response_bytes,
    }


def scrape(url: str | None) -> str | None:
    if not url:
        return None
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


async def run(args: argparse.Namespace) -> None:
    request = args.request.read_bytes()
    channels = [grpc.aio.insecure_channel(target, options=UNLIMITED_MESSAGES) for target in args.target]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        for concurrency in args.concurrency:
            before = scrape(args.metrics_url)
            point = await measure(
                channels, args.method, request, concurrency, args.warmup, args.duration, args.server_pgid
            )
            # The server's metrics before and after the point: the benchmark reads the batch sizes it formed.
            point["metrics_before"], point["metrics_after"] = before, scrape(args.metrics_url)
            print(json.dumps(point), flush=True)
    finally:
        for channel in channels:
            await channel.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", nargs="+", required=True, help="HOST:PORT of the server, or of each server process")
    p.add_argument("--method", required=True, help="full gRPC method, e.g. /vae.v1.VaeService/Encode")
    p.add_argument("--request", type=Path, required=True, help="file holding the serialized request")
    p.add_argument("--concurrency", type=int, nargs="+", required=True, help="calls in flight, one point each")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default: %(default)s)")
    p.add_argument("--server-pgid", type=int, nargs="+", help="process groups whose CPU to count (default: none)")
    p.add_argument("--metrics-url", help="Prometheus endpoint scraped before and after each point (default: none)")
    asyncio.run(run(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
