"""The served model versions: the registry every call looks its version up in, and the swap that changes what
is served while serving, with no failed call.

A version is served as a `Served`: its warmed sessions, a batcher per graph and the ModelInfo GetModelInfo
answers. A call takes a version for its whole duration (`Models.using`: the one it names, or the newest), so
a swap never moves a call between versions, and no batch mixes them.

The swap, however a version arrives (start-up, --model-control poll, an OIP RepositoryModelLoad): verify the
folder (hashes, graph signatures, the batch-2 run export's check also does), check its largest call fits the
server's message limit, open the sessions and warm them up at the batch sizes the batcher runs, all in a thread
so the event loop keeps serving; then start its batchers and publish the new set of versions in one step on the
event loop (between two batches of every graph). A version that leaves the set takes no new call at once; its
batchers stop and its sessions are dropped when the last call on it ends. One load runs at a time.

Memory: a swap holds the old version and the new one at once, never more. A version's sessions are mostly
arenas grown by warm-up to a full batch, and on CPU a graph may have two (runtime.CpuSession): the new version
goes live with the one every batch can use, and its spinning sessions, which only heavy batches use, are measured
and built once the versions it replaced are freed (`_add_heavy`). Until then its heavy batches run without
spinning (a conv decoder's Sample(1024) 80 -> 62 calls/s: BENCHMARKS.md, "Design measurements"), for the
moments the old version's last calls and the build take; building them before the switch put the swap's peak
RSS above one extra served version (BENCHMARKS.md, "Model versions going live while serving"). A version built
like one served before (a retrained model) reuses that one's timings (runtime.Measured): its swap times no full
batch beside the calls it keeps serving.

A version that fails a step is one log line and one count of vaeserve_model_load_failures_total{reason}; what
was served keeps serving, and the next load starts afresh. Under poll a failed version is not retried until its
folder changes (a copy still being written finishes), so a bad export is one line, not one per scan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaeserve.errors import VaeserveError
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.repository import (
    DECODER,
    ENCODER,
    LOGITS,
    MODEL_JSON,
    ModelVersion,
    RepositoryError,
    graph_signatures,
    open_version,
    verify_version,
    version_numbers,
)

from . import graphs
from .batcher import Batcher
from .config import MB, Limits, ServeConfig
from .errors import InvalidArgument, NotFound, NoVersion, ShuttingDown
from .graphs import LIKELIHOOD
from .handoff import auto_inline_budget_s, worker_handoff_s
from .memory import release, trim
from .metrics import Metrics
from .policy import MAX_VERSION
from .runtime import Session, open_session
from .tracing import Tracing

log = logging.getLogger("vaeserve.server")

MESSAGE_FRAMING = 4096  # bytes beside the tensor data: tags, lengths, shapes, a status message
CYCLE_HELD = "a reference cycle held its sessions"  # logged where freeing a version needed a full collection


class LoadFailed(VaeserveError):
    """A version refused by the step `reason` (metrics.LOAD_FAILURE_REASONS); version None: none to load at all."""

    def __init__(self, version: int | None, reason: str, message: str) -> None:
        what = f"version {version} not loaded" if version is not None else "nothing to load"
        super().__init__(f"{what} ({reason}): {message}")
        self.version, self.reason = version, reason


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


@dataclass
class Loaded:
    """A verified model version and its two warmed sessions."""

    model: ModelVersion
    sessions: dict[str, Session]  # by graph: ENCODER, DECODER

    @property
    def provider(self) -> str:
        return self.sessions[DECODER].provider


def architecture(model: ModelVersion, graph: str) -> str | None:
    """What a graph of this version shares with the same graph of other versions built alike: the training
    configuration export records (layers and sizes), the variant and the graph. None for exports without it."""
    built = model.info.get("model_config")
    return None if built is None else json.dumps([graph, model.variant, built], sort_keys=True)


def open_sessions(model: ModelVersion, config: ServeConfig) -> dict[str, Session]:
    """Both graphs' sessions on the chosen device (one log line on the provider)."""
    # Each graph's one input and what its session returns by default: the repository's signatures, less the
    # decoder's logits, computed only when asked (scoring).
    signatures = graph_signatures(model.latent_dim, model.image_shape, logits=False)
    paths = {ENCODER: model.encoder_path, DECODER: model.decoder_path}
    threads = (config.device, config.intra_op_threads, config.inter_op_threads, config.cuda_mem_limit_mb)
    sessions, why_not = {}, ""
    for name, path in paths.items():
        (graph_input,) = signatures[name]["inputs"]
        outputs = list(signatures[name]["outputs"])
        sessions[name], why_not = open_session(path, graph_input, outputs, *threads, architecture(model, name))
    log.info("execution provider %s (--device %s%s)", sessions[DECODER].provider, config.device,
             f": {why_not}" if why_not else "")  # fmt: skip
    return sessions


def _row_shapes(model: ModelVersion) -> dict[str, tuple[int, ...]]:
    return {ENCODER: model.image_shape, DECODER: (model.latent_dim,)}


def warm_up(model: ModelVersion, sessions: dict[str, Session], config: ServeConfig) -> None:
    """Runs each session at one row and at a full batch (what the batcher runs), timing both (runtime.Cost)."""
    for name, session in sessions.items():
        session.warm_up(_row_shapes(model)[name], config.max_batch_size)


def add_heavy(model: ModelVersion, sessions: dict[str, Session], config: ServeConfig) -> None:
    """Each graph's sessions for heavy batches, measured, then built and warmed (runtime.Session.add_heavy)."""
    shapes = _row_shapes(model)
    for name, session in sessions.items():  # every graph measured before any builds what it keeps (runtime)
        session.measure_heavy(shapes[name], config.max_batch_size)
        trim()  # the candidate sessions measuring built and dropped go back to the OS before the next's
    for name, session in sessions.items():
        session.add_heavy(shapes[name], config.max_batch_size)
    described = "; ".join(f"{name}: {session.describe()}" for name, session in sessions.items())
    log.info("version %d: sessions for heavy batches ready (%s)", model.version, described)


def load_start_up(config: ServeConfig) -> list[Loaded]:
    """The versions --version-policy serves at start-up, verified, with warmed sessions; a failure stops the
    server with its message, except that latest:N and all skip versions that do not verify (so one bad export
    cannot take a server down) as long as one does."""
    policy = config.policy
    variants = (config.variant,)
    if policy.kind == "specific":
        models = [open_version(config.repo, config.name, v, variants) for v in policy.versions]
    else:  # the newest that verifies, as one version always was; then older ones, up to the policy's count
        models = [open_version(config.repo, config.name, "latest", variants, skipped=log.warning)]
        for number in reversed([v for v in version_numbers(config.repo, config.name) if v < models[0].version]):
            if len(models) == policy.most:
                break
            path = models[0].path.parent / str(number)
            if (path / MODEL_JSON).is_file():
                try:
                    models.append(verify_version(path, variants))
                except RepositoryError as exc:
                    log.warning("version %d skipped: %s", number, exc)
    loaded = []
    for model in models:
        message_limit(model, config)  # a limit too small for the model stops the server here
        log.info("model %s version %d (%s graphs) from %s", model.name, model.version, model.variant, model.path)
        log.info("latent_dim %d, image_shape %s, likelihood %s", model.latent_dim, list(model.image_shape),
                 model.likelihood)  # fmt: skip
        sessions = open_sessions(model, config)
        warm_up(model, sessions, config)
        add_heavy(model, sessions, config)  # nothing is served yet: no version to wait for
        loaded.append(Loaded(model, sessions))
    return sorted(loaded, key=lambda item: item.model.version)


def load_version(path: Path, config: ServeConfig, message_bytes: int) -> Loaded:
    """One version loaded while serving (in a thread), without its sessions for heavy batches (add_heavy, once
    what it replaces is freed): each step's failure is a LoadFailed naming it."""
    version = int(path.name)
    if not (path / MODEL_JSON).is_file():
        raise LoadFailed(version, "not_found", f"{path / MODEL_JSON} is gone")
    try:
        model = verify_version(path, (config.variant,))
    except RepositoryError as exc:
        raise LoadFailed(version, "verify", str(exc)) from exc
    trim()  # what verifying freed goes back to the OS before the serving sessions take their own
    try:
        needed = message_limit(model, config)
    except VaeserveError as exc:
        raise LoadFailed(version, "limits", str(exc)) from exc
    if needed > message_bytes:
        why = (f"its largest call needs {needed / MB:.2f} MiB messages, more than this server's "
               f"{message_bytes / MB:.2f} MiB (restart it to serve this version)")  # fmt: skip
        raise LoadFailed(version, "limits", why)
    try:
        sessions = open_sessions(model, config)
    except Exception as exc:  # onnxruntime's own exception types, DeviceError
        raise LoadFailed(version, "session", str(exc)) from exc
    try:
        warm_up(model, sessions, config)
    except Exception as exc:
        raise LoadFailed(version, "warm_up", str(exc)) from exc
    return Loaded(model, sessions)


def make_batchers(config: ServeConfig, loaded: Loaded, metrics: Metrics, tracing: Tracing | None) -> dict[str, Batcher]:
    """A batcher per graph, by name (encoder, decoder, and likelihood when the decoder has a logits output), each
    built from the graph's description and observed by the metrics (and tracing)."""
    model, sessions = loaded.model, loaded.sessions
    specs = {ENCODER: graphs.encoder(model.image_shape, model.latent_dim),
             DECODER: graphs.decoder(model.image_shape, model.latent_dim)}  # fmt: skip
    runners = dict(sessions)
    if model.has_logits:  # the decoder's session again, asked for its logits
        specs[LIKELIHOOD] = graphs.likelihood(model.image_shape, model.latent_dim, model.likelihood, model.log_sigma)
        runners[LIKELIHOOD] = sessions[DECODER].with_outputs([LOGITS])
    else:
        log.warning("version %d's decoder has no logits output (an older export): Score answers FAILED_PRECONDITION "
                    "on it", model.version)  # fmt: skip
    inline_s = config.inline_budget_s
    if inline_s is None:
        inline_s = auto_inline_budget_s()
    batchers = {}
    for name, spec in specs.items():
        observer = metrics.graph(name)
        if tracing is not None:
            observer = tracing.observer(name, observer)
        batchers[name] = Batcher(spec, runners[name], observer, max_rows=config.max_batch_size,
                                 max_delay_s=config.max_batch_delay_ms / 1000, max_queue=config.max_queue,
                                 inline_rows=runners[name].inline_rows(inline_s, config.max_batch_size))  # fmt: skip
    why = "--inline-budget-us"
    if config.inline_budget_s is None:
        why = (f"auto: how long one batch may hold the event loop, or the round trip to the worker thread where "
               f"longer ({worker_handoff_s() * 1e6:.0f} us, measured at start)")  # fmt: skip
    log.info("version %d: batches run on the event loop up to %d rows (encoder) and %d rows (decoder): predicted "
             "within %.0f us (%s)", model.version, batchers[ENCODER].inline_rows, batchers[DECODER].inline_rows,
             inline_s * 1e6, why)  # fmt: skip
    return batchers


@dataclass(eq=False)
class Served:
    """A version being served: what calls on it use, and how many are on it now."""

    loaded: Loaded
    batchers: dict[str, Batcher]
    info: vae_pb2.ModelInfo
    inflight: int = 0
    retired: bool = False  # out of the served set: freed when the last call on it ends
    freed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model(self) -> ModelVersion:
        return self.loaded.model

    @property
    def version(self) -> int:
        return self.loaded.model.version

    @property
    def encoder(self) -> Batcher:
        return self.batchers[ENCODER]

    @property
    def decoder(self) -> Batcher:
        return self.batchers[DECODER]

    @property
    def likelihood(self) -> Batcher | None:
        """None for versions whose decoder has no logits output."""
        return self.batchers.get(LIKELIHOOD)

    @property
    def row_seconds(self) -> dict[str, float]:
        """Each graph's predicted seconds per row (warm-up); the likelihood graph runs the decoder's session."""
        decoder = self.loaded.sessions[DECODER].cost.per_row_s
        return {ENCODER: self.loaded.sessions[ENCODER].cost.per_row_s, DECODER: decoder, LIKELIHOOD: decoder}


@dataclass
class Failure:
    """Why a version failed to load (the message: the exception's traceback would keep the failed step's
    sessions alive), and its folder as it was then (retried under poll once it changes)."""

    message: str
    stamp: tuple


class Held:
    """`with models.using(version) as served:` holds `served` for the block. A class rather than a
    @contextlib.contextmanager: every call enters one, and a generator's three extra frames cost each call
    (BENCHMARKS.md, "Design measurements")."""

    __slots__ = ("models", "served")

    def __init__(self, models: Models, served: Served) -> None:
        self.models, self.served = models, served

    def __enter__(self) -> Served:
        self.served.inflight += 1
        return self.served

    def __exit__(self, *exc: object) -> None:
        served = self.served
        served.inflight -= 1
        if served.retired and not served.inflight:
            self.models.free(served)


@dataclass
class Models:
    """The served versions, by number, and the loads and unloads that change them."""

    config: ServeConfig
    metrics: Metrics
    tracing: Tracing | None
    message_bytes: int
    served: dict[int, Served] = field(default_factory=dict)  # ascending
    # Called after every change of the served set (admission's row costs, health).
    changed: list[Callable[[Models], None]] = field(default_factory=list)
    loading: int | None = None  # the version being loaded now
    failed: dict[int, Failure] = field(default_factory=dict)
    unloaded: bool = False  # every version was unloaded on request (explicit)
    missing: tuple[int, ...] | None = None  # the versions there were when the policy last found none it picks
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _retired: set[Served] = field(default_factory=set)  # retired, not freed yet
    _freeing: set[asyncio.Task] = field(default_factory=set)
    # What stop() cancels: the poll loop, the scans SIGHUP asked for, sessions for heavy batches being added.
    _background: set[asyncio.Task] = field(default_factory=set)
    _closed: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.config.repo) / self.config.name

    @property
    def newest(self) -> Served | None:
        return self.served[next(reversed(self.served))] if self.served else None

    def add(self, loaded: list[Loaded]) -> None:
        """The start-up versions (their batchers start with `start`)."""
        self._publish({item.model.version: self._serve(item) for item in loaded})

    def _serve(self, loaded: Loaded) -> Served:
        batchers = make_batchers(self.config, loaded, self.metrics, self.tracing)
        return Served(loaded, batchers, model_info(loaded.model, loaded.provider, self.config.limits))

    def row_seconds(self) -> dict[str, float]:
        """Per graph, the most seconds per row any served version takes: what admission charges."""
        costs = [s.row_seconds for s in self.served.values()]
        return {graph: max(c[graph] for c in costs) for graph in costs[0]} if costs else {}

    # Calls.

    def get(self, version: int) -> Served:
        """The served version `version` names (0: the newest)."""
        if version < 0 or version > MAX_VERSION:
            raise InvalidArgument("model_version", f"expected 0 (the newest served) or a version number, got {version}")
        if not self.served:
            raise NoVersion(f"no version of {self.config.name} is served (all unloaded): load one, or retry later")
        if version == 0:
            return self.newest
        served = self.served.get(version)
        if served is None:
            raise NotFound(f"model_version: version {version} is not served (served: {self.versions_text()})")
        return served

    def using(self, version: int) -> Held:
        """The version `version` names, held for the block: it is not freed before the block ends."""
        return Held(self, self.get(version))

    def versions_text(self) -> str:
        return _listed(self.served)

    # Changes.

    def start(self) -> None:
        """Starts the served versions' batchers, and the repository scans under --model-control poll."""
        for served in self.served.values():
            for batcher in served.batchers.values():
                batcher.start()
        if self.config.model_control == "poll":
            self._task(self._polling(), "model-poll")

    def _task(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """No more loads; every version's batchers stopped (after the server stopped taking calls)."""
        self._closed = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        async with self._lock:  # a load under way finishes its step first; its version is then dropped
            for served in self.served.values():
                await _stop(served)
            self.served = {}
        await asyncio.gather(*self._freeing, return_exceptions=True)

    def rescan(self) -> None:
        """A scan of the repository now (SIGHUP), under --model-control poll; nothing otherwise."""
        if self.config.model_control == "poll" and not self._closed:
            self._task(self._scan(), "model-rescan")

    async def _polling(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            await self._scan()

    async def _scan(self) -> None:
        try:
            await self.load(retry_failed=False)
        except (LoadFailed, ShuttingDown):
            pass  # logged and counted where it failed; the next scan tries again only once the folder changes
        except Exception:  # a bug must not end the scans
            log.exception("repository scan failed")

    async def load(self, retry_failed: bool = True) -> list[int]:
        """Brings the served set to what --version-policy picks from the repository now: new versions loaded,
        those no longer picked retired. The served versions; a LoadFailed (the first failure) when a version the
        policy picks could not be loaded, after serving what could be. `retry_failed` False (polling): a version
        that failed is skipped until its folder changes."""
        async with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down: no more loads")
            policy = self.config.policy
            available = [v for v in version_numbers(self.config.repo, self.config.name)
                         if (self.folder / str(v) / MODEL_JSON).is_file()]  # fmt: skip
            chosen: dict[int, Served] = {}
            failures: list[LoadFailed] = []
            for number in policy.order(available):
                if len(chosen) == policy.most:
                    break
                if number in self.served:
                    chosen[number] = self.served[number]
                    continue
                stamp = _stamp(self.folder / str(number))
                failure = self.failed.get(number)
                if failure is not None and failure.stamp == stamp and not retry_failed:
                    continue
                try:
                    chosen[number] = await self._load(number)
                except LoadFailed as exc:
                    self.failed[number] = Failure(str(exc), stamp)
                    failures.append(exc)
            if not chosen:  # what is served keeps serving
                if failures:
                    raise failures[0]
                why = f"no version in {self.folder} matches --version-policy {policy} (complete: {_listed(available)})"
                missing = LoadFailed(None, "not_found", why)
                if retry_failed or self.missing != tuple(available):  # under poll: once, not once a scan
                    self._failed(missing)
                self.missing = tuple(available)
                raise missing
            self.missing = None
            self.unloaded = False
            added = [served for number, served in chosen.items() if number not in self.served]
            self._publish(chosen)
            if added:
                self._task(self._add_heavy(added), "model-heavy-sessions")
            if failures:
                raise failures[0]
            return list(self.served)

    async def _load(self, number: int) -> Served:
        log.info("version %d: loading (serving %s meanwhile)", number, self.versions_text())
        start = time.perf_counter()
        self.loading = number
        try:
            loaded = await asyncio.to_thread(load_version, self.folder / str(number), self.config, self.message_bytes)
        except LoadFailed as exc:
            self._failed(exc)
            raise
        finally:
            self.loading = None
        if self._closed:  # SIGTERM came while it loaded: nothing more starts
            raise ShuttingDown("the server is shutting down: no more loads")
        served = self._serve(loaded)
        for batcher in served.batchers.values():
            batcher.start()
        log.info("version %d: verified, sessions open and warm in %.2f s", number, time.perf_counter() - start)
        return served

    async def _add_heavy(self, added: list[Served]) -> None:
        """The sessions for heavy batches of the versions a load added, built once every retired version is
        freed (the module's docstring says why), under the load lock: the next load starts after them."""
        await asyncio.gather(*(served.freed.wait() for served in list(self._retired)))
        async with self._lock:
            for served in added:
                if served.retired:
                    continue
                try:
                    await asyncio.to_thread(add_heavy, served.model, served.loaded.sessions, self.config)
                except Exception as exc:  # onnxruntime's own exception types: the version serves on without them
                    log.error("version %d: sessions for heavy batches not built (%s): its heavy batches run without "
                              "spinning", served.version, exc)  # fmt: skip

    def _failed(self, exc: LoadFailed) -> None:
        log.error("%s; still serving version(s) %s", exc, self.versions_text())
        self.metrics.model_load_failures.labels(exc.reason).inc()

    async def unload(self) -> None:
        """Retires every served version (explicit): calls on them finish, new calls are refused until a load."""
        async with self._lock:
            if self.served:
                log.warning("unloading every version (%s) on request: calls are refused until a load",
                            self.versions_text())  # fmt: skip
            self.unloaded = True
            self._publish({})

    def _publish(self, chosen: dict[int, Served]) -> None:
        """The served set becomes `chosen`, in one step: new calls see only it from now on."""
        old, self.served = self.served, dict(sorted(chosen.items()))
        added = [v for v in self.served if v not in old]
        for number, served in old.items():
            if number not in self.served:
                served.retired = True
                self._retired.add(served)
                log.info("version %d: retired (%d call(s) still on it)", number, served.inflight)
                if not served.inflight:
                    self.free(served)
        if added or len(old) != len(self.served):
            log.info("serving version(s) %s", self.versions_text())
        self.metrics.set_model_info(self.config.name, [(s.version, s.loaded.provider, s.model.variant)
                                                       for s in self.served.values()])  # fmt: skip
        for listener in self.changed:
            listener(self)

    def free(self, served: Served) -> None:
        """Frees a retired version's sessions, in the background: once no call is on it."""
        task = asyncio.get_running_loop().create_task(self._freed(served), name=f"free-{served.version}")
        self._freeing.add(task)
        task.add_done_callback(self._freeing.discard)

    async def _freed(self, served: Served) -> None:
        await _stop(served)
        held = [weakref.ref(s) for graph in served.loaded.sessions.values() for s in graph.onnx_sessions()]
        served.batchers.clear()
        served.loaded.sessions.clear()  # the last references to the version's sessions: onnxruntime frees them
        if not release(held):
            log.warning("version %d: %s: freed by a full garbage collection on the event loop", served.version,
                        CYCLE_HELD)  # fmt: skip
        await asyncio.to_thread(trim)  # it walks the heap: not on the event loop
        self._retired.discard(served)
        served.freed.set()
        log.info("version %d: freed", served.version)

    def index(self) -> list[tuple[int, str, str]]:
        """Every complete version in the repository (newest first) as (version, state, reason)."""
        numbers = set(self.served)
        numbers.update(v for v in version_numbers(self.config.repo, self.config.name)
                       if (self.folder / str(v) / MODEL_JSON).is_file())  # fmt: skip
        rows = []
        for number in sorted(numbers, reverse=True):
            if number in self.served:
                rows.append((number, "READY", ""))
            elif number == self.loading:
                rows.append((number, "LOADING", ""))
            elif number in self.failed:
                rows.append((number, "UNAVAILABLE", self.failed[number].message))
            else:
                why = "unloaded" if self.unloaded else f"not picked by --version-policy {self.config.policy}"
                rows.append((number, "UNAVAILABLE", why))
        return rows


async def _stop(served: Served) -> None:
    for batcher in served.batchers.values():
        await batcher.stop()


def _listed(numbers: Iterable[int]) -> str:
    return ", ".join(map(str, numbers)) or "none"


def _stamp(folder: Path) -> tuple:
    """What a version folder holds now (names, sizes, modification times): a copy still being written changes it."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))
    except OSError:
        return ()
