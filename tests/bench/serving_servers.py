"""The servers the serving benchmark compares, started, probed and stopped by tests/harness.py, and the
separate environment the Triton baseline needs.

Every server is probed with the very call the benchmark will send (raw bytes), so "ready" means "answers
that call", whatever the server's own health or readiness API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, ServerProcess, answers

BENCH_VENV = ROOT / ".venv-bench"
# pytriton pins numpy<2 and protobuf 6 while vaeserve needs numpy 2 and protobuf 7: its own environment.
BENCH_VENV_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "onnxruntime>=1.20"]


def server(
    name: str, argv: list[str], port: int, probe: tuple[str, bytes | Path], log: Path, env=None
) -> ServerProcess:
    """A benchmark server in its own process group (stop() ends Triton's tritonserver child too), ready once it
    answers `probe` (method, request bytes or a file the server writes before it listens): what "ready" means
    whatever the server's own health API."""
    return ServerProcess(argv, log, port, answers(*probe), env=env, name=name, own_group=True)


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
