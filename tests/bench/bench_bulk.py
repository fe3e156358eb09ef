"""Bulk embedding benchmark: the 10,000 MNIST test digits as PNG files, embedded by a 28x28 MNIST MLP.

(a) CLI          `vaeserve encode FOLDER --out emb.npy` in a subprocess: images/s, its peak RSS, the server's
(b) encode_many  over the PNG paths, over the decoded arrays (one item per image), and over them as one array
(c) in-process   onnxruntime on the same encoder.onnx and decoded arrays, in batches of the rows a call carries
(d) decoding     client/images.py's read_file over the 10,000 files alone, on one thread (as the CLI reads)
Goals (issue 28): the CLI limited by image decoding rather than by the server (the slower of (d) and the server
path without decoding, encode_many over arrays, is the limiter); encode_many >= 50% of the in-process encoder.
Each figure is the best of REPEAT runs. The PNGs and the model are kept under runs/ for the next run.

    python -m tests.bench.bench_bulk
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from tests.harness import ROOT, ServerProcess, vaeserve_process
from vaeserve.client.api import VaeClient
from vaeserve.client.bulk import rows_per_call
from vaeserve.client.images import read_file

from . import mnist
from .bench_serving import find_or_export
from .report import markdown_table, write_section
from .serving_model import load_graphs

WORK = ROOT / "runs" / "bench-bulk"
PNGS = WORK / "mnist_png"
SHARE_GOAL = 0.5  # encode_many's images/s as a share of the in-process encoder's
REPEAT = 2  # runs of each measurement, the fastest kept: the machine may be shared
T = TypeVar("T")


def write_pngs(images: np.ndarray) -> list[Path]:
    """images [N, 28, 28] as PNGS/NNNNN.png, written once (kept while all N are there)."""
    paths = [PNGS / f"{i:05d}.png" for i in range(len(images))]
    if not all(path.is_file() for path in paths):
        PNGS.mkdir(parents=True, exist_ok=True)
        for path, image in zip(paths, images, strict=True):
            Image.fromarray(image).save(path)
    return paths


def best_rate(n: int, run: Callable[[], T], repeat: int) -> tuple[float, T]:
    """(n / the fastest of `repeat` runs of run(), in images/s; what the last run returned)."""
    fastest = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        fastest = min(fastest, time.perf_counter() - start)
    return n / fastest, result


def vm_kib(pid: int, field: str) -> int:
    """A /proc/PID/status figure in KiB: VmHWM is the peak resident set so far, VmRSS the current one."""
    return vm_kib_line(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                            if line.startswith(f"{field}:")))  # fmt: skip


def vm_kib_line(line: str) -> int:
    """KiB of a /proc/PID/status line such as "VmHWM:   12345 kB"."""
    _, kib, unit = line.split()
    if unit != "kB":
        raise ValueError(f"not a memory line of /proc/PID/status: {line!r}")
    return int(kib)


# The CLI's entry point (what the `vaeserve` script runs), then its own peak RSS as its last stderr line. A child's
# wait4 rusage cannot tell it: Linux keeps across exec the peak of the memory the child held before, and a child
# forked or vforked from this process held (or shared) hundreds of MB of decoded images and sessions.
CLI_WITH_PEAK = (
    "import sys; from vaeserve.cli import main; code = main(sys.argv[1:]); "
    "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')), end='', file=sys.stderr); "
    "sys.exit(code)"
)


def cli_encode(server: ServerProcess, out: Path) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of `vaeserve encode PNGS --out OUT`, as a user runs it (stderr not a terminal:
    progress as plain lines, into a log)."""
    argv = [sys.executable, "-c", CLI_WITH_PEAK, "encode", "--target", server.target, str(PNGS), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    (WORK / "encode.log").write_text(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"vaeserve encode exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds, vm_kib_line(done.stderr.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help; no flags
    if not mnist.available():
        raise SystemExit(f"{mnist.MNIST_DIR}: no MNIST test images (set MNIST_DIR): nothing to measure")
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    digits, _ = mnist.t10k()
    paths = write_pngs(digits)
    n = len(paths)
    model_dir = find_or_export("mnist-mlp")
    shape = (1, 28, 28)

    decode_rate, decoded = best_rate(n, lambda: [read_file(path, shape)[0] for path in paths], REPEAT)
    arrays = [np.rint(x[0] * 255).astype(np.uint8) for x in decoded]  # the PNGs' pixels, as the CLI sends them
    stacked = np.stack(arrays)

    server = vaeserve_process(model_dir.parents[1], WORK / "serve.log", "--version", model_dir.name)
    with server, VaeClient(server.target, timeout=300) as client:
        assert server.process is not None
        rss_started = vm_kib(server.process.pid, "VmRSS")
        cli = [cli_encode(server, WORK / "emb.npy") for _ in range(REPEAT)]
        cli_seconds, cli_rss = min(s for s, _ in cli), max(r for _, r in cli)
        server_peak = vm_kib(server.process.pid, "VmHWM")
        assert len(np.load(WORK / "emb.npy")) == n
        rows = rows_per_call(client.info(), client.max_message_bytes)

        def drain(items: list) -> None:
            assert sum(1 for _ in client.encode_many(items)) == n

        items = {"PNG paths": paths, "decoded arrays, one item per image": arrays,
                 f"decoded arrays, one item [{n:,}, 1, 28, 28]": [stacked]}  # fmt: skip
        many = {what: best_rate(n, lambda i=i: drain(i), REPEAT)[0] for what, i in items.items()}
    graphs = load_graphs(model_dir)
    floats = stacked.astype(np.float32) / 255  # what the server turns the uint8 rows into
    name = graphs.encoder.get_inputs()[0].name

    def in_process() -> None:
        for i in range(0, n, rows):
            graphs.encoder.run(None, {name: floats[i : i + rows]})

    inproc_rate, _ = best_rate(n, in_process, REPEAT)
    cli_rate = n / cli_seconds
    server_path = many["decoded arrays, one item per image"]
    limiter = "image decoding" if decode_rate < server_path else "the server path"
    share = server_path / inproc_rate
    mib = lambda kib: f"{kib / 1024:.0f} MiB"  # noqa: E731

    table = markdown_table(
        ["path", "images/s", "note"],
        [
            ["(a) `vaeserve encode FOLDER --out emb.npy` (CLI)", f"{cli_rate:,.0f}",
             f"client peak RSS {mib(cli_rss)}; server RSS {mib(rss_started)} when ready, peak {mib(server_peak)}"],
            *[[f"(b) `encode_many`, {what}", f"{rate:,.0f}", f"{rate / inproc_rate:.0%} of in-process"]
              for what, rate in many.items()],
            [f"(c) in-process encoder (onnxruntime, batches of {rows:,})", f"{inproc_rate:,.0f}", "the ceiling"],
            ["(d) PNG decoding alone (`read_file`, one thread)", f"{decode_rate:,.0f}",
             f"CLI at {cli_rate / decode_rate:.0%} of it"],
        ],
    )  # fmt: skip
    goals = markdown_table(
        ["goal", "measured", "result"],
        [
            ["the CLI limited by image decoding, not by the server",
             f"decoding {decode_rate:,.0f}/s vs server path (encode_many over arrays) {server_path:,.0f}/s: "
             f"limited by {limiter}", "pass" if limiter == "image decoding" else "**FAIL**"],
            [f"`encode_many` ≥ {SHARE_GOAL:.0%} of the in-process encoder (decoded arrays)", f"{share:.0%}",
             "pass" if share >= SHARE_GOAL else "**FAIL**"],
        ],
    )  # fmt: skip
    body = "\n\n".join(
        [
            f"The {n:,} MNIST test digits (../shared/data/mnist) written as 28x28 PNG files, embedded by the serving "
            "benchmark's MNIST MLP (784-400-20) served by `vaeserve serve` with its defaults, client and server on "
            f"the same machine; best of {REPEAT} runs. Peak RSS: VmHWM, the CLI's at its exit, the server's "
            "(its whole life up to the CLI runs). (d) is what the CLI cannot go faster than while it decodes on one "
            "thread; the server path is `encode_many` over the decoded arrays.",
            goals,
            table,
            "Reproduce: `.venv/bin/python -m tests.bench.bench_bulk` (`make bench` runs it).",
        ]
    )
    write_section("bulk", f"Bulk embedding: {n:,} MNIST PNGs through the CLI and encode_many", body)
    print(body)
    print(f"\nwrote BENCHMARKS.md (bulk) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
