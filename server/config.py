"""`vaeserve serve`'s settings: one dataclass whose defaults the CLI shows, checked before anything starts.

Imports nothing heavy, so `vaeserve --help` stays instant and the CLI reads its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vaeserve.errors import VaeserveError
from vaeserve.repository import VARIANTS

MB = 1 << 20
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ServeConfig:
    repo: Path = Path("models")
    name: str = "vae"
    version: str = "latest"
    # Which graph pair of the version to serve: the fp32 export, or a variant `vaeserve export --variants` built.
    variant: str = "plain"
    host: str = "127.0.0.1"
    port: int = 50051
    # Several processes on one port, the kernel spreading connections over them (SO_REUSEPORT): for machines
    # with cores to spare beyond one process's event loop; off, a port already in use is an error.
    reuse_port: bool = False
    metrics_port: int = 8000
    device: str = "auto"
    # 1024 rows: a Sample(1024) is one run, not 16; heavy batches leave the loop for the worker thread anyway.
    max_batch_size: int = 1024
    # Adaptive, not a fixed window: only a batch whose previous one merged several callers waits, and only
    # until that many requests are queued. Larger batches mean fewer wake-ups per call for the Python gRPC
    # layer; longer delays gained nothing and cost p99, and a lone client never waits (BENCHMARKS.md, "Design
    # measurements").
    max_batch_delay_ms: float = 3.0
    max_queue: int = 1024
    # Batches predicted (from warm-up timings) to run within this run on the event loop (CPU only): batcher.py.
    inline_budget_us: float = 200.0
    max_num_samples: int = 4096
    # 2: heavy batches run faster and small calls are no slower, since idle pool threads sleep except during the
    # longest batches (runtime.CpuSession; BENCHMARKS.md, "Design measurements"). More only pays for heavy batches.
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    max_concurrent_rpcs: int = 1024
    max_message_mb: int = 64
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 30.0
    grace_period: float = 10.0
    otlp_endpoint: str = ""  # OpenTelemetry collector; "" disables tracing
    # uvloop where installed (the serve extra does, except on Windows): less server CPU per call than asyncio's
    # loop (BENCHMARKS.md, "Design measurements").
    event_loop: str = "auto"

    def check(self) -> None:
        """Flag values that cannot work, each named by its flag."""
        positive = ("max_batch_size", "max_queue", "max_num_samples", "intra_op_threads", "inter_op_threads",
                    "max_message_mb")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise VaeserveError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(self, name)}")
        for name in (
            "max_batch_delay_ms",
            "inline_budget_us",
            "max_connection_age_s",
            "max_connection_age_grace_s",
            "grace_period",
        ):
            if not getattr(self, name) >= 0:
                raise VaeserveError(f"--{name.replace('_', '-')}: expected >= 0, got {getattr(self, name)}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise VaeserveError(f"--{name.replace('_', '-')}: expected 0..65535, got {getattr(self, name)}")
        if self.variant not in VARIANTS:
            raise VaeserveError(f"--variant: expected one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise VaeserveError(f"--event-loop: expected one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        if self.max_concurrent_rpcs < self.max_batch_size:
            # Fewer admitted calls than batch rows and no batch of single-row requests could ever fill.
            raise VaeserveError(
                f"--max-concurrent-rpcs: expected >= --max-batch-size ({self.max_batch_size}), "
                f"got {self.max_concurrent_rpcs}"
            )

    def grpc_options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", self.max_message_mb * MB),
            ("grpc.max_send_message_length", self.max_message_mb * MB),
            ("grpc.so_reuseport", int(self.reuse_port)),
        ]
        if self.max_connection_age_s > 0:
            # Clients reconnect periodically, so a scaled-out Deployment rebalances long-lived HTTP/2 connections.
            options += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_s * 1000)),
            ]
        return options

