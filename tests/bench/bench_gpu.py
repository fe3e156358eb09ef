"""GPU benchmark: the CUDA path of the server, on a machine with an NVIDIA GPU and onnxruntime-gpu.

For each model version given, and for the CUDA and the CPU session of the same graphs:
    parity      max |CUDA - CPU| of every graph output at 1, 256 and 1,024 rows (runtime.open_session, the
                sessions the server opens; CUDA runs with IO binding)
    in-process  images/s of the encoder and the decoder at 1,024 rows
    served      a real `vaeserve serve --device cuda` against `--device cpu` on the same machine: the provider
                each reports in `vaeserve_model_info`, and Encode(256), Sample(64) and Sample(1024) at 1 and
                16 closed-loop clients (tests/bench/serving_loadgen.py)
Fails (exit 1) when CUDA is not used or parity is off; writes the "GPU" section of BENCHMARKS.md.

    python -m tests.bench.bench_gpu [--version-dir models/vae/1 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.bench.bench_serving import VAE_METHOD, Call, find_or_export
from tests.bench.report import markdown_table, write_section
from tests.bench.serving_model import load_graphs, runs_per_second
from tests.harness import ROOT, serving
from vaeserve.server.runtime import CPU, CUDA, open_session

CALLS = (Call("Encode", 256), Call("Sample", 64), Call("Sample", 1024))
CONCURRENCY = ("1", "16")
DEVICES = ("cuda", "cpu")  # the GPU first: a machine without one fails at once
PARITY_ROWS = (1, 256, 1024)
PARITY_TOLERANCE = 1e-3  # float32 kernels differ in summation order; a wrong graph differs by O(1)


def label(version: Path) -> str:
    """REPO/NAME/VERSION, as the tables name a version."""
    return "/".join(version.parts[-3:])


def graph_io(version: Path) -> dict[str, tuple[str, list[str], tuple[int, ...]]]:
    """graph -> (input name, output names, one row's shape), from the ONNX graphs themselves."""
    graphs = load_graphs(version)
    return {
        "encoder": ("image", ["mean", "log_variance"], graphs.image_shape),
        "decoder": ("latent", ["image"], (graphs.latent_dim,)),
    }


def in_process(version: Path) -> tuple[list[list[str]], bool]:
    rows, ok = [], True
    for graph, (name, outputs, shape) in graph_io(version).items():
        path = version / f"{graph}.onnx"
        sessions = {}
        for device in DEVICES:
            session, why_not = open_session(path, name, outputs, device=device)
            sessions[device] = session
            print(f"{version} {graph}: --device {device} -> {session.provider} {why_not}", flush=True)
        ok &= sessions["cuda"].provider == CUDA and sessions["cpu"].provider == CPU
        rng = np.random.default_rng(0)
        worst = 0.0
        for n in PARITY_ROWS:
            x = rng.random((n, *shape), dtype=np.float32)
            for a, b in zip(sessions["cuda"].run(x), sessions["cpu"].run(x), strict=True):
                worst = max(worst, float(np.max(np.abs(a - b))))
        ok &= worst <= PARITY_TOLERANCE
        batch = rng.random((1024, *shape), dtype=np.float32)
        rates = {d: runs_per_second(lambda s=s, b=batch: s.run(b), 2.0)[0] * 1024 for d, s in sessions.items()}
        speedup = rates["cuda"] / rates["cpu"]
        rows.append([label(version), graph, f"{worst:.2e}", f"{rates['cuda']:,.0f}",
                     f"{rates['cpu']:,.0f}", f"{speedup:.1f}x"])  # fmt: skip
        print(rows[-1], flush=True)
    return rows, ok


def served(version: Path, work: Path, duration: float) -> tuple[list[list[str]], bool]:
    graphs = load_graphs(version)
    rows, ok = [], True
    for device in DEVICES:
        log = work / f"serve-{device}.log"
        flags = ("--version", version.name, "--device", device)
        with serving(version.parents[1], log, *flags, name=version.parent.name) as server:
            info = [line for line in server.metrics().splitlines() if line.startswith("vaeserve_model_info{")]
            provider = CUDA if any(CUDA in line for line in info) else CPU
            ok &= provider == (CUDA if device == "cuda" else CPU)
            for call in CALLS:
                request = work / "request.bin"
                request.write_bytes(call.request(graphs))
                argv = [sys.executable, "-m", "tests.bench.serving_loadgen", "--target", server.target,
                        "--method", VAE_METHOD + call.rpc, "--request", str(request), "--concurrency",
                        *CONCURRENCY, "--duration", str(duration), "--warmup", "1"]  # fmt: skip
                out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
                for point in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")):
                    ok &= not point["errors"]
                    rows.append([label(version), device, provider, call.name,
                                 str(point["concurrency"]), f"{point['rps']:,.0f}",
                                 f"{point['rps'] * call.rows:,.0f}", f"{point['p50']:.2f}",
                                 f"{point['p99']:.2f}", str(point["errors"] or "")])  # fmt: skip
                    print(rows[-1], flush=True)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", type=Path, nargs="+", help="REPO/NAME/VERSION folders (default: the serving "
                   "benchmark's digits conv model and the default model, trained if missing)")  # fmt: skip
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per point (default: %(default)s)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-gpu", help="logs (default: runs/bench-gpu)")
    p.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md (default: write)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    versions = args.version_dir or [find_or_export("conv"), find_or_export("default")]
    if not shutil.which("nvidia-smi"):
        print("bench_gpu: no nvidia-smi here, so no NVIDIA GPU to measure", file=sys.stderr)
        return 1
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    parity, serve, ok = [], [], True
    for version in versions:
        rows, good = in_process(version.resolve())
        parity += rows
        ok &= good
        with contextlib.suppress(KeyboardInterrupt):
            rows, good = served(version.resolve(), args.work, args.duration)
            serve += rows
            ok &= good
    title = "GPU: the CUDA execution provider against the CPU on the same machine"
    parity_header = ["version", "graph", "max abs diff", "CUDA images/s", "CPU images/s", "CUDA / CPU"]
    serve_header = ["version", "--device", "provider", "call", "clients", "req/s", "images/s", "p50 ms", "p99 ms",
                    "errors"]  # fmt: skip
    text = f"""On {gpu}; `python -m tests.bench.bench_gpu --version-dir ...`.

In-process (runtime.open_session): parity is the largest |CUDA - CPU| over every output at \
{", ".join(map(str, PARITY_ROWS))} rows (goal ≤ {PARITY_TOLERANCE:g}); images/s at 1,024 rows.

{markdown_table(parity_header, parity)}

Served: `vaeserve serve --device cuda|cpu`, closed-loop clients, {args.duration:g} s per point; the provider is the \
one `vaeserve_model_info` reports.

{markdown_table(serve_header, serve)}

Result: {"pass" if ok else "**FAIL**"}.
"""
    print(text)
    if not args.no_write:
        write_section("gpu", title, text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
