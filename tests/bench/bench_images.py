"""Own-images benchmark at 3x64x64 on a folder of generated coloured shapes (tests/shapes.py).

Training images/s with the real CLI (`--dataset folder`, 1 process, and 2 gloo ranks under torchrun); serving
images/s of the in-process onnxruntime graphs doing what Sample(64) and Encode(256) do with uint8 on the wire
(decode N(0, I) latents and quantize; scale uint8 pictures and encode), best of 5; and the peak memory of a
training process on a folder of --pictures pictures, in memory and memory-mapped (--memory-mb 0).

    python -m tests.bench.bench_images [--pictures 50000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.bench.report import machine, markdown_table, write_section
from tests.conftest import run_cli
from tests.shapes import write_shapes

SIZE = 64
TRAIN_PICTURES = 2000
ROUNDS = 5


def train_flags(pictures: Path, out: Path, epochs: int = 2) -> list[str]:
    return ["train", "--dataset", "folder", "--data-path", str(pictures), "--image-size", str(SIZE), "--channels", "3",
            "--epochs", str(epochs), "--batch-size", "64", "--no-report", "--out", str(out)]  # fmt: skip


def images_per_s(run: Path) -> float:
    """The last epoch's figure (the first pays for warm-up)."""
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]


def best_rate(call, rows: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return rows / best


def serving_rows(repo: Path) -> list[list[object]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {g: ort.InferenceSession(str(repo / f"vae/1/{g}.onnx"), options, providers=["CPUExecutionProvider"])
                for g in ("encoder", "decoder")}  # fmt: skip
    latent_dim = sessions["decoder"].get_inputs()[0].shape[1]
    rng = np.random.default_rng(0)

    def sample() -> None:
        image = sessions["decoder"].run(["image"], {"latent": rng.standard_normal((64, latent_dim), np.float32)})[0]
        np.rint(image * 255).astype(np.uint8)

    pictures = rng.integers(0, 256, (256, 3, SIZE, SIZE), dtype=np.uint8)

    def encode() -> None:
        sessions["encoder"].run(["mean", "log_variance"], {"image": pictures.astype(np.float32) / 255})

    return [
        ["Sample(64), uint8", f"{best_rate(sample, 64):,.0f}"],
        ["Encode(256), uint8", f"{best_rate(encode, 256):,.0f}"],
    ]


def peak_memory_mb(flags: list[str]) -> float:
    """Peak RSS of one `vaeserve train` process (its decode workers are separate processes, not counted)."""
    code = "import resource, sys; from vaeserve.cli import main; code = main(sys.argv[1:]); " \
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, check=True)
    return int(done.stdout.splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=50_000, help="folder size for the memory rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_shapes(root / "shapes", TRAIN_PICTURES, size=SIZE)
        run_cli(*train_flags(root / "shapes", root / "one"))
        one = images_per_s(root / "one")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                    "--master-port", "0", "-m", "vaeserve.cli"]  # fmt: skip
        subprocess.run([*torchrun, *train_flags(root / "shapes", root / "two")], check=True, capture_output=True)
        two = images_per_s(root / "two")
        run_cli("export", "--checkpoint", str(root / "one/best.pt"), "--repo", str(root / "models"), "--name", "vae")
        serving = serving_rows(root / "models")
        write_shapes(root / "big", args.pictures, size=SIZE, seed=1)
        memory = []
        for mb in (2048, 0):
            flags = [*train_flags(root / "big", root / f"big-{mb}", epochs=1), "--memory-mb", str(mb)]
            memory.append([f"{args.pictures:,} pictures, --memory-mb {mb}", f"{peak_memory_mb(flags):,.0f}"])
    rows = [["train, 1 process", f"{one:,.0f}"], ["train, 2 processes (torchrun, gloo)", f"{two:,.0f}"]]
    body = (
        f"{machine()}; other jobs shared the 2 cores, so these are lower bounds.\n\n"
        f"Training on {TRAIN_PICTURES:,} generated shapes at 3x{SIZE}x{SIZE} (conv, latent 8, batch 64; the second "
        "epoch's images/s), and the in-process graphs (1 intra-op thread, best of 5):\n\n"
        + markdown_table(["what", "images/s"], rows + serving)
        + "\n\nPeak memory of the training process (1 epoch; decode workers not counted):\n\n"
        + markdown_table(["folder", "peak RSS (MB)"], memory)
    )
    print(body)
    write_section("images", "Own images (3x64x64 folders)", body)


if __name__ == "__main__":
    main()
