"""Start, probe and stop the servers the serving benchmark compares, each in its own process group.

Every server is probed with the very call the benchmark will send (raw bytes), so "ready" means "answers
that call", whatever the server's own health or readiness API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
BENCH_VENV = ROOT / ".venv-bench"
# pytriton pins numpy<2 and protobuf 6 while vaeserve needs numpy 2 and protobuf 7: its own environment.
BENCH_VENV_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "onnxruntime>=1.20"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process: `with Server(...) as s:` starts it, waits until `probe` answers OK, stops it after."""

    def __init__(
        self, name: str, argv: list[str], port: int, probe: tuple[str, bytes | Path], log: Path, env=None
    ) -> None:
        """probe: (method, request bytes), or a file the server itself writes the request to before it listens."""
        self.name, self.argv, self.port, self.probe, self.log = name, argv, port, probe, log
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            # A new session: stop() signals the whole group, so Triton's tritonserver child goes too.
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_ready(timeout=180)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        method, request = self.probe
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            call = channel.unary_unary(method)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not answering {method} after {timeout:.0f} s\n{self.log_tail()}")
                if isinstance(request, Path) and not request.is_file():
                    time.sleep(0.5)
                    continue
                try:
                    call(request.read_bytes() if isinstance(request, Path) else request, timeout=2)
                    return
                except grpc.RpcError:
                    time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # what the server left in its group (tritonserver, stubs)
            os.killpg(self.process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def bench_python() -> Path:
    """.venv-bench/bin/python with nvidia-pytriton, created on first use (a few hundred MB from PyPI)."""
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".installed"
    if stamp.is_file() and stamp.read_text() == "\n".join(BENCH_VENV_REQUIREMENTS):
        return python
    print(f"creating {BENCH_VENV} for Triton: pip install {' '.join(BENCH_VENV_REQUIREMENTS)}", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter .venv was made from
    subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *BENCH_VENV_REQUIREMENTS], check=True)
    stamp.write_text("\n".join(BENCH_VENV_REQUIREMENTS))
    return python


def triton_env(python: Path) -> dict[str, str]:
    """Triton's Python backend stub embeds libpython: it must be the bench interpreter's own, not the system's
    (a pyenv 3.11.7 stdlib on Debian's 3.11.2 libpython fails in multiprocessing)."""
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    paths = [libdir, os.environ.get("LD_LIBRARY_PATH", "")]
    return {"PYTHONPATH": str(ROOT), "LD_LIBRARY_PATH": ":".join(p for p in paths if p)}
