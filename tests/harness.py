"""One harness for tests, load runs and benchmarks: free loopback ports, and server processes that are started,
waited on until ready, and stopped (SIGTERM, then SIGKILL) however the caller ends.

`vaeserve_process(...)` starts a real `vaeserve serve` through the real CLI (`python -m vaeserve.cli serve ...`), ready
when the standard health service says SERVING and the process logged it (with --reuse-port another process
may answer on the same port). Other servers (the benchmark's baselines) are ready when `answers` says so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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
    import socket

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


async def cancel_storm(
    target: str, work: Sequence[tuple[str, bytes]], seconds: float, callers: int = 16, max_calls: int = 5000
) -> tuple[collections.Counter, collections.Counter]:
    """`callers` normal clients beside as many stormers, on one channel, each going round `work` ((method,
    serialized request) pairs) until `seconds` pass or it made `max_calls` calls. A stormer's call either expires
    after 1 ms or is cancelled within 3 ms. Returns (the normal calls' status counts, the stormers' outcomes)."""
    rng = random.Random(0)
    normal, storm = collections.Counter(), collections.Counter()
    end = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(target) as channel:

        async def client(method: str, data: bytes) -> None:
            call = channel.unary_unary(METHOD + method)
            for _ in range(max_calls):
                if time.monotonic() > end:
                    return
                try:
                    await call(data, timeout=30)
                    normal["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    normal[exc.code().name] += 1

        async def stormer(method: str, data: bytes) -> None:
            call = channel.unary_unary(METHOD + method)
            for _ in range(max_calls):
                if time.monotonic() > end:
                    return
                if rng.random() < 0.5:
                    try:
                        await call(data, timeout=0.001)
                        storm["answered"] += 1
                    except grpc.aio.AioRpcError as exc:
                        storm[exc.code().name] += 1
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
        await asyncio.gather(*(client(*work[i % n]) for i in range(callers)),
                             *(stormer(*work[i % n]) for i in range(callers)))  # fmt: skip
    return normal, storm


class RetryingClients:
    """`clients` callers of one method on `server` that retry every refusal at once, as a client with a retry policy
    does, each call with `timeout`. `await started()` returns once each has had a call answered; `send_sigterm()` sends
    the server SIGTERM; the callers stop once the server has exited or `bound_s` after the signal, and
    `await finished()` returns the status counts of the calls sent after it."""

    def __init__(self, channel: grpc.aio.Channel, server: ServerProcess, method: str, request: bytes, clients: int,
                 bound_s: float, timeout: float = 10.0) -> None:  # fmt: skip
        self.server, self.bound_s = server, bound_s
        self.after: collections.Counter = collections.Counter()
        self.signalled: list[float] = []
        self._answered, self._all_answered = 0, asyncio.Event()
        call = channel.unary_unary(METHOD + method)

        async def client() -> None:
            for n in range(10_000_000):
                if self.signalled and (server.returncode is not None or time.monotonic() > self.signalled[0] + bound_s):
                    return
                sent_after = bool(self.signalled)
                try:
                    await call(request, timeout=timeout)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                if sent_after:
                    self.after[code] += 1
                if n == 0:
                    self._answered += 1
                    if self._answered == clients:
                        self._all_answered.set()

        self._tasks = [asyncio.create_task(client()) for _ in range(clients)]

    async def started(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self._all_answered.wait(), timeout)

    def send_sigterm(self) -> None:
        self.signalled.append(time.monotonic())
        self.server.send_signal(signal.SIGTERM)

    async def finished(self) -> collections.Counter:
        await asyncio.gather(*self._tasks)
        return self.after
