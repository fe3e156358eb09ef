"""`vaeserve serve`'s settings: one dataclass whose defaults the CLI shows, checked before anything starts.

Imports nothing heavy, so `vaeserve --help` stays instant and the CLI reads its defaults from here. Every
number has bounds (`BOUNDS`): a value outside them, NaN or infinite, is one error line naming its flag.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, fields
from pathlib import Path

from vaeserve.errors import VaeserveError
from vaeserve.repository import VARIANTS

from .policy import VersionPolicy

MB = 1 << 20
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
DEVICES = ("auto", "cpu", "cuda")  # onnxruntime's execution provider: runtime.open_session
MODEL_CONTROLS = ("none", "poll", "explicit")  # Triton's --model-control-mode names and meanings
CORE_PENDING_LIMIT = 1 << 16
ADMISSION_FLOOR = 64  # calls always admitted at once, whatever the measured rate (admission.py)
AUTO = "auto"


class DeviceError(VaeserveError):
    pass


def check_device(device: str) -> None:
    """--device's one check: the CLI (through ServeConfig.check) and runtime.open_session both refuse with it."""
    if device not in DEVICES:
        raise DeviceError(f"--device: expected one of {', '.join(DEVICES)}, got {device!r}")


@dataclass(frozen=True)
class Limits:
    """What one call may ask for: the servicers' bounds, and what GetModelInfo reports to clients."""

    rows: int  # samples, images or latents in one call (--max-num-samples)
    importance_samples: int  # Score's K per image (--max-importance-samples)
    interpolation_steps: int  # points on an Interpolate path (--max-num-samples: each is a decoded row)
    batch_rows: int  # rows in one onnxruntime run (--max-batch-size): also the size of Score's chunks


@dataclass(frozen=True)
class ServeConfig:
    repo: Path = Path("models")
    name: str = "vae"
    version: str = "latest"
    # Which versions are served at once (policy.py); --version N is the same as specific:N.
    version_policy: str = "latest:1"
    # none: the versions loaded at start-up are served until exit. poll: the repository is rescanned every
    # --poll-s (safe: export publishes a version by renaming a finished folder into place, so a scan never sees a
    # half-written export). explicit: OIP RepositoryModelLoad/Unload calls change what is served.
    model_control: str = "none"
    poll_s: float = 10.0
    # Tokens for the OIP repository calls (load, unload, index), apart from --auth-token-file's; without it those
    # calls are refused unless the server listens on loopback only.
    admin_token_file: str = ""
    # Which graph pair of the version to serve: the fp32 export, or a variant `vaeserve export --variants` built.
    variant: str = "plain"
    host: str = "127.0.0.1"
    port: int = 50051
    # Several processes on one port, the kernel spreading connections over them (SO_REUSEPORT): for machines
    # with cores to spare beyond one process's event loop; off, a port already in use is an error.
    reuse_port: bool = False
    metrics_port: int = 8000
    metrics_host: str = ""  # "": the gRPC --host. /metrics is unauthenticated: keep it off client networks.
    # kubelet's native gRPC probes speak no TLS: with TLS on, a plaintext port that serves grpc.health.v1 only.
    health_port: int = 0
    device: str = "auto"
    # The CUDA arena's ceiling: the VAE's weights are megabytes and a full batch's activations tens of megabytes,
    # so 2 GiB leaves ample room while one process cannot take a card that other pods share. 0: no limit.
    cuda_mem_limit_mb: int = 2048
    # 1024 rows: a Sample(1024) is one run, not 16; heavy batches leave the loop for the worker thread anyway.
    max_batch_size: int = 1024
    # Adaptive, not a fixed window: only a batch whose previous one merged several callers waits, and only
    # until that many requests are queued. Larger batches mean fewer wake-ups per call for the Python gRPC
    # layer; longer delays gained nothing and cost p99, and a lone client never waits (BENCHMARKS.md, "Design
    # measurements").
    max_batch_delay_ms: float = 3.0
    max_queue: int = 1024
    # Batches predicted (from warm-up timings) to run within this run on the event loop (CPU only): batcher.py.
    # auto: how long one batch may hold the event loop, or the round trip to the worker where longer (handoff.py).
    inline_budget_us: str = AUTO
    max_num_samples: int = 4096
    # Score's K: `vaeserve evaluate`'s default, the importance-weighted bound it reports.
    max_importance_samples: int = 1000
    # The worker session's threads, for heavy batches (batches on the event loop run on its thread alone).
    # 0: the fewest that run a full batch about as fast as any count up to the CPUs this process may use,
    # measured at warm-up (runtime.CpuSession).
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # Calls in flight at once, at most; admission.py admits fewer when the measured rate says they would wait
    # longer than max_wait_ms. Refused calls get RESOURCE_EXHAUSTED at once instead of queueing inside gRPC.
    max_concurrent_rpcs: int = 1024
    max_wait_ms: float = 100.0
    # 0: derived from the model, what its largest valid request or response needs (serve.message_limit), so
    # no caller can make the server read a message bigger than any call it serves.
    max_message_mb: float = 0.0
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 30.0
    grace_period: float = 10.0
    tls_cert: str = ""  # PEM certificate chain: the gRPC port serves TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed (mTLS)
    # One token per line; calls to the model's services need `authorization: Bearer TOKEN`. Re-read when the file
    # changes or on SIGHUP, so a rotated Kubernetes Secret takes effect without a restart.
    auth_token_file: str = ""
    reflection: bool = True  # gRPC server reflection (grpcurl, Postman): handy locally, off in a cluster
    # Health Watch streams need no token: each open one holds memory (about 23 KB), so their number is bounded.
    # grpc clients' own health checking opens one per connection; probes (kubelet) use Check.
    max_health_watches: int = 1024
    otlp_endpoint: str = ""  # OpenTelemetry collector; "" disables tracing
    # uvloop where installed (the serve extra does, except on Windows): less server CPU per call than asyncio's
    # loop (BENCHMARKS.md, "Design measurements").
    event_loop: str = "auto"

    def check(self) -> None:
        """Flag values that cannot work, each named by its flag."""
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if name in AUTO_NUMBERS:
                if value == AUTO:
                    continue
                value = _number(value)
                if not (math.isfinite(value) and low <= value <= high):
                    raise VaeserveError(f"{flag(name)}: expected auto or a number in [{low:g}, {high:g}], "
                                        f"got {getattr(self, name)!r}")  # fmt: skip
            if not (math.isfinite(value) and low <= value <= high):
                shown = int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else value
                raise VaeserveError(f"{flag(name)}: expected a number in [{low:g}, {high:g}], got {shown!r}")
        if self.variant not in VARIANTS:
            raise VaeserveError(f"--variant: expected one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise VaeserveError(f"--event-loop: expected one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        if self.model_control not in MODEL_CONTROLS:
            raise VaeserveError(
                f"--model-control: expected one of {', '.join(MODEL_CONTROLS)}, got {self.model_control!r}"
            )
        self.policy  # noqa: B018 (parses --version-policy and --version: a bad one is an error naming its flag)
        check_device(self.device)
        if self.max_concurrent_rpcs < self.max_batch_size:
            # Fewer admitted calls than batch rows and no batch of single-row requests could ever fill.
            raise VaeserveError(
                f"--max-concurrent-rpcs: expected >= --max-batch-size ({self.max_batch_size}), "
                f"got {self.max_concurrent_rpcs}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise VaeserveError("--tls-cert and --tls-key: give both (the certificate chain and its private key)")
        if self.tls_client_ca and not self.tls_cert:
            raise VaeserveError("--tls-client-ca: client certificates need TLS: give --tls-cert and --tls-key too")
        if self.health_port and self.health_port in (self.port, self.metrics_port):
            raise VaeserveError(f"--health-port: {self.health_port} is already --port or --metrics-port")

    @property
    def inline_budget_s(self) -> float | None:
        """--inline-budget-us in seconds; None for auto."""
        return None if self.inline_budget_us == AUTO else float(self.inline_budget_us) / 1e6

    @property
    def policy(self) -> VersionPolicy:
        """--version-policy, or specific:N for --version N (the two are exclusive)."""
        if self.version == "latest":
            return VersionPolicy.parse(self.version_policy)
        if not (self.version.isascii() and self.version.isdigit() and len(self.version) <= 19):
            raise VaeserveError(f"--version: expected a version number or latest, got {self.version[:64]!r}")
        if self.version_policy != ServeConfig.version_policy:
            raise VaeserveError("--version and --version-policy: give one (--version N is --version-policy specific:N)")
        return VersionPolicy.parse(f"specific:{int(self.version)}")

    @property
    def loopback_only(self) -> bool:
        """Whether --host is a loopback address: only processes on this machine can connect."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a name: only localhost is known to stay on this machine
            return self.host == "localhost"

    @property
    def limits(self) -> Limits:
        return Limits(rows=self.max_num_samples, importance_samples=self.max_importance_samples,
                      interpolation_steps=self.max_num_samples, batch_rows=self.max_batch_size)  # fmt: skip

    @property
    def admission_floor(self) -> int:
        return min(ADMISSION_FLOOR, self.max_concurrent_rpcs)

    def grpc_options(self, max_message_bytes: int) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", int(self.reuse_port)),
            # gRPC's core cancels calls waiting to be picked up by the event loop (randomly past 1,000 waiting, all past
            # 3,000) with a bare CANCELLED, nothing said. Past what one loop can pick up, calls wait here instead, as
            # long as their deadline allows (then DEADLINE_EXCEEDED); admission.py sheds what the server's own
            # queues cannot serve in time.
            ("grpc.server.max_pending_requests", CORE_PENDING_LIMIT),
            ("grpc.server.max_pending_requests_hard_limit", CORE_PENDING_LIMIT),
        ]
        if self.max_connection_age_s > 0:
            # Clients reconnect periodically, so a scaled-out Deployment rebalances long-lived HTTP/2 connections.
            options += [
                ("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_s * 1000)),
            ]
        return options


# Inclusive bounds of every numeric flag. The upper ones keep values inside what the parts below accept (gRPC's
# int32 byte and millisecond arguments, onnxruntime's thread pools) and far beyond any useful setting.
BOUNDS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "metrics_port": (0, 65535),
    "health_port": (0, 65535),
    "max_batch_size": (1, 65536),
    "max_batch_delay_ms": (0, 1000),
    "max_queue": (1, 1 << 20),
    "inline_budget_us": (0, 1e6),
    "max_num_samples": (1, 1 << 20),
    "max_importance_samples": (1, 100_000),
    "intra_op_threads": (0, 256),
    "cuda_mem_limit_mb": (0, 1 << 20),
    "inter_op_threads": (1, 256),
    "max_concurrent_rpcs": (1, 100_000),
    "max_wait_ms": (1, 60_000),
    "max_message_mb": (0, 2047),
    "max_connection_age_s": (0, 2_000_000),
    "max_connection_age_grace_s": (0, 2_000_000),
    "grace_period": (0, 3600),
    "max_health_watches": (1, 100_000),
    "poll_s": (0.1, 86_400),
}
AUTO_NUMBERS = {"inline_budget_us"}  # numbers that may also be `auto`
assert set(BOUNDS) <= {f.name for f in fields(ServeConfig)}


def _number(text: str | float) -> float:
    """A number flag given as text (NaN for garbage: out of every range)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def flag(name: str) -> str:
    """The command-line flag of a ServeConfig field."""
    return "--" + name.replace("_", "-")
