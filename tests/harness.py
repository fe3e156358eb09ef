"""One harness for tests, load runs and benchmarks: free loopback ports, server processes that are started,
waited on until ready, and stopped (SIGTERM, then SIGKILL) however the caller ends, and the clients that load them
and count how their calls end (`attempt`, `Tally`, `closed_loop`).

`vaeserve_process(...)` starts a real `vaeserve serve` through the real CLI (`python -m vaeserve.cli serve ...`), ready
when the standard health service says SERVING and the process logged it (with --reuse-port another process
may answer on the same port). Other servers (the benchmark's baselines) are ready when `answers` says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
POLL_S = 0.05  # between readiness checks: a condition polled, never a fixed sleep standing in for one
METHOD = "/vae.v1.VaeService/"  # prefix of the raw method paths hostile callers send bytes to
_SERVING_LINE = re.compile(r"\bSERVING\b")  # the start-up log line, not NOT_SERVING


class ServerFailed(RuntimeError):
    """A server that exited or never became ready; the message ends with its log."""


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0, poll: float = 0.002) -> None:
    """Polls `condition` until it holds; fails naming `what` after `timeout` s. Tests synchronise on the state
    they wait for, never on fixed sleeps."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def free_ports(n: int, taken: Sequence[int] = ()) -> list[int]:
    """`n` distinct free loopback ports, none of them in `taken` (ports chosen but not yet listened on). Every
    socket stays bound until all are: a port is free again once its socket closes, so ports picked one by one can
    repeat."""
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        while len(ports) < n:  # at most n + len(taken) sockets: the kernel never hands out a bound port twice
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            if (port := s.getsockname()[1]) not in taken:
                ports.append(port)
    return ports


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def health_status(target: str, service: str = "", timeout: float = 5.0) -> int:
    """The standard health service's answer for `service` (raises grpc.RpcError when there is none)."""
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return response.status


class ServerProcess:
    """A server subprocess logging to `log`; `with` starts it and waits for `ready(self)`, and stops it after."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        port: int,
        ready: Callable[[ServerProcess], bool],
        metrics_port: int = 0,
        env: dict[str, str] | None = None,
        name: str = "server",
        own_group: bool = False,
        health_port: int = 0,
    ) -> None:
        """own_group: the process leads its own process group and stop() signals the group (servers with children).
        health_port: where the plaintext health service is, when not on `port` (a TLS server's --health-port)."""
        self.argv, self.log, self.port, self.ready = list(argv), log, port, ready
        self.metrics_port, self.name, self.own_group = metrics_port, name, own_group
        self.health_port = health_port
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=self.own_group)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(f"{self.name} exited {self.process.returncode} while starting:\n{self.output()}")
            with contextlib.suppress(grpc.RpcError):
                if self.ready(self):
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerFailed(f"{self.name} not ready after {timeout:g} s:\n{self.output()[-3000:]}")
            time.sleep(POLL_S)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the graceful drain, as in production), SIGKILL after `timeout`; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                self.process.wait()
        if self.own_group:  # what the server left in its group (children it spawned)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode

    def _kill(self) -> None:
        if self.own_group:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.own_group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, default: float | None = None) -> float:
        """The value of one exposition line, e.g. 'vaeserve_batch_size_sum{graph="decoder"}'."""
        (value,) = self.metric_values(name, default=default)
        return value

    def metric_values(self, *names: str, default: float | None = None) -> tuple[float, ...]:
        """Several exposition lines' values from one scrape: a consistent view of counters that move together."""
        values = {line.split()[0]: float(line.split()[-1]) for line in self.metrics().splitlines()
                  if line and not line.startswith("#")}  # fmt: skip
        if default is None and (missing := [n for n in names if n not in values]):
            raise KeyError(missing[0])
        return tuple(values.get(name, default) for name in names)


def vaeserve_ready(server: ServerProcess) -> bool:
    target = f"127.0.0.1:{server.health_port}" if server.health_port else server.target
    return health_status(target, timeout=2) == health_pb2.HealthCheckResponse.SERVING and bool(
        _SERVING_LINE.search(server.output())
    )


def explorer_ready(process: ServerProcess) -> bool:
    """A `vaeserve explore` process answers its model call."""
    try:
        with urllib.request.urlopen(f"http://{process.target}/api/model", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def serve_argv(repo: Path, *flags: str, port: int, metrics_port: int, name: str = "vae") -> list[str]:
    return [sys.executable, "-m", "vaeserve.cli", "serve", "--repo", str(repo), "--name", name,
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port), *flags]  # fmt: skip


def vaeserve_process(
    repo: Path,
    log: Path,
    *flags: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    name: str = "vae",
    argv: Sequence[str] | None = None,
    with_health_port: bool = False,
) -> ServerProcess:
    """A `vaeserve serve` of REPO/NAME on loopback (on `port`, else a free one; metrics on a free port), not yet
    started: use it in `with`, or call start(). `argv` replaces the command line (ports then come from `env`).
    with_health_port: give it a plaintext health-only port (--health-port), which readiness then asks (TLS servers)."""
    chosen, metrics_port, health = free_ports(3, taken=(port,) if port else ())
    port, health = port or chosen, health if with_health_port else 0
    if argv is None:
        argv = serve_argv(repo, *flags, port=port, metrics_port=metrics_port, name=name)
        if health:
            argv += ["--health-port", str(health)]
    return ServerProcess(argv, log, port, vaeserve_ready, metrics_port, env, name="vaeserve serve", health_port=health)


@contextlib.contextmanager
def serving(repo: Path, log: Path, *flags: str, **kwargs: object) -> Iterator[ServerProcess]:
    """A started `vaeserve serve` that is stopped (if the caller did not stop it) however the block ends."""
    with vaeserve_process(repo, log, *flags, **kwargs) as server:
        yield server


def answers(method: str, request: bytes | Path) -> Callable[[ServerProcess], bool]:
    """Ready when the server answers `method` with OK for `request` (raw bytes, or a file the server itself
    writes before it listens): what "ready" means for servers whatever their own health API."""

    def ready(server: ServerProcess) -> bool:
        if isinstance(request, Path) and not request.is_file():
            return False
        data = request.read_bytes() if isinstance(request, Path) else request
        with grpc.insecure_channel(server.target) as channel:
            channel.unary_unary(method)(data, timeout=2)
        return True

    return ready


UNLIMITED_MESSAGES = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
OK = grpc.StatusCode.OK


@dataclass(frozen=True)
class Outcome:
    """How one call ended: its status, the refusal's details, the reply's bytes (a raw call's), and when it was sent
    and when it ended (time.perf_counter)."""

    code: grpc.StatusCode
    details: str
    reply: bytes
    sent: float
    ended: float

    @property
    def ms(self) -> float:
        return (self.ended - self.sent) * 1e3


async def attempt(call: grpc.aio.UnaryUnaryMultiCallable, request: bytes, timeout: float) -> Outcome:
    """One call of `call` (a raw method: bytes in, bytes out); how it ended. The one place the clients of the tests
    and benchmarks read a call's status."""
    sent = time.perf_counter()
    try:
        reply = await call(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "", b"", sent, time.perf_counter())
    return Outcome(OK, "", reply, sent, time.perf_counter())


@dataclass
class Tally:
    """Calls counted by status (by code name, as the benchmarks print them), the latencies of those answered (ms),
    and the details each refused code first came with."""

    statuses: collections.Counter = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.statuses[outcome.code.name] += 1
        if outcome.code == OK:
            self.latencies_ms.append(outcome.ms)
        else:
            self.details.setdefault(outcome.code.name, outcome.details)


async def closed_loop(
    call: grpc.aio.UnaryUnaryMultiCallable,
    request: bytes,
    record: Callable[[Outcome], object],
    until: float,
    timeout: float,
    max_calls: int = sys.maxsize,
    backoff: Callable[[int], float] | None = None,
) -> None:
    """One client that sends `request` again as soon as its previous call ended, until time.perf_counter() reaches
    `until` or it made `max_calls` calls; `record` gets each outcome. A refused call is retried at once, or after
    backoff(n) seconds for the n-th refusal in a row (a client's retry policy)."""
    refused = 0
    for _ in range(max_calls):
        if time.perf_counter() >= until:
            return
        outcome = await attempt(call, request, timeout)
        record(outcome)
        refused = 0 if outcome.code == OK else refused + 1
        if refused and backoff is not None:
            await asyncio.sleep(backoff(refused))


async def closed_loops(
    target: str,
    method: str,
    request: bytes,
    clients: int,
    seconds: float,
    timeout: float,
    max_calls: int = sys.maxsize,
    backoff: Callable[[int], float] | None = None,
) -> Tally:
    """`clients` closed-loop clients (`closed_loop`) of one method (a full path) on one channel for `seconds`."""
    tally = Tally()
    until = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target, options=UNLIMITED_MESSAGES) as channel:
        call = channel.unary_unary(method)
        await asyncio.gather(*(closed_loop(call, request, tally.add, until, timeout, max_calls, backoff)
                               for _ in range(clients)))  # fmt: skip
    return tally


async def at_once(target: str, requests: Sequence[tuple[str, bytes]], timeout: float) -> list[Outcome]:
    """Each (full method path, serialized request) sent at once on one channel without message size limits; how
    each ended, in order."""
    async with grpc.aio.insecure_channel(target, options=UNLIMITED_MESSAGES) as channel:
        return await asyncio.gather(*(attempt(channel.unary_unary(m), d, timeout) for m, d in requests))


async def cancel_storm(
    target: str, work: Sequence[tuple[str, bytes]], seconds: float, callers: int = 16, max_calls: int = 5000
) -> tuple[collections.Counter, collections.Counter]:
    """`callers` normal clients beside as many stormers, on one channel, each going round `work` ((method,
    serialized request) pairs) until `seconds` pass or it made `max_calls` calls. A stormer's call either expires
    after 1 ms or is cancelled within 3 ms. Returns (the normal calls' status counts, the stormers' outcomes)."""
    rng = random.Random(0)
    normal, storm = Tally(), collections.Counter()
    until = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as channel:

        async def stormer(method: str, data: bytes) -> None:
            call = channel.unary_unary(METHOD + method)
            for _ in range(max_calls):
                if time.perf_counter() >= until:
                    return
                if rng.random() < 0.5:
                    expired = await attempt(call, data, timeout=0.001)
                    storm["answered" if expired.code == OK else expired.code.name] += 1
                else:
                    cancelled = call(data, timeout=30)
                    await asyncio.sleep(rng.random() * 0.003)
                    cancelled.cancel()
                    try:
                        await cancelled
                        storm["answered"] += 1
                    except (asyncio.CancelledError, grpc.aio.AioRpcError):
                        storm["cancelled"] += 1

        n = len(work)
        clients = [closed_loop(channel.unary_unary(METHOD + method), data, normal.add, until, timeout=30,
                               max_calls=max_calls)
                   for method, data in (work[i % n] for i in range(callers))]  # fmt: skip
        await asyncio.gather(*clients, *(stormer(*work[i % n]) for i in range(callers)))
    return normal.statuses, storm


class ClientsThroughSigterm:
    """`clients` closed-loop callers of one method on `server`, each call with `timeout`. `await started()` returns
    once each has had a call answered; `send_sigterm()` sends the server SIGTERM. A refused caller stops (as one that
    turns to another replica does: every caller ends with one refusal), or with `retry_for_s` retries at once (as a
    client with a retry policy does) until the server has exited or that many seconds after the signal.
    `await finished()` returns the status counts of the calls sent before the signal and of those sent after it."""

    def __init__(self, channel: grpc.aio.Channel, server: ServerProcess, method: str, request: bytes, clients: int,
                 retry_for_s: float | None = None, timeout: float = 10.0) -> None:  # fmt: skip
        self.server = server
        self.before, self.after = collections.Counter(), collections.Counter()
        self.signalled: list[float] = []
        self._answered, self._all_answered = 0, asyncio.Event()
        call = channel.unary_unary(METHOD + method)

        async def client() -> None:
            for n in itertools.count():
                if (
                    retry_for_s is not None
                    and self.signalled
                    and (server.returncode is not None or time.monotonic() > self.signalled[0] + retry_for_s)
                ):
                    return
                counts = self.after if self.signalled else self.before
                outcome = await attempt(call, request, timeout)
                counts[outcome.code.name] += 1
                if n == 0:
                    self._answered += 1
                    if self._answered == clients:
                        self._all_answered.set()
                if outcome.code != OK and retry_for_s is None:
                    return

        self._tasks = [asyncio.create_task(client()) for _ in range(clients)]

    async def started(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self._all_answered.wait(), timeout)

    def send_sigterm(self) -> None:
        self.signalled.append(time.monotonic())
        self.server.send_signal(signal.SIGTERM)

    async def finished(self) -> tuple[collections.Counter, collections.Counter]:
        await asyncio.gather(*self._tasks)
        return self.before, self.after


class SlowLink:
    """A TCP relay on loopback in front of `target`: a client on a slow network. It reads the server's bytes
    `chunk` at a time, `pause_s` apart, through a small receive buffer, so the server's kernel holds what the
    client has not read yet; the client's bytes go through at once. A reset from the server ends the client's
    side too: what the server had not sent is lost, as on a real network. `with` starts it; the block's end
    closes it and whatever connections it still relays."""

    def __init__(self, target: str, chunk: int = 65536, pause_s: float = 0.005, rcvbuf: int = 16384) -> None:
        host, port = target.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.chunk, self.pause_s, self.rcvbuf = chunk, pause_s, rcvbuf
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SlowLink:
        self._start(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in (self.listener, *self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it (closing would not)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=30)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: the block ended
                return
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before connecting: it sets the window
            try:
                server.connect(self.upstream)
            except OSError:  # the server has gone: so has this connection
                server.close()
                client.close()
                continue
            self._sockets += [client, server]
            self._start(self._relay, server, client, True)
            self._start(self._relay, client, server, False)

    def _relay(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        """One direction of a connection until it ends: an end from the server (a reset, or a write to a server
        that reset) is passed on to the client, whose side is shut (it reads the end of the stream early)."""
        client = sink if from_server else source
        while True:
            try:
                data = source.recv(self.chunk)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except ConnectionError:  # ECONNRESET, EPIPE: the server reset the connection (or the client went away)
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)  # the client reads an early end; the other direction wakes
                return
            except OSError:  # shut or closed by the other direction, or by the block's end
                return
            if from_server:
                time.sleep(self.pause_s)  # the link's pace, not a wait for some condition
