"""`vaeserve serve`: load and warm the model versions (`models.load_start_up`), wire the server around them
(`build`), run it until SIGTERM/SIGINT, then drain (`App.run`).

Start-up order: verify the repository versions --version-policy picks (only the variant served; a bad one
stops here with its message), create and warm their onnxruntime sessions, build the batchers from the graphs'
descriptions (models.py, which also swaps versions while serving under --model-control poll or explicit) and
the gRPC server (VaeService, the Open Inference Protocol, health, reflection), start the metrics endpoint, and
only then report SERVING. On SIGTERM or SIGINT: health goes NOT_SERVING, calls already on their way are still
taken for DRAIN_SETTLE_S, then new calls are refused, in-flight calls get what is left of `grace_period`
seconds to finish, and once their responses are written the server sends GOAWAY and exits 0. SIGHUP re-reads
the token files and, under --model-control poll, rescans the repository; SIGUSR1 and SIGUSR2 are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from vaeserve.errors import VaeserveError
from vaeserve.flags import env_name
from vaeserve.ports import check_free
from vaeserve.protos.inference import grpc_service_pb2
from vaeserve.protos.vae.v1 import vae_pb2

from . import rpc
from .admission import Admission
from .auth import Tokens
from .config import MB, ServeConfig
from .memory import MMAP_THRESHOLD, YOUNG_THRESHOLD, freeze_heap, keep_large_buffers
from .metrics import Metrics, MetricsHttpServer
from .models import Loaded, Models, load_start_up, message_limit
from .oip import OipServicer
from .servicer import VaeServicer
from .siblings import sharing_port
from .streams import BoundedHealth, Streams
from .tracing import Tracing

log = logging.getLogger("vaeserve.server")

SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]
OIP_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
REPOSITORY_METHODS = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")


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
    admin_tokens: Tokens | None
    models: Models
    metrics: Metrics
    tracing: Tracing | None
    serving: bool = False  # SERVING was reported: from then on health follows the served versions
    _tasks: set[asyncio.Task] = field(default_factory=set)

    async def run(self, stopping: asyncio.Event) -> int:
        """Serves until `stopping` is set, then drains: every call that reached the server completes, later
        ones get UNAVAILABLE, and the process closes as soon as nothing is in flight (or the grace period is
        over)."""
        config = self.config
        metrics_host = config.metrics_host or config.host
        http: MetricsHttpServer | None = self.metrics.serve_http(metrics_host, config.metrics_port)
        self.models.start()
        self.admission.start()
        for tokens in (self.tokens, self.admin_tokens):
            if tokens is not None:
                tokens.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload, (self.tokens, self.admin_tokens),
                                                      self.models)  # fmt: skip
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
        # What start-up built lives until exit or until its version is freed: out of the collector's walks.
        log.info("garbage collector: %d objects alive at start frozen, the youngest generation collected every %d new "
                 "objects", freeze_heap(), YOUNG_THRESHOLD)  # fmt: skip
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.serving = True
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
        # GOAWAY only once every call in flight has been answered, its response handed to the kernel. After a
        # GOAWAY gRPC's core closes a connection the moment its last call's response is written, without waiting
        # for the client to read it: whatever the client sends then (a flow-control update while it reads a
        # response of megabytes) resets the connection, and the rest of that response is lost. Sent after the
        # responses, the GOAWAY's ping is answered only once the client has read them.
        answered = await self.admission.answered(max(0.0, deadline - loop.time()))
        # GOAWAY now, and the listener closes: clients take their next calls to another replica (or another
        # --reuse-port process) instead of retrying here for the rest of the grace period. Watch and reflection
        # streams end now, or the stop would wait for them. Its own grace is a backstop: the deadline below comes
        # first, says so and cancels.
        if answered:  # logged first: once the port is closed, the log says why
            log.info("draining: GOAWAY sent, no new calls taken: every call in flight answered")
        left = max(0.0, deadline - loop.time())
        closing = asyncio.ensure_future(self.server.stop(left + 1.0))
        await asyncio.sleep(0)  # the stop's first step sends the GOAWAY (grpc_server_shutdown_and_notify) ...
        self.admission.closed()  # ... before the held refusals go out, so their retries cannot land here
        self.streams.close()
        done, _ = await asyncio.wait((closing,), timeout=left)
        if not done:
            log.warning("grace period over: cancelling the calls in flight (%d unanswered)", self.admission.inflight)
            await self.server.stop(None)
        await closing
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.models.stop()
        await self.admission.stop()
        for tokens in (self.tokens, self.admin_tokens):
            if tokens is not None:
                await tokens.stop()
        if http is not None:
            http.close()
        if self.tracing is not None:
            self.tracing.close()
        log.info("stopped")
        return 0

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE.full_name):
            await self.health.set(service, status)

    def models_changed(self, models: Models) -> None:
        """Admission charges the served versions' row costs; with every version unloaded, the model's service is
        NOT_SERVING (a readiness probe takes the replica out of its Service) while the process stays live."""
        self.admission.row_seconds.update(models.row_seconds())
        if self.admission.draining or not self.serving:
            return
        status = health_pb2.HealthCheckResponse.SERVING if models.served else health_pb2.HealthCheckResponse.NOT_SERVING
        task = asyncio.get_running_loop().create_task(self.health.set(SERVICE.full_name, status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass
class Security:
    """What --tls-* and --auth-token-file hold, read before the model is loaded so a bad file fails fast."""

    credentials: grpc.ServerCredentials | None
    tokens: Tokens | None
    admin_tokens: Tokens | None  # --admin-token-file: for the OIP repository calls

    @classmethod
    def read(cls, config: ServeConfig) -> Security:
        tokens = Tokens(config.auth_token_file) if config.auth_token_file else None
        admin = Tokens(config.admin_token_file, "--admin-token-file") if config.admin_token_file else None
        return cls(server_credentials(config), tokens, admin)

    def repository_refused(self, config: ServeConfig) -> str:
        """Why the OIP repository calls are refused on this server ("" when they are not): they change what is
        served, so they need an admin token unless only this machine can connect."""
        if self.admin_tokens is not None or config.loopback_only:
            return ""
        return (f"the repository calls need --admin-token-file on a server that listens beyond loopback (--host "
                f"{config.host})")  # fmt: skip


async def build(config: ServeConfig, loaded: list[Loaded], security: Security) -> App:
    """The served versions and their batchers (models.py), the gRPC server and its services, admission and auth,
    metrics, tracing."""
    metrics = Metrics()
    tracing = Tracing(config.otlp_endpoint) if config.otlp_endpoint else None
    interceptors = [tracing.interceptor()] if tracing is not None else []
    if tracing is not None:
        log.info("tracing to %s", config.otlp_endpoint)
    # The largest message: what the start-up versions' largest calls need (a version loaded later must fit it).
    message_bytes = max(message_limit(item.model, config) for item in loaded)
    models = Models(config, metrics, tracing, message_bytes)
    models.add(loaded)
    log.info("batching: max %d rows, max delay %g ms, max queue %d requests per graph, max %d samples per request",
             config.max_batch_size, config.max_batch_delay_ms, config.max_queue, config.max_num_samples)  # fmt: skip
    log.info("versions: %s served (--version-policy %s, --model-control %s%s)", models.versions_text(),
             config.policy, config.model_control,
             f", every {config.poll_s:g} s" if config.model_control == "poll" else "")  # fmt: skip

    # No maximum_concurrent_rpcs: gRPC would hold calls over it unanswered, then cancel them; admission refuses
    # them at once with a status that says why.
    server = grpc.aio.server(interceptors=interceptors, options=config.grpc_options(message_bytes))
    # Each graph's work is charged at the seconds per row its session took at warm-up (the slowest served
    # version's; the likelihood graph runs the decoder's session).
    admission = Admission(config.max_wait_ms / 1000, config.admission_floor, config.max_concurrent_rpcs,
                          config.max_batch_size, models.row_seconds())  # fmt: skip
    tokens, admin_tokens = security.tokens, security.admin_tokens
    if tokens is not None:  # the callers' tokens (the admin token file's reloads are logged)
        metrics.watch_tokens(tokens)
    servicer = VaeServicer(models, config.limits, metrics.images_scored.inc)

    def wrap(method: str, handler: grpc.RpcMethodHandler, admin: bool = False) -> grpc.RpcMethodHandler:
        """Innermost first: the token check (the admin tokens' for the repository calls when there are any),
        then counting (so refusals are counted too). Admission is inside the request's parse
        (`rpc.add_service`), where it can see what the call will cost."""
        behavior = handler.unary_unary
        checking = admin_tokens if admin and admin_tokens is not None else tokens
        if checking is not None:
            behavior = checking.checking(behavior)
        serializers = (handler.request_deserializer, handler.response_serializer)
        return metrics.counted(method, grpc.unary_unary_rpc_method_handler(behavior, *serializers))

    def admit(servicer: VaeServicer | OipServicer) -> rpc.Admit:
        return lambda method, behavior: admission.admitting(behavior, servicer.work(method))

    rpc.add_service(server, SERVICE, servicer, wrap, admit(servicer))
    oip = OipServicer(config.name, models, config.limits.rows, lambda: not admission.draining and bool(models.served),
                      config.model_control == "explicit", security.repository_refused(config))  # fmt: skip
    # The second protocol's calls are counted apart: method="oip.ModelInfer", ...
    rpc.add_service(server, OIP_SERVICE, oip,
                    lambda method, handler: wrap(f"oip.{method}", handler, method in REPOSITORY_METHODS),
                    admit(oip))  # fmt: skip
    streams = Streams()
    health_servicer = BoundedHealth(config.max_health_watches, streams)
    for service in ("", SERVICE.full_name):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, rpc.GenericOnly(server))
    if config.reflection:
        add_reflection(server, streams, tokens)
    port = listen(server, config.host, config.port, "--port", security.credentials)
    health_server = None
    if config.health_port:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, rpc.GenericOnly(health_server))
        listen(health_server, config.host, config.health_port, "--health-port", None)
    app = App(config, server, port, message_bytes, health_server, health_servicer, streams, admission, tokens,
              admin_tokens, models, metrics, tracing)  # fmt: skip
    models.changed.append(app.models_changed)
    return app


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


def reload(token_files: tuple[Tokens | None, ...], models: Models | None) -> None:
    """SIGHUP: re-reads what can change while serving (the token files; the repository under --model-control
    poll, once the versions are served) and says what it did."""
    files = [tokens for tokens in token_files if tokens is not None]
    for tokens in files:
        log.info("SIGHUP: re-reading %s %s", tokens.flag, tokens.path)
        tokens.reload()
    if models is not None and models.config.model_control == "poll":
        log.info("SIGHUP: rescanning the repository")
        models.rescan()
    elif not files:
        log.info("SIGHUP: nothing to reload (no --auth-token-file)")


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
        # Signals whose default action ends the process without a drain: none of them may. (Once serving, SIGHUP
        # also rescans the repository: App.run.)
        loop.add_signal_handler(signal.SIGHUP, reload, (security.tokens, security.admin_tokens), None)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            loop.add_signal_handler(sig, log.warning, "%s ignored: SIGTERM or SIGINT drains and stops, SIGHUP reloads",
                                    sig.name)  # fmt: skip
        log.info("event loop %s", type(loop).__module__.split(".")[0])  # uvloop or asyncio
        if keep_large_buffers():
            log.info("malloc: buffers up to %d MiB are reused from the heap, not mapped per call",
                     MMAP_THRESHOLD // MB)  # fmt: skip
        app = await build(config, load_start_up(config), security)
        return await app.run(stopping)
