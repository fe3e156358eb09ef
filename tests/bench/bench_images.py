"""Own-images benchmark on folders of generated coloured shapes (tests/shapes.py), two sections of BENCHMARKS.md.

images_latent (3x32x32): a beta sweep trained with the real CLI and exported; the held-out split's posterior means
from the in-process encoder graph, and a linear probe (training/probe.py) fitted on the training split's means
against each generating factor: R^2 (accuracy for the shape) per factor and beta; the test split's KL and active
units (training/evaluate.py); and for beta = 1 the traversals of docs/shapes_traversals.png, each dimension swept
-3..3 around a held-out mean through the in-process decoder graph, rows labelled with the factors whose probe
leans on that dimension most.

images (3x64x64): training images/s with the real CLI (1 process, and 2 gloo ranks under torchrun), otherwise
`vaeserve train`'s defaults, so its KL answers whether they collapse the posterior at 64x64; serving images/s of
the in-process onnxruntime graphs doing what Sample(64) and Encode(256) do with uint8 on the wire (decode N(0, I)
latents and quantize; scale uint8 pictures and encode), best of 5; and the memory of a training process on a
folder of --pictures pictures, in memory and memory-mapped (--memory-mb 0), over its loading and its first
MEMORY_STEPS steps (bounded to keep the run short: memory has settled by then).

    python -m tests.bench.bench_images [--part latent|speed] [--pictures 50000]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from tests.bench.report import ROOT, machine, markdown_table, write_section
from tests.conftest import run_cli
from tests.harness import free_port
from tests.shapes import FACTORS, read_factors, write_shapes
from vaeserve.client.explore.app import traversal
from vaeserve.client.pictures import write_grid
from vaeserve.training.checkpoint import load_model
from vaeserve.training.data import Splits, as_float, load_dataset
from vaeserve.training.evaluate import evaluate
from vaeserve.training.probe import Probe, probe_factors

SIZE = 64
TRAIN_PICTURES = 2000
SPEED_EPOCHS = 3
ROUNDS = 5
MEMORY_STEPS = 20  # of the default batch (128): the loading is done and training's own memory has settled
PROBE_SIZE = 32
PROBE_PICTURES = 4000
PROBE_EPOCHS = 10
BETAS = (0.5, 1.0, 4.0)
TRAVERSAL_SPAN, TRAVERSAL_STEPS = 3.0, 9
TRAVERSALS_PNG = ROOT / "docs" / "shapes_traversals.png"


def train_flags(pictures: Path, out: Path, size: int, epochs: int) -> list[str]:
    return ["train", "--dataset", "folder", "--data-path", str(pictures), "--image-size", str(size), "--channels", "3",
            "--epochs", str(epochs), "--no-report", "--quiet", "--out", str(out)]  # fmt: skip


def epochs_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def sessions(repo: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return {g: ort.InferenceSession(str(repo / f"vae/1/{g}.onnx"), options, providers=["CPUExecutionProvider"])
            for g in ("encoder", "decoder")}  # fmt: skip


def train_and_export(flags: list[str], run: Path, repo: Path) -> dict[str, ort.InferenceSession]:
    run_cli(*flags)
    run_cli("export", "--checkpoint", str(run / "best.pt"), "--repo", str(repo), "--name", "vae")
    return sessions(repo)


def splits_of(run: Path) -> Splits:
    """The run's folder, split as it was trained."""
    return load_dataset(load_model(run / "best.pt")[1]["dataset"])


def test_figures(run: Path, test: torch.Tensor) -> dict:
    """best.pt on the test split: KL (nats/image), active units, neg-ELBO (training/evaluate.py)."""
    return evaluate(load_model(run / "best.pt")[0], test, iw_samples=0)


# --- the latent space: probe, beta sweep, traversals ------------------------------------------------------------


def posterior_means(encoder: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    return np.concatenate([encoder.run(["mean"], {"image": images[i : i + 256]})[0]
                           for i in range(0, len(images), 256)])  # fmt: skip


def latent_space(root: Path) -> str:
    """The images_latent section's body."""
    pictures = root / "shapes32"
    write_shapes(pictures, PROBE_PICTURES, size=PROBE_SIZE)
    splits = None
    results = {}
    for beta in BETAS:
        run, repo = root / f"beta-{beta:g}", root / f"models-beta-{beta:g}"
        flags = [*train_flags(pictures, run, PROBE_SIZE, PROBE_EPOCHS), "--batch-size", "64", "--beta", f"{beta:g}"]
        graphs = train_and_export(flags, run, repo)
        splits = splits or splits_of(run)
        fit_means = posterior_means(graphs["encoder"], as_float(splits.train).numpy())
        held_out_means = posterior_means(graphs["encoder"], splits.test.numpy())
        probes = probe_factors(fit_means, read_factors(pictures, splits.files["train"]), held_out_means,
                               read_factors(pictures, splits.files["test"]), categorical=("shape",))  # fmt: skip
        results[beta] = (probes, test_figures(run, splits.test))
        if beta == 1.0:
            draw_traversals(graphs["decoder"], held_out_means[0], probes)
    probes_1 = results[1.0][0]
    moves = [f"{p.factor}: z{p.dimension + 1} (|standardized coefficient| {p.weights[p.dimension]:.3f}, next "
             f"{np.sort(p.weights)[-2]:.3f})" for p in probes_1]  # fmt: skip
    header = ["beta", *(f"{p.factor} ({p.metric})" for p in probes_1), "test KL (nats)", "active units",
              "test neg-ELBO (nats)"]  # fmt: skip
    rows = [[f"{beta:g}", *(f"{p.score:.3f}" for p in probes), f"{fig['kl']:.2f}", f"{fig['active_units']} of 8",
             f"{fig['neg_elbo']:.1f}"] for beta, (probes, fig) in results.items()]  # fmt: skip
    chance = next(p.chance for p in probes_1 if p.metric == "accuracy")
    body = (
        f"{PROBE_PICTURES:,} generated shapes at 3x{PROBE_SIZE}x{PROBE_SIZE} ({', '.join(FACTORS)}; tests/shapes.py), "
        f"{len(splits.train):,} training / {len(splits.test):,} test by the folder's split; conv, latent 8, "
        f"batch 64, {PROBE_EPOCHS} epochs, otherwise `vaeserve train`'s defaults. A linear probe "
        "(training/probe.py) per factor, fitted on the training split's posterior means from the exported "
        "encoder and scored on the test split's: held-out R^2 (shape: accuracy of a logistic regression, chance "
        f"{chance:.3f}). KL and active units (Cov of the means > 0.01) on the test split.\n\n"
        + markdown_table(header, rows)
        + "\n\nWhich dimension moves which factor at beta = 1 (the probe's largest |coefficient| on standardized "
        f"means; docs/shapes_traversals.png sweeps each dimension {-TRAVERSAL_SPAN:g}..{TRAVERSAL_SPAN:g} around "
        "the first test picture's mean):\n\n" + "\n".join(f"- {line}" for line in moves)
    )
    return body


def draw_traversals(decoder: ort.InferenceSession, mean: np.ndarray, probes: list[Probe]) -> None:
    """One row per latent dimension, labelled with the factors whose probe leans on it most."""
    dims = len(mean)
    images = decoder.run(["image"], {"latent": traversal(mean, TRAVERSAL_SPAN, TRAVERSAL_STEPS)})[0]
    moved = {d: [p.factor for p in probes if p.dimension == d] for d in range(dims)}
    labels = tuple(f"z{d + 1}" + (f": {', '.join(moved[d])}" if moved[d] else "") for d in range(dims))
    write_grid(images, TRAVERSALS_PNG, columns=TRAVERSAL_STEPS, scale=2, row_labels=labels)


# --- speed and memory at 3x64x64 --------------------------------------------------------------------------------


def best_rate(call, rows: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return rows / best


def serving_rows(graphs: dict[str, ort.InferenceSession]) -> list[list[object]]:
    latent_dim = graphs["decoder"].get_inputs()[0].shape[1]
    rng = np.random.default_rng(0)

    def sample() -> None:
        image = graphs["decoder"].run(["image"], {"latent": rng.standard_normal((64, latent_dim), np.float32)})[0]
        np.rint(image * 255).astype(np.uint8)

    pictures = rng.integers(0, 256, (256, 3, SIZE, SIZE), dtype=np.uint8)

    def encode() -> None:
        graphs["encoder"].run(["mean", "log_variance"], {"image": pictures.astype(np.float32) / 255})

    return [
        ["Sample(64), uint8", f"{best_rate(sample, 64):,.0f}"],
        ["Encode(256), uint8", f"{best_rate(encode, 256):,.0f}"],
    ]


def memory_mb(flags: list[str], images: int) -> dict[str, float]:
    """Peak RSS (VmHWM) of one `vaeserve train` process over its loading and its first `images` training images,
    with its anonymous and file-backed RSS then (the memory-mapped pictures are file pages the OS can drop); the
    process is stopped there. Its decode workers are separate processes, not counted."""
    argv = [sys.executable, "-m", "vaeserve.cli", *flags, "--progress-every", "0"]
    argv.remove("--quiet")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            done = re.match(r"train: ([\d,]+)/", line)
            if done and int(done[1].replace(",", "")) >= images:
                status = Path(f"/proc/{process.pid}/status").read_text()
                return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M)[1]) / 1024
                        for key in ("VmHWM", "RssAnon", "RssFile")}  # fmt: skip
        raise RuntimeError(f"training ended before {images} images (exit {process.wait()})")
    finally:
        process.kill()
        process.wait()


def speed(root: Path, pictures: int) -> str:
    """The images section's body."""
    write_shapes(root / "shapes", TRAIN_PICTURES, size=SIZE)
    graphs = train_and_export(train_flags(root / "shapes", root / "one", SIZE, SPEED_EPOCHS), root / "one",
                           root / "models")  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "vaeserve.cli"]  # fmt: skip
    subprocess.run([*torchrun, *train_flags(root / "shapes", root / "two", SIZE, SPEED_EPOCHS)], check=True,
                   capture_output=True)  # fmt: skip
    runs = {"train, 1 process": "one", "train, 2 processes (torchrun, gloo)": "two"}
    rates = [[name, f"{epochs_of(root / run)[-1]['images_per_s']:,.0f}"] for name, run in runs.items()]
    kl = " -> ".join(f"{e['val_kl']:.2f}" for e in epochs_of(root / "one"))
    figures = test_figures(root / "one", splits_of(root / "one").test)
    serving = serving_rows(graphs)
    write_shapes(root / "big", pictures, size=SIZE, seed=1)
    memory = []
    for mb in (2048, 0):
        flags = [*train_flags(root / "big", root / f"big-{mb}", SIZE, 1), "--memory-mb", str(mb)]
        used = memory_mb(flags, MEMORY_STEPS * 128)
        memory.append([f"{pictures:,} pictures, --memory-mb {mb}",
                       *(f"{used[key]:,.0f}" for key in ("VmHWM", "RssAnon", "RssFile"))])  # fmt: skip
    stored = pictures * 3 * SIZE * SIZE / 1e6
    return (
        f"{machine()}; other jobs shared the 2 cores, so these are lower bounds.\n\n"
        f"Training on {TRAIN_PICTURES:,} generated shapes at 3x{SIZE}x{SIZE} with `vaeserve train`'s defaults "
        f"(conv, latent 8, global batch 128) for {SPEED_EPOCHS} epochs (images/s of the last; the first pays for "
        "warm-up), and the in-process graphs of the 1-process run (1 intra-op thread, best of 5):\n\n"
        + markdown_table(["what", "images/s"], rates + serving)
        + f"\n\nPosterior collapse at 3x{SIZE}x{SIZE} with the defaults: the 1-process run's validation KL by epoch "
        f"{kl} nats; best.pt on the test split: KL {figures['kl']:.2f} nats, {figures['active_units']} of 8 "
        "active units, neg-ELBO "
        f"{figures['neg_elbo']:.1f} nats.\n\n"
        f"Memory of the training process (MB) on {pictures:,} pictures ({stored:,.0f} MB of uint8), from its start "
        f"through loading to its first {MEMORY_STEPS} steps of 128 images, where it was stopped (bounded to keep "
        "the run short); peak RSS, then anonymous and file-backed RSS at the stop (the "
        "memory-mapped pictures are file pages the OS drops under pressure); decode workers not counted:\n\n"
        + markdown_table(["folder", "peak RSS", "anonymous", "file-backed"], memory)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("latent", "speed"), help="run one section only (default: both)")
    parser.add_argument("--pictures", type=int, default=50_000, help="folder size for the memory rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        if args.part in (None, "latent"):
            body = latent_space(root)
            print(body)
            write_section("images_latent", "Own images: what a linear probe finds in the latent space", body)
        if args.part in (None, "speed"):
            body = speed(root, args.pictures)
            print(body)
            write_section("images", "Own images (3x64x64 folders)", body)


if __name__ == "__main__":
    main()
