"""Registers `vaeserve serve`.

Every `serve` flag can also be set by an environment variable, VAESERVE_<FLAG> (e.g. VAESERVE_PORT,
VAESERVE_MAX_BATCH_SIZE), which is how the Kubernetes manifests configure it; a flag on the command line wins.
Nothing heavy is imported here: grpc, onnxruntime and numpy load when the command runs.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from vaeserve.flags import add_flag
from vaeserve.repository import VARIANTS

from .config import DEVICES, EVENT_LOOPS, MODEL_CONTROLS, ServeConfig

# Every `serve` flag: ServeConfig field -> (help, extra argparse arguments). The default comes from ServeConfig.
SERVE_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "repo": ("model repository folder", {"type": Path}),
    "name": ("model name in the repository", {}),
    "version": ("model version number, or latest (a number N is --version-policy specific:N)", {}),
    "version_policy": ("versions served at once: latest:N (the N newest that load), all, or specific:1,3; calls "
                       "name one with model_version (0: the newest served)", {}),
    "model_control": ("how served versions change while serving: none (never), poll (rescan the repository every "
                      "--poll-s and on SIGHUP), explicit (OIP RepositoryModelLoad/Unload calls)",
                      {"choices": MODEL_CONTROLS}),
    "poll_s": ("seconds between repository scans under --model-control poll", {}),
    "admin_token_file": ("file of bearer tokens for the OIP repository calls (index, load, unload), one per line; "
                         "without it those calls are refused unless --host is loopback", {}),
    "variant": ("graph pair to serve: plain (fp32), or one `vaeserve export --variants` wrote (ort, int8: CPU; "
                "fp16: CUDA)", {"choices": VARIANTS}),
    "host": ("address to listen on (0.0.0.0 in a container)", {}),
    "port": ("gRPC port (0: any free port, logged)", {}),
    "reuse_port": ("let several serve processes share --port (SO_REUSEPORT; each needs its own --metrics-port). "
                   "The kernel gives each a share of the clients, so a process whose --tls-cert, --tls-client-ca "
                   "or --auth-token-file differ from those already on the port is refused; off: a port in use is "
                   "an error", {}),
    "metrics_port": ("Prometheus /metrics port (0: disabled); unauthenticated, keep it off client networks", {}),
    "metrics_host": ("address /metrics listens on (empty: --host)", {}),
    "health_port": ("plaintext port serving only the gRPC health service, for probes that speak no TLS "
                    "(0: none)", {}),
    # No argparse choices: a bad --device is refused by config.check_device, the one check and message.
    "device": (f"execution provider: {', '.join(DEVICES)} (auto: CUDA when usable, else CPU)", {}),
    "cuda_mem_limit_mb": ("most GPU memory the CUDA arena may hold, in MiB (0: no limit)", {}),
    "max_batch_size": ("most rows per onnxruntime run", {}),
    "max_batch_delay_ms": ("longest a batch that is not full may wait for the requests of callers known to be "
                           "active (a lone caller never waits)", {}),
    "max_queue": ("requests waiting per graph before new ones get RESOURCE_EXHAUSTED", {}),
    "inline_budget_us": ("batches predicted (from warm-up timings) to take at most this many microseconds run on "
                         "the event loop instead of the worker thread (CPU only; 0: always the thread; auto: 200, "
                         "or the round trip to the worker thread measured at start where that is longer)", {}),
    "max_num_samples": ("most rows (samples, images, interpolation steps) in one request", {}),
    "max_importance_samples": ("most posterior samples per image a Score call may ask for", {}),
    "intra_op_threads": ("onnxruntime intra-op threads of the worker's session, for heavy batches (0: the fewest "
                         "that run a full batch about as fast as any count up to the CPUs, measured at start)", {}),
    "inter_op_threads": ("onnxruntime inter-op threads per session", {}),
    "max_concurrent_rpcs": ("most calls in flight at once (>= --max-batch-size); more get RESOURCE_EXHAUSTED", {}),
    "max_wait_ms": ("refuse new calls (RESOURCE_EXHAUSTED) when those in flight would take longer than this to "
                    "serve at the measured rate", {}),
    "max_message_mb": ("largest request or response message in MiB (0: what the model's largest valid call "
                       "needs)", {}),
    "max_connection_age_s": ("close client connections after this many seconds, so load rebalances across "
                             "replicas (0: never)", {}),
    "max_connection_age_grace_s": ("time calls on an aged connection get to finish", {}),
    "grace_period": ("seconds in-flight calls get to finish after SIGTERM/SIGINT (the server exits as soon as "
                     "they have)", {}),
    "tls_cert": ("PEM certificate chain: serve TLS on --port (with --tls-key)", {}),
    "tls_key": ("PEM private key of --tls-cert", {}),
    "tls_client_ca": ("PEM CA bundle: require client certificates it signed (mTLS)", {}),
    "auth_token_file": ("file of accepted bearer tokens, one per line, re-read when it changes or on SIGHUP; "
                        "calls need `authorization: Bearer TOKEN` (health stays open). Fails closed: once the file "
                        "is deleted, unreadable or empty, no token is accepted until it holds some again", {}),
    "reflection": ("gRPC server reflection (with --auth-token-file it needs a token too, like the API it "
                   "describes)", {}),
    "max_health_watches": ("most health Watch streams open at once (they need no token); more get "
                           "RESOURCE_EXHAUSTED", {}),
    "otlp_endpoint": ("OpenTelemetry collector for a span per RPC and per batch, http://HOST:4317 (needs the "
                      "tracing extra; empty: off)", {}),
    "event_loop": ("asyncio event loop: auto (uvloop when installed), asyncio, uvloop", {"choices": EVENT_LOOPS}),
}  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model version over gRPC",
        description="Serve a model version over gRPC. Every flag can also be set by VAESERVE_<FLAG>.",
    )
    for field in fields(ServeConfig):
        help, kwargs = SERVE_FLAGS[field.name]
        add_flag(p, "--" + field.name.replace("_", "-"), field.default, help, **kwargs)
    add_flag(p, "--log-format", "text", "log line format", choices=("text", "json"))
    add_flag(p, "--log-level", "INFO", "log level")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import dataclasses

    from .logs import configure_logging
    from .serve import ServeConfig, run

    configure_logging(args.log_format, args.log_level)
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    return run(config)
