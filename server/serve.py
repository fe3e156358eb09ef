"""`vaeserve serve`: load and warm the model, then run the gRPC server until SIGTERM/SIGINT, then drain.

Start-up order: verify the repository version (a bad one stops here with its message), create and warm
both onnxruntime sessions, start the batchers and the gRPC server (VaeService, health, reflection), start
the metrics endpoint, and only then report SERVING. On SIGTERM or SIGINT: health goes NOT_SERVING, the
server stops accepting calls, in-flight calls get `grace_period` seconds to finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vaeserve.errors import VaeserveError
from vaeserve.export.repository import ModelVersion, resolve_version, verify_version
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

from . import validation
from .batcher import Batcher
from .config import MB, ServeConfig
from .memory import MMAP_THRESHOLD, keep_large_buffers
from .metrics import Metrics
from .noise import with_reparameterization
from .runtime import CPU, CUDA, SPIN_AFTER_S, GraphSession
from .servicer import VaeServicer

log = logging.getLogger("vaeserve.server")

SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name


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


def load_graphs(model: ModelVersion, config: ServeConfig) -> tuple[GraphSession, GraphSession]:
    """Both sessions on the chosen device, warmed up at one row and at a full batch."""
    threads = (config.device, config.intra_op_threads, config.inter_op_threads)
    encoder = GraphSession(model.encoder_path, "image", ["mean", "log_variance"], *threads)
    decoder = GraphSession(model.decoder_path, "latent", ["image"], *threads)
    why = "IO binding" if decoder.provider == CUDA else decoder.cpu_reason
    log.info("execution provider %s (--device %s: %s)", decoder.provider, config.device, why)
    log.info("onnxruntime threads: intra-op %d, inter-op %d", config.intra_op_threads, config.inter_op_threads)
    encoder.warm_up(model.image_shape, config.max_batch_size)
    decoder.warm_up((model.latent_dim,), config.max_batch_size)
    if decoder.provider == CPU:
        log.info("pool threads spin for batches from %d rows (encoder) and %d rows (decoder): predicted >= %g ms",
                 encoder.spin_rows, decoder.spin_rows, SPIN_AFTER_S * 1e3)  # fmt: skip
    return encoder, decoder


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
    model = verify_version(resolve_version(config.repo, config.name, config.version))
    check_message_limit(model, config)
    log.info("model %s version %d from %s", model.name, model.version, model.path)
    log.info("latent_dim %d, image_shape %s, likelihood %s", model.latent_dim, list(model.image_shape),
             model.likelihood)  # fmt: skip
    graphs = dict(zip(("encoder", "decoder"), load_graphs(model, config), strict=True))
    provider = graphs["decoder"].provider

    metrics = Metrics()
    metrics.set_model_info(model.name, model.version, provider)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    observers = {name: metrics.graph(name) for name in graphs}
    tracing = None
    if config.otlp_endpoint:
        from .tracing import Tracing  # imports OpenTelemetry, an optional extra

        tracing = Tracing(config.otlp_endpoint)
        interceptors.append(tracing.interceptor())
        observers = {name: tracing.observer(name, observer) for name, observer in observers.items()}
        log.info("tracing to %s", config.otlp_endpoint)
    delay_s = config.max_batch_delay_ms / 1000
    # On CUDA every batch goes to the worker thread: a GPU run waits on the device, which must not stall the loop.
    inline_s = 0.0 if provider == CUDA else config.inline_budget_us / 1e6
    inline_rows = {name: graph.cost.rows_within(inline_s, config.max_batch_size) for name, graph in graphs.items()}
    limits = {"max_rows": config.max_batch_size, "max_delay_s": delay_s, "max_queue": config.max_queue}
    image_shape, latent_shape = tuple(model.image_shape), (model.latent_dim,)
    # The encoder's batches take (images, eps) and give (mean, log_variance, z); the decoder's take latents.
    encoder = Batcher("encoder", with_reparameterization(graphs["encoder"].run), observers["encoder"],
                      [image_shape, latent_shape], check=validation.check_images,
                      run_on_worker=with_reparameterization(graphs["encoder"].run_on_worker),
                      inline_rows=inline_rows["encoder"], **limits)  # fmt: skip
    decoder = Batcher("decoder", graphs["decoder"].run, observers["decoder"], [latent_shape],
                      check=validation.check_latents, run_on_worker=graphs["decoder"].run_on_worker,
                      inline_rows=inline_rows["decoder"], **limits)  # fmt: skip
    log.info("batching: max %d rows, max delay %g ms, max queue %d requests per graph, max %d samples per request",
             config.max_batch_size, config.max_batch_delay_ms, config.max_queue, config.max_num_samples)  # fmt: skip
    log.info("batches run on the event loop up to %d rows (encoder) and %d rows (decoder): predicted within %g us",
             inline_rows["encoder"], inline_rows["decoder"], inline_s * 1e6)  # fmt: skip

    server = grpc.aio.server(
        interceptors=interceptors, options=config.grpc_options(), maximum_concurrent_rpcs=config.max_concurrent_rpcs
    )
    info = model_info(model, provider, config)
    vae_pb2_grpc.add_VaeServiceServicer_to_server(
        VaeServicer(model, encoder, decoder, config.max_num_samples, info), metrics.counting(server)
    )
    health_servicer = health.aio.HealthServicer()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = listen(server, config)
    http = metrics.serve_http(config.host, config.metrics_port)
    encoder.start()
    decoder.start()
    await server.start()
    log.info("gRPC listening on %s:%d (max message %d MiB, max %d concurrent RPCs%s)", config.host, port,
             config.max_message_mb, config.max_concurrent_rpcs,
             ", port shared with other processes: --reuse-port" if config.reuse_port else "")  # fmt: skip
    log.info("metrics on %s", f"http://{config.host}:{http.port}/metrics" if http else "(disabled: --metrics-port 0)")
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("SERVING")

    await stopping.wait()
    log.info("draining: NOT_SERVING, in-flight calls get %g s", config.grace_period)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_period)
    await encoder.stop()
    await decoder.stop()
    if http is not None:
        http.close()
    if tracing is not None:
        tracing.close()
    log.info("stopped")
    return 0
