"""`vaeserve serve`: load and warm the model (`load`), wire the server around it (`build`), run it until
SIGTERM/SIGINT, then drain (`App.run`).

Start-up order: verify the repository version (only the variant served; a bad one stops here with its
message), create and warm both onnxruntime sessions, build the batchers from the graphs' descriptions and the
gRPC server (VaeService, health, reflection), start the metrics endpoint, and only then report SERVING. On
SIGTERM or SIGINT: health goes NOT_SERVING, calls already on their way are still taken for DRAIN_SETTLE_S, then
the server sends GOAWAY and takes no new call, in-flight calls get what is left of `grace_period` seconds to
finish, and the process exits 0 as soon as they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from vaeserve.errors import VaeserveError
from vaeserve.flags import env_name
from vaeserve.ports import check_free
from vaeserve.protos.inference import grpc_service_pb2
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.repository import ModelVersion, graph_signatures, open_version

from . import graphs, rpc
from .admission import Admission
from .auth import Tokens
from .batcher import Batcher
from .config import MB, Limits, ServeConfig
from .memory import MMAP_THRESHOLD, keep_large_buffers
from .metrics import Metrics, MetricsHttpServer
from .oip import OipServicer
from .runtime import Session, open_session
from .servicer import Batchers, VaeServicer
from .siblings import sharing_port
from .streams import BoundedHealth, Streams
from .tracing import Tracing

log = logging.getLogger("vaeserve.server")

SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]
OIP_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def model_info(model: ModelVersion, provider: str, limits: Limits) -> vae_pb2.ModelInfo:
    return vae_pb2.ModelInfo(
        name=model.name,
        version=model.version,
        latent_dim=model.latent_dim,
        image_shape=model.image_shape,
        likelihood=model.likelihood,
        execution_provider=provider,
        metadata=model.metadata,
        max_batch_size=limits.batch_rows,
        max_num_samples=limits.rows,
        variant=model.variant,
        max_importance_samples=limits.importance_samples,
        max_interpolation_steps=limits.interpolation_steps,
        can_score=model.has_logits,
    )


MESSAGE_FRAMING = 4096  # bytes beside the tensor data: tags, lengths, shapes, a status message


def message_limit(model: ModelVersion, config: ServeConfig) -> int:
    """The largest request or response message, in bytes: what the model's largest valid call needs (the
    limits' most rows of images plus latents, or of the encoder's three outputs) unless --max-message-mb says
    more. A caller can then never make the server read a message bigger than one it serves."""
    row_bytes = 4 * max(math.prod(model.image_shape) + model.latent_dim, 3 * model.latent_dim)
    largest = config.max_num_samples * row_bytes + MESSAGE_FRAMING
    if not config.max_message_mb:
        return largest
    if largest > config.max_message_mb * MB:
        raise VaeserveError(
            f"--max-num-samples {config.max_num_samples}: a full response of {list(model.image_shape)} images is "
            f"{largest / MB:.1f} MiB, more than --max-message-mb {config.max_message_mb:g}"
        )
    return int(config.max_message_mb * MB)


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
    model = open_version(config.repo, config.name, config.version, (config.variant,), skipped=log.warning)
    message_limit(model, config)  # a limit too small for the model stops the server here
    log.info("model %s version %d (%s graphs) from %s", model.name, model.version, model.variant, model.path)
    log.info("latent_dim %d, image_shape %s, likelihood %s", model.latent_dim, list(model.image_shape),
             model.likelihood)  # fmt: skip
    # Each graph's one input and what its session returns by default: the repository's signatures, less the
    # decoder's logits, computed only when asked (scoring).
    signatures = graph_signatures(model.latent_dim, model.image_shape, logits=False)
    paths = {"encoder": model.encoder_path, "decoder": model.decoder_path}
    threads = (config.device, config.intra_threads, config.inter_op_threads, config.cuda_mem_limit_mb)
    sessions, why_not = {}, ""
    for name, path in paths.items():
        (graph_input,) = signatures[name]["inputs"]
        outputs = list(signatures[name]["outputs"])
        sessions[name], why_not = open_session(path, graph_input, outputs, *threads)
    log.info("execution provider %s (--device %s%s)", sessions["decoder"].provider, config.device,
             f": {why_not}" if why_not else "")  # fmt: skip
    log.info("onnxruntime threads: intra-op %d, inter-op %d", config.intra_threads, config.inter_op_threads)
    row_shapes = {"encoder": model.image_shape, "decoder": (model.latent_dim,)}
    for name, session in sessions.items():
        session.warm_up(row_shapes[name], config.max_batch_size)
        log.info("%s: %s", name, session.describe())
    return Loaded(model, sessions)


DRAIN_SETTLE_S = 0.5  # after SIGTERM, calls still start normally: those that reached gRPC before the signal
DRAIN_QUIET_S = 0.1  # closing waits until no call has arrived for this long: none is left inside gRPC to cut off
DRAIN_HOLD_S = 1.0  # at most this long: calls that keep arriving however they are answered are a flood


@dataclass
class App:
    """The wired server: gRPC with its services, admission, auth, the batchers, metrics and tracing."""

    config: ServeConfig
    server: grpc.aio.Server
    port: int
    message_bytes: int  # the largest message either way
    health_server: grpc.aio.Server | None  # the plaintext health-only listener (--health-port)
    health: BoundedHealth
    streams: Streams  # health Watch and reflection streams, ended when the server closes
    admission: Admission
    tokens: Tokens | None
    batchers: list[Batcher]
    metrics: Metrics
    tracing: Tracing | None

    async def run(self, stopping: asyncio.Event) -> int:
        """Serves until `stopping` is set, then drains: every call that reached the server completes, later
        ones get UNAVAILABLE, and the process closes as soon as nothing is in flight (or the grace period is
        over)."""
        config = self.config
        metrics_host = config.metrics_host or config.host
        http: MetricsHttpServer | None = self.metrics.serve_http(metrics_host, config.metrics_port)
        for batcher in self.batchers:
            batcher.start()
        self.admission.start()
        if self.tokens is not None:
            self.tokens.start()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        tls = "TLS" + (" with client certificates" if config.tls_client_ca else "") if config.tls_cert else "plaintext"
        log.info("gRPC listening on %s:%d (%s%s, max message %.2f MiB, max %d calls in flight%s)", config.host,
                 self.port, tls, ", bearer tokens" if self.tokens else "", self.message_bytes / MB,
                 config.max_concurrent_rpcs,
                 ", port shared with other processes: --reuse-port" if config.reuse_port else "")  # fmt: skip
        if self.health_server is not None:
            log.info("health service (plaintext, health only) on %s:%d", config.host, config.health_port)
        where = f"http://{metrics_host}:{http.port}/metrics" if http else "(disabled: --metrics-port 0)"
        log.info("metrics on %s (unauthenticated)", where)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING")

        await stopping.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.grace_period
        log.info("draining: NOT_SERVING, in-flight calls get %g s", config.grace_period)
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(min(DRAIN_SETTLE_S, config.grace_period))
        self.admission.drain()
        # New calls are refused, held until the server closes: once none has arrived for DRAIN_QUIET_S, none waits
        # in gRPC's core either, where closing would cancel it rather than refuse it.
        await self.admission.settled(DRAIN_QUIET_S, min(DRAIN_HOLD_S, max(0.0, deadline - loop.time())))
        # GOAWAY now, and the listener closes: clients take their next calls to another replica (or another
        # --reuse-port process) instead of retrying here for the rest of the grace period. Calls in flight go on,
        # and the stop returns once every one has ended, its response sent; Watch and reflection streams end now, or
        # it would wait for them. Its own grace is a backstop: the deadline below comes first, says so and cancels.
        left = max(0.0, deadline - loop.time())
        closing = asyncio.ensure_future(self.server.stop(left + 1.0))
        await asyncio.sleep(0)  # the stop's first step sends the GOAWAY (grpc_server_shutdown_and_notify) ...
        self.admission.closed()  # ... before the held refusals go out, so their retries cannot land here
        self.streams.close()
        log.info("draining: GOAWAY sent, no new calls taken; %d in flight", self.admission.inflight)
        done, _ = await asyncio.wait((closing,), timeout=left)
        if not done:
            log.warning("grace period over: cancelling the calls in flight (%d computing)", self.admission.inflight)
            await self.server.stop(None)
        await closing
        if self.health_server is not None:
            await self.health_server.stop(None)
        for batcher in self.batchers:
            await batcher.stop()
        await self.admission.stop()
        if self.tokens is not None:
            await self.tokens.stop()
        if http is not None:
            http.close()
        if self.tracing is not None:
            self.tracing.close()
        log.info("stopped")
        return 0

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE.full_name):
            await self.health.set(service, status)


@dataclass
class Security:
    """What --tls-* and --auth-token-file hold, read before the model is loaded so a bad file fails fast."""

    credentials: grpc.ServerCredentials | None
    tokens: Tokens | None

    @classmethod
    def read(cls, config: ServeConfig) -> Security:
        return cls(server_credentials(config), Tokens(config.auth_token_file) if config.auth_token_file else None)


def make_batchers(config: ServeConfig, loaded: Loaded, metrics: Metrics, tracing: Tracing | None) -> dict[str, Batcher]:
    """A batcher per graph, by name (encoder, decoder, and likelihood when the decoder has a logits output), each
    built from the graph's description and observed by the metrics (and tracing)."""
    model, sessions = loaded.model, loaded.sessions
    specs = {"encoder": graphs.encoder(model.image_shape, model.latent_dim),
             "decoder": graphs.decoder(model.image_shape, model.latent_dim)}  # fmt: skip
    runners = dict(sessions)
    if model.has_logits:  # the decoder's session again, asked for its logits
        specs["likelihood"] = graphs.likelihood(model.image_shape, model.latent_dim, model.likelihood, model.log_sigma)
        runners["likelihood"] = sessions["decoder"].with_outputs(["logits"])
    else:
        log.warning("this version's decoder has no logits output (an older export): Score answers FAILED_PRECONDITION")
    inline_s = config.inline_budget_us / 1e6
    batchers = {}
    for name, spec in specs.items():
        observer = metrics.graph(name)
        if tracing is not None:
            observer = tracing.observer(name, observer)
        batchers[name] = Batcher(spec, runners[name], observer, max_rows=config.max_batch_size,
                                 max_delay_s=config.max_batch_delay_ms / 1000, max_queue=config.max_queue,
                                 inline_rows=runners[name].inline_rows(inline_s, config.max_batch_size))  # fmt: skip
    log.info("batching: max %d rows, max delay %g ms, max queue %d requests per graph, max %d samples per request",
             config.max_batch_size, config.max_batch_delay_ms, config.max_queue, config.max_num_samples)  # fmt: skip
    log.info("batches run on the event loop up to %d rows (encoder) and %d rows (decoder): predicted within %g us",
             batchers["encoder"].inline_rows, batchers["decoder"].inline_rows, inline_s * 1e6)  # fmt: skip
    return batchers


async def build(config: ServeConfig, loaded: Loaded, security: Security) -> App:
    """The batchers (built from the graphs' descriptions), the gRPC server and its services, admission and auth,
    metrics, tracing."""
    model = loaded.model
    metrics = Metrics()
    metrics.set_model_info(model.name, model.version, loaded.provider, model.variant)
    tracing = Tracing(config.otlp_endpoint) if config.otlp_endpoint else None
    interceptors = [tracing.interceptor()] if tracing is not None else []
    if tracing is not None:
        log.info("tracing to %s", config.otlp_endpoint)
    batchers = make_batchers(config, loaded, metrics, tracing)

    message_bytes = message_limit(model, config)
    # No maximum_concurrent_rpcs: gRPC would hold calls over it unanswered, then cancel them; admission refuses
    # them at once with a status that says why.
    server = grpc.aio.server(interceptors=interceptors, options=config.grpc_options(message_bytes))
    # Each graph's work is charged at the seconds per row its session took at warm-up (the likelihood graph runs
    # the decoder's session).
    row_seconds = {name: batcher.runner.cost.per_row_s for name, batcher in batchers.items()}
    admission = Admission(config.max_wait_ms / 1000, config.admission_floor, config.max_concurrent_rpcs,
                          config.max_batch_size, row_seconds)  # fmt: skip
    tokens = security.tokens
    if tokens is not None:
        metrics.watch_tokens(tokens)
    info = model_info(model, loaded.provider, config.limits)
    batched = Batchers(batchers["encoder"], batchers["decoder"], batchers.get("likelihood"))
    servicer = VaeServicer(model.image_shape, model.latent_dim, batched, config.limits, info, metrics.images_scored.inc)

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Innermost first: the token check, then counting (so refusals are counted too). Admission is inside the
        request's parse (`rpc.add_service`), where it can see what the call will cost."""
        behavior = handler.unary_unary
        if tokens is not None:
            behavior = tokens.checking(behavior)
        serializers = (handler.request_deserializer, handler.response_serializer)
        return metrics.counted(method, grpc.unary_unary_rpc_method_handler(behavior, *serializers))

    def admit(servicer: VaeServicer | OipServicer) -> rpc.Admit:
        return lambda method, behavior: admission.admitting(behavior, servicer.work(method))

    rpc.add_service(server, SERVICE, servicer, wrap, admit(servicer))
    oip = OipServicer(model.name, model.version, model.image_shape, model.latent_dim, batchers["encoder"],
                      batchers["decoder"], config.limits.rows, ready=lambda: not admission.draining)  # fmt: skip
    # The second protocol's calls are counted apart: method="oip.ModelInfer", ...
    rpc.add_service(server, OIP_SERVICE, oip, lambda method, handler: wrap(f"oip.{method}", handler), admit(oip))
    streams = Streams()
    health_servicer = BoundedHealth(config.max_health_watches, streams)
    for service in ("", SERVICE.full_name):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        add_reflection(server, streams, tokens)
    port = listen(server, config.host, config.port, "--port", security.credentials)
    health_server = None
    if config.health_port:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        listen(health_server, config.host, config.health_port, "--health-port", None)
    return App(config, server, port, message_bytes, health_server, health_servicer, streams, admission, tokens,
               list(batchers.values()), metrics, tracing)  # fmt: skip


def add_reflection(server: grpc.aio.Server, streams: Streams, tokens: Tokens | None) -> None:
    """Server reflection (what `enable_server_reflection` registers), its stream ending when the server closes and
    behind the token check when tokens are on: the API's description is for the same callers as the API."""
    names = (SERVICE.full_name, OIP_SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
    behavior = streams.ending(reflection.aio.ReflectionServicer(names).ServerReflectionInfo)
    if tokens is not None:
        behavior = tokens.checking(behavior)
    messages = (
        reflection_pb2.ServerReflectionRequest.FromString,
        reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    handler = grpc.stream_stream_rpc_method_handler(behavior, *messages)
    methods = {"ServerReflectionInfo": handler}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(reflection.SERVICE_NAME, methods),))


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert/--tls-key (and --tls-client-ca: client certificates required), or None."""
    if not config.tls_cert:
        return None
    pem = {flag: _read_pem(flag, path) for flag, path in
           (("--tls-cert", config.tls_cert), ("--tls-key", config.tls_key), ("--tls-client-ca", config.tls_client_ca))
           if path}  # fmt: skip
    return grpc.ssl_server_credentials(
        [(pem["--tls-key"], pem["--tls-cert"])],
        root_certificates=pem.get("--tls-client-ca"),
        require_client_auth="--tls-client-ca" in pem,
    )


def _read_pem(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise VaeserveError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc
    if b"-----BEGIN " not in data:
        raise VaeserveError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


def listen(server: grpc.aio.Server, host: str, port: int, flag: str, credentials: grpc.ServerCredentials | None) -> int:
    """Binds host:port (TLS with `credentials`); the port number (the one chosen when port is 0)."""
    address = f"{host}:{port}"
    try:
        bound = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError as exc:
        raise VaeserveError(f"{flag}: cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise VaeserveError(f"{flag}: cannot listen on {address}")
    return bound


def check_ports(config: ServeConfig) -> None:
    """Every port this server will listen on is free now: a busy one is one line naming its flag, in a fraction of
    a second, instead of gRPC's own log noise once the model is loaded and warm. With --reuse-port the gRPC port
    may be shared on purpose, so it is not checked."""
    metrics_host = ("--metrics-host", config.metrics_host) if config.metrics_host else ("--host", config.host)
    listeners = (
        ("--port", ("--host", config.host), config.port, not config.reuse_port),
        ("--metrics-port", metrics_host, config.metrics_port, True),
        ("--health-port", ("--host", config.host), config.health_port, True),
    )
    for flag, (host_flag, host), port, exclusive in listeners:
        if port and exclusive:
            check_free(host, port, flag, env_name(flag), host_flag)


def reload(tokens: Tokens | None) -> None:
    """SIGHUP: re-reads what can change while serving, the bearer tokens, and says what it did."""
    if tokens is None:
        log.info("SIGHUP: nothing to reload (no --auth-token-file)")
        return
    log.info("SIGHUP: re-reading --auth-token-file %s", tokens.path)
    tokens.reload()


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
    check_ports(config)
    # (--port 0 is a port of its own: nothing to share.)
    with sharing_port(config) if config.reuse_port and config.port else contextlib.nullcontext():
        security = Security.read(config)
        # Installed first, so a signal during loading and warm-up ends the start-up cleanly as well.
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        # Signals whose default action ends the process without a drain: none of them may.
        loop.add_signal_handler(signal.SIGHUP, reload, security.tokens)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            loop.add_signal_handler(sig, log.warning, "%s ignored: SIGTERM or SIGINT drains and stops, SIGHUP reloads",
                                    sig.name)  # fmt: skip
        log.info("event loop %s", type(loop).__module__.split(".")[0])  # uvloop or asyncio
        if keep_large_buffers():
            log.info("malloc: buffers up to %d MiB are reused from the heap, not mapped per call",
                     MMAP_THRESHOLD // MB)  # fmt: skip
        app = await build(config, load(config), security)
        return await app.run(stopping)
