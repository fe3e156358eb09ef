"""The vae.v1 extensions measured: uint8 images on the wire, and Score as an anomaly detector.

1. Wire: images/s of Sample(1024) with FLOAT32 and UINT8 replies, and of Encode(256) with FLOAT32 and UINT8
   requests, against the in-process decoder (batch 1024) and encoder (batch 256), on the digits MLP, the conv
   model and the 28x28 MNIST MLP. Best of concurrency 1 and 4, from the serving benchmark's load generator.
2. Anomaly detection: the AUROC of -log p(x) (Score, K importance samples) separating held-out digits from
   uniform noise and from upside-down digits, on the digits MLP.

    python -m tests.bench.bench_api [--duration 4] [--k 100]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from tests.harness import vaeserve_process
from vaeserve.client.api import VaeClient, to_tensor
from vaeserve.protos.vae.v1 import vae_pb2

from . import mnist
from .bench_serving import WORK, Bench, find_or_export, graph_rate
from .report import markdown_table, write_section
from .serving_model import load_graphs, random_images

METHOD = "/vae.v1.VaeService/"
LEVELS = (1, 4)
WIRE_COLUMNS = ["model", "call", "images as", "images/s", "in-process images/s", "share", "transport images/s",
                "ceiling"]  # fmt: skip


def wire_requests(graphs, dtype: int) -> dict[str, tuple[str, bytes]]:
    """{call: (method, request bytes)} for Sample(1024) and Encode(256) with images of `dtype`."""
    sample = vae_pb2.SampleRequest(num_samples=1024, image_dtype=dtype)
    images = random_images(graphs, 256)
    if dtype == vae_pb2.UINT8:
        pixels = np.rint(images * 255).astype(np.uint8)
        tensor = vae_pb2.Tensor(shape=pixels.shape, data=pixels.tobytes(), dtype=vae_pb2.UINT8)
    else:
        tensor = to_tensor(images)
    encode = vae_pb2.EncodeRequest(images=tensor)
    return {"Sample(1024)": (METHOD + "Sample", sample.SerializeToString()),
            "Encode(256)": (METHOD + "Encode", encode.SerializeToString())}  # fmt: skip


def best_rps(bench: Bench, servers: list, method: str, request: bytes) -> float:
    """Calls per second at the best of LEVELS, from points without errors."""
    return max(r["rps"] for r in bench.load(servers, method, request, LEVELS) if not r["errors"])


def wire(bench: Bench, models: dict[str, object]) -> tuple[list[list[str]], dict[tuple[str, str, str], float]]:
    rows, share = [], {}
    for model, model_dir in models.items():
        graphs = load_graphs(model_dir)
        in_process = {
            "Sample(1024)": max(graph_rate(load_graphs(model_dir, t), "decoder", 1024)[0] for t in (1, 0)) * 1024,
            "Encode(256)": max(graph_rate(load_graphs(model_dir, t), "encoder", 256)[0] for t in (1, 0)) * 256,
        }
        log = bench.work / f"api-{model}.log"
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(vaeserve_process(model_dir.parents[1], log, "--version", model_dir.name))
            transport = bench.baseline(stack, "transport", model, model_dir, graphs).servers
            for dtype, dtype_name in ((vae_pb2.FLOAT32, "FLOAT32"), (vae_pb2.UINT8, "UINT8")):
                for call, (method, request) in wire_requests(graphs, dtype).items():
                    rows_per_call = 1024 if call.startswith("Sample") else 256
                    served, moved = (best_rps(bench, servers, method, request) * rows_per_call
                                     for servers in ([server], transport))  # fmt: skip
                    share[model, call, dtype_name] = served / in_process[call]
                    # What a server that only moved these bytes and ran the graph could reach on these cores.
                    ceiling = 1 / (in_process[call] / moved + 1)
                    rows.append([model, call, dtype_name, f"{served:,.0f}", f"{in_process[call]:,.0f}",
                                 f"{share[model, call, dtype_name]:.0%}", f"{moved:,.0f}",
                                 f"{ceiling:.0%}"])  # fmt: skip
                    print(" | ".join(rows[-1]), flush=True)
    return rows, share


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """P(anomaly score of an anomaly > that of a normal image): the area under the ROC curve."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(labels, np.r_[normal, anomalous]))


def anomaly(label: str, model_dir, k: int, work) -> tuple[list[list[str]], dict[str, float]]:
    from vaeserve.training.data import load_dataset

    digits = load_dataset({"name": "digits"}).test.numpy()
    rng = np.random.default_rng(0)
    sets = {"uniform noise": rng.random(digits.shape, dtype=np.float32), "upside-down digits": digits[:, :, ::-1]}
    rows, aucs = [], {}
    server = vaeserve_process(model_dir.parents[1], work / f"anomaly-{label}.log", "--version", model_dir.name)
    with server, VaeClient(server.target, timeout=300) as client:

        def scores(images: np.ndarray) -> dict[str, np.ndarray]:
            request = vae_pb2.ScoreRequest(images=to_tensor(images), num_importance_samples=k, seed=0)
            r = client.stub.Score(request, timeout=300)
            return {f: -np.frombuffer(getattr(r, f).data, np.float32) for f in ("log_likelihood", "elbo")}

        normal = scores(digits)
        for name, images in sets.items():
            anomalous = scores(images)
            aucs[name] = auroc(normal["log_likelihood"], anomalous["log_likelihood"])
            rows.append([label, name, str(len(images)), f"{np.median(anomalous['log_likelihood']):.1f}",
                             f"{aucs[name]:.3f}", f"{auroc(normal['elbo'], anomalous['elbo']):.3f}"])  # fmt: skip
        rows.insert(0, [label, "held-out digits (normal)", str(len(digits)),
                            f"{np.median(normal['log_likelihood']):.1f}", "—", "—"])  # fmt: skip
    return rows, aucs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per point (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default: %(default)s)")
    p.add_argument("--k", type=int, default=100, help="importance samples per scored image (default: %(default)s)")
    args = p.parse_args(argv)
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    bench = Bench(argparse.Namespace(duration=args.duration, warmup=args.warmup), WORK)
    models = {"mlp": find_or_export("mlp"), "conv": find_or_export("conv")}
    if mnist.available():
        models["mnist-mlp"] = find_or_export("mnist-mlp")
    rows, share = wire(bench, models)
    anomaly_rows, aucs = [], {}
    for label, model_dir in (("digits MLP", models["mlp"]), ("default model", find_or_export("default"))):
        rows_, aucs[label] = anomaly(label, model_dir, args.k, WORK)
        anomaly_rows += rows_
    goals = [("MNIST-MLP Sample(1024), UINT8 replies, vs the in-process decoder", share.get(("mnist-mlp",
              "Sample(1024)", "UINT8"))), ("MNIST-MLP Encode(256), UINT8 requests, vs the in-process encoder",
              share.get(("mnist-mlp", "Encode(256)", "UINT8")))]  # fmt: skip
    goal_rows = [[text, "—" if v is None else f"{v:.0%}", "≥ 60%", "not measured" if v is None else
                  ("pass" if v >= 0.6 else "**FAIL**")] for text, v in goals]  # fmt: skip
    body = "\n\n".join(
        [
            "### uint8 images on the wire\n\nimages/s of the call at its best of concurrency 1 and 4 (the serving "
            "benchmark's load generator, one process beside the server), against the in-process graph at the call's "
            "batch (best of 1 and default intra-op threads). Replies (Sample) and requests (Encode) as FLOAT32 and as "
            "UINT8 (one byte a pixel). Transport: the serving benchmark's server that answers the same calls with "
            "replies of the same size without computing; ceiling: 1 / (1/transport + 1/in-process) as a share of "
            "in-process, what a server that only moved these bytes and ran the graph could reach with the client on "
            "the same cores.",
            markdown_table(["goal", "measured", "target", "result"], goal_rows),
            markdown_table(WIRE_COLUMNS, rows),
            f"### Score as an anomaly detector\n\n-log p(x) (importance-weighted bound, K = {args.k}) on the 360 "
            "held-out digits of the bundled split against each anomalous set, for the serving benchmark's digits MLP "
            "(Bernoulli p(x|z)) and for the default model (`make model`: conv, Gaussian p(x|z) with σ = 0.25); "
            "AUROC 1.0 separates them perfectly, 0.5 is chance. The same with -ELBO for comparison.",
            markdown_table(
                ["model", "images", "count", "median -log p(x), nats", "AUROC of -log p(x)", "AUROC of -ELBO"],
                anomaly_rows,
            ),
            "Reproduce: `.venv/bin/python -m tests.bench.bench_api`.",
        ]
    )
    write_section("api", "API: uint8 images on the wire, and anomaly detection by likelihood", body)
    print(body)
    print(f"\nwrote BENCHMARKS.md (api) in {time.monotonic() - started:.0f} s; AUROC {aucs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
