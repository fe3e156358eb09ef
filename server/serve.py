"""`vaeserve serve`: load and warm the model (`load`), wire the server around it (`build`), run it until
SIGTERM/SIGINT, then drain (`App.run`).

Start-up order: verify the repository version (only the variant served; a bad one stops here with its
message), create and warm both onnxruntime sessions, build the batchers from the graphs' descriptions and the
gRPC server (VaeService, health, reflection), start the metrics endpoint, and only then report SERVING. On
SIGTERM or SIGINT: health goes NOT_SERVING, the server stops accepting calls, in-flight calls get
`grace_period` seconds to finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vaeserve.errors import VaeserveError
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.repository import ModelVersion, graph_signatures, resolve_version, verify_version

from . import graphs, rpc
from .batcher import Batcher
from .config import MB, ServeConfig
from .memory import MMAP_THRESHOLD, keep_large_buffers
from .metrics import Metrics, MetricsHttpServer
from .runtime import Session, open_session
from .servicer import VaeServicer
from .tracing import Tracing

log = logging.getLogger("vaeserve.server")

SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]


def model_info(model: ModelVersion, provider: str, config: ServeConfig) -> vae_pb2.ModelInfo:
    return vae_pb2.ModelInfo(
        name=model.name,
        version=model.version,
        latent_dim=model.latent_dim,
        image_shape=model.image_shape,
        likelihood=model.likelihood,
        execution_provider=provider,
        metadata=model.metadata,
        max_batch_size=config.max_batch_size,
        max_num_samples=config.max_num_samples,
        variant=model.variant,
    )


def check_message_limit(model: ModelVersion, config: ServeConfig) -> None:
    """The largest request or response the limits allow (max rows of images plus latents) must fit a message."""
    row_bytes = 4 * (math.prod(model.image_shape) + model.latent_dim)
    largest = config.max_num_samples * row_bytes + 1024  # + framing and shapes
    if largest > config.max_message_mb * MB:
        raise VaeserveError(
            f"--max-num-samples {config.max_num_samples}: a full response of {list(model.image_shape)} images is "
            f"{largest / MB:.1f} MiB, more than --max-message-mb {config.max_message_mb}"
        )


@dataclass
class Loaded:
    """A verified model version and its two warmed sessions."""

    model: ModelVersion
    sessions: dict[str, Session]  # "encoder", "decoder"

    @property
    def provider(self) -> str:
        return self.sessions["decoder"].provider


def load(config: ServeConfig) -> Loaded:
    """Verifies the version's served variant, opens both sessions on the chosen device and warms them up."""
    model = verify_version(resolve_version(config.repo, config.name, config.version), (config.variant,))
    check_message_limit(model, config)
    log.info("model %s version %d (%s graphs) from %s", model.name, model.version, model.variant, model.path)
    log.info("latent_dim %d, image_shape %s, likelihood %s", model.latent_dim, list(model.image_shape),
             model.likelihood)  # fmt: skip
    signatures = graph_signatures(model.latent_dim, model.image_shape)
    paths = {"encoder": model.encoder_path, "decoder": model.decoder_path}
    threads = (config.device, config.intra_op_threads, config.inter_op_threads)
    sessions, why_not = {}, ""
    for name, path in paths.items():
        (graph_input,) = signatures[name]["inputs"]
        sessions[name], why_not = open_session(path, graph_input, list(signatures[name]["outputs"]), *threads)
    log.info("execution provider %s (--device %s%s)", sessions["decoder"].provider, config.device,
             f": {why_not}" if why_not else "")  # fmt: skip
    log.info("onnxruntime threads: intra-op %d, inter-op %d", config.intra_op_threads, config.inter_op_threads)
    row_shapes = {"encoder": model.image_shape, "decoder": (model.latent_dim,)}
    for name, session in sessions.items():
        session.warm_up(row_shapes[name], config.max_batch_size)
        log.info("%s: %s", name, session.describe())
    return Loaded(model, sessions)


@dataclass
class App:
    """The wired server: gRPC with its services, the batchers, metrics and tracing; `run` serves until a signal."""

    config: ServeConfig
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    batchers: list[Batcher]
    metrics: Metrics
    tracing: Tracing | None

    async def run(self, stopping: asyncio.Event) -> int:
        config = self.config
        http: MetricsHttpServer | None = self.metrics.serve_http(config.host, config.metrics_port)
        for batcher in self.batchers:
            batcher.start()
        await self.server.start()
        log.info("gRPC listening on %s:%d (max message %d MiB, max %d concurrent RPCs%s)", config.host, self.port,
                 config.max_message_mb, config.max_concurrent_rpcs,
                 ", port shared with other processes: --reuse-port" if config.reuse_port else "")  # fmt: skip
        log.info(
            "metrics on %s", f"http://{config.host}:{http.port}/metrics" if http else "(disabled: --metrics-port 0)"
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING")

        await stopping.wait()
        log.info("draining: NOT_SERVING, in-flight calls get %g s", config.grace_period)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(config.grace_period)
        for batcher in self.batchers:
            await batcher.stop()
        if http is not None:
            http.close()
        if self.tracing is not None:
            self.tracing.close()
        log.info("stopped")
        return 0

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE.full_name):
            await self.health.set(service, status)


async def build(config: ServeConfig, loaded: Loaded) -> App:
    """The batchers (built from the graphs' descriptions), the gRPC server and its services, metrics, tracing."""
    model, sessions = loaded.model, loaded.sessions
    metrics = Metrics()
    metrics.set_model_info(model.name, model.version, loaded.provider, model.variant)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    observers = {name: metrics.graph(name) for name in sessions}
    tracing = None
    if config.otlp_endpoint:
        tracing = Tracing(config.otlp_endpoint)
        interceptors.append(tracing.interceptor())
        observers = {name: tracing.observer(name, observer) for name, observer in observers.items()}
        log.info("tracing to %s", config.otlp_endpoint)

    specs = {"encoder": graphs.encoder(model.image_shape, model.latent_dim),
             "decoder": graphs.decoder(model.image_shape, model.latent_dim)}  # fmt: skip
    inline_s = config.inline_budget_us / 1e6
    batchers = {
        name: Batcher(spec, sessions[name], observers[name], max_rows=config.max_batch_size,
                      max_delay_s=config.max_batch_delay_ms / 1000, max_queue=config.max_queue,
                      inline_rows=sessions[name].inline_rows(inline_s, config.max_batch_size))
        for name, spec in specs.items()
    }  # fmt: skip
    log.info("batching: max %d rows, max delay %g ms, max queue %d requests per graph, max %d samples per request",
             config.max_batch_size, config.max_batch_delay_ms, config.max_queue, config.max_num_samples)  # fmt: skip
    log.info("batches run on the event loop up to %d rows (encoder) and %d rows (decoder): predicted within %g us",
             batchers["encoder"].inline_rows, batchers["decoder"].inline_rows, inline_s * 1e6)  # fmt: skip

    server = grpc.aio.server(
        interceptors=interceptors, options=config.grpc_options(), maximum_concurrent_rpcs=config.max_concurrent_rpcs
    )
    info = model_info(model, loaded.provider, config)
    servicer = VaeServicer(model.image_shape, model.latent_dim, batchers["encoder"], batchers["decoder"],
                           config.max_num_samples, info)  # fmt: skip
    rpc.add_service(server, SERVICE, servicer, metrics.counted)
    health_servicer = health.aio.HealthServicer()
    for service in ("", SERVICE.full_name):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = listen(server, config)
    return App(config, server, port, health_servicer, list(batchers.values()), metrics, tracing)


def listen(server: grpc.aio.Server, config: ServeConfig) -> int:
    """Binds the gRPC port; the port number (the one chosen when --port is 0)."""
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise VaeserveError(f"--port: cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise VaeserveError(f"--port: cannot listen on {address}")
    return port


def run(config: ServeConfig) -> int:
    """Runs `serve` on the event loop --event-loop names; its exit status."""
    if config.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.event_loop == "uvloop":
                raise VaeserveError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.run(serve(config))
    return asyncio.run(serve(config))


async def serve(config: ServeConfig) -> int:
    config.check()
    # Installed first, so a signal during loading and warm-up ends the start-up cleanly as well.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("event loop %s", type(loop).__module__.split(".")[0])  # uvloop or asyncio
    if keep_large_buffers():
        log.info("malloc: buffers up to %d MiB are reused from the heap, not mapped per call", MMAP_THRESHOLD // MB)
    app = await build(config, load(config))
    return await app.run(stopping)
