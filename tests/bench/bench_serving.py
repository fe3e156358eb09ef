"""Serving benchmark: vaeserve as shipped against what a user would build instead, and against the limits.

On one machine and model (the digits MLP, and the conv model for the heavier graph), requests/s and
p50/p95/p99 latency at several concurrencies for Encode (1 image) and Sample (16 images), and Sample (1024
images) on both digits models and on a 28x28 MNIST MLP (784-400-20, trained for one epoch on the MNIST test
split when ../shared/data/mnist has it), for:
  1. vaeserve        `vaeserve serve` as shipped, in a subprocess;
  2. naive           serving_naive.py: the same proto and graphs, one session.run per request, no batching;
  3. transport       serving_echo.py: the same payloads, computing nothing (the Python gRPC ceiling);
  4. compute         in-process onnxruntime at the batch sizes vaeserve formed (its /metrics batch histogram);
  5. triton          NVIDIA Triton via nvidia-pytriton, same graphs, dynamic batcher with a 2 ms window.
The load generator (serving_loadgen.py) is its own process and sends every server the same raw bytes.
Then checks the issue's goals as ratios, prints the tables, writes BENCHMARKS.md's "serving" section and
docs/bench_serving.png.

    python -m tests.bench.bench_serving [--quick] [--no-triton] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ROOT, ServerProcess, free_port, free_ports
from vaeserve.export.variants import MAX_ELBO_CHANGE_PER_PIXEL
from vaeserve.protos.vae.v1 import vae_pb2

from . import mnist
from .report import markdown_table, write_section
from .serving_model import Graphs, load_graphs, random_images, runs_per_second, version_dir
from .serving_servers import bench_python, server, triton_env

WORK = ROOT / "runs" / "bench-serving"  # cached models, server logs, raw results, profiles
PLOT = ROOT / "docs" / "bench_serving.png"
VAESERVE = Path(sys.executable).parent / "vaeserve"
VAE_METHOD = "/vae.v1.VaeService/"
TRITON_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SYSTEMS = ("vaeserve", "vaeserve before", "vaeserve x2", "vaeserve int8", "vaeserve OIP", "naive", "naive aio",
           "transport", "compute", "triton")  # fmt: skip
TRAIN_EPOCHS = "2"  # speed does not depend on how well the weights fit


@dataclass(frozen=True)
class Call:
    """One benchmarked RPC: `Encode(1)` sends 1 image, `Sample(16)` asks for 16."""

    rpc: str  # Encode | Sample
    rows: int

    @property
    def name(self) -> str:
        return f"{self.rpc}({self.rows})"

    @property
    def graph(self) -> str:
        return "encoder" if self.rpc == "Encode" else "decoder"  # Sample, Decode

    def oip_request(self, graphs: Graphs) -> bytes:
        """The same call in the Open Inference Protocol, as tritonclient sends it (raw_input_contents)."""
        from vaeserve.protos.inference import grpc_service_pb2 as pb

        if self.rpc == "Encode":
            model, name, data = "vae-encoder", "image", random_images(graphs, self.rows)
        else:
            model, name = "vae-decoder", "latent"
            data = np.random.default_rng(0).standard_normal((self.rows, graphs.latent_dim), dtype=np.float32)
        tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=data.shape)
        request = pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[data.tobytes()])
        return request.SerializeToString()

    def request(self, graphs: Graphs) -> bytes:
        if self.rpc == "Sample":
            return vae_pb2.SampleRequest(num_samples=self.rows).SerializeToString()
        if self.rpc == "Decode":
            latents = np.random.default_rng(0).standard_normal((self.rows, graphs.latent_dim), dtype=np.float32)
            return vae_pb2.DecodeRequest(latents=vae_pb2.Tensor(shape=latents.shape, data=latents.tobytes())
                                         ).SerializeToString()  # fmt: skip
        images = random_images(graphs, self.rows)
        return vae_pb2.EncodeRequest(
            images=vae_pb2.Tensor(shape=images.shape, data=images.tobytes())
        ).SerializeToString()


CALLS = (ENCODE1, SAMPLE16, ENCODE32, SAMPLE1024, DECODE16) = (
    Call("Encode", 1), Call("Sample", 16), Call("Encode", 32), Call("Sample", 1024), Call("Decode", 16))  # fmt: skip
CALL_NAMED = {call.name: call for call in CALLS}  # a Point's call back to its Call
OIP_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Point:
    model: str
    call: str
    system: str
    concurrency: int
    rps: float
    p50: float  # ms
    p95: float | None = None
    p99: float | None = None
    batch: float | None = None  # mean rows per onnxruntime run (vaeserve: from /metrics; compute: the one it ran)
    cpu_us: float | None = None  # server CPU time per request (all its processes)
    errors: dict[str, int] = field(default_factory=dict)
    rounds: list[float] = field(default_factory=list)  # req/s of every round the point is the median of, in order
    round_ids: list[int] = field(default_factory=list)  # which of the bench's rounds they were (Bench.rounds)


@dataclass
class Target:
    """A running system under test: its server processes and how each call is asked of it."""

    system: str
    servers: list[ServerProcess]
    request: Callable[[Call], tuple[str, bytes]]  # call -> (gRPC method, serialized request)
    metrics_url: str | None = None
    levels: tuple[int, ...] | None = None  # the concurrencies it is measured at (None: all)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.points: list[Point] = []
        self.notes: list[str] = []
        self.profiles: list[str] = []
        self.rounds = 0  # rounds measured so far: which system starts the next one

    def find(self, model: str, call: Call, system: str, concurrency: int) -> Point | None:
        return next((p for p in self.points if (p.model, p.call, p.system, p.concurrency) ==
                     (model, call.name, system, concurrency)), None)  # fmt: skip

    def load(
        self, servers: list[ServerProcess], method: str, request: bytes, concurrency, metrics_url: str | None = None
    ):
        """Runs the load generator against `servers` (clients spread over them), one point per concurrency;
        returns its JSON objects."""
        path = self.work / "request.bin"
        path.write_bytes(request)
        argv = [sys.executable, "-m", "tests.bench.serving_loadgen", "--target", *(s.target for s in servers),
                "--method", method, "--request", str(path), "--concurrency", *map(str, concurrency),
                "--duration", str(self.args.duration), "--warmup", str(self.args.warmup),
                "--server-pgid", *(str(s.process.pid) for s in servers)]  # fmt: skip
        if metrics_url:
            argv += ["--metrics-url", metrics_url]
        budget = len(concurrency) * (self.args.duration + self.args.warmup + 30) + 30
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=budget)
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed against {servers[0].name}:\n{out.stderr[-3000:]}")
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    def record(
        self, model: str, call: Call, system: str, results: list[dict], rounds: list[float] = (), ids: list[int] = ()
    ) -> None:
        for r in results:
            p = Point(model, call.name, system, r["concurrency"], r["rps"], r["p50"], r["p95"], r["p99"],
                      cpu_us=r["server_cpu_us"], errors=r["errors"],
                      rounds=list(rounds), round_ids=list(ids))  # fmt: skip
            if r.get("metrics_after"):
                p.batch = mean_batch(r["metrics_before"], r["metrics_after"], call.graph)
            self.points.append(p)
            errors = f"  ERRORS {p.errors}" if p.errors else ""
            batch = f"  batch {p.batch:.1f}" if p.batch else ""
            batch += f"  rounds {spread_text(p)}" if p.rounds else ""
            print(f"{model:4} {call.name:12} {system:10} c={p.concurrency:<3} {p.rps:8.0f} req/s  p50 {p.p50:7.2f} ms"
                  f"  p99 {p.p99:7.2f} ms  cpu {fmt(p.cpu_us, 0)} us/req{batch}{errors}", flush=True)  # fmt: skip

    # --- the systems -------------------------------------------------------------------------------------------
    # Every server of a model runs at once (idle ones cost next to nothing) and each point is measured for all
    # of them back to back, so the load other users put on a shared machine drifts across systems alike.

    def vaeserve(self, stack: contextlib.ExitStack, model: str, model_dir: Path, graphs: Graphs, processes: int = 1,
                 variant: str = "plain", flags: tuple[str, ...] = (), label: str = "",
                 python: str | None = None) -> Target:  # fmt: skip
        """`vaeserve serve` as shipped; with processes > 1, that many servers on their own ports and the load
        generator's clients spread over them (what several pods behind a Service amount to on one machine);
        `variant`: the graph pair served (`--variant`); `flags`: more serve flags, the system then named by `label`;
        `python`: another installation's interpreter (--baseline), whose `vaeserve` serves instead."""
        system = "vaeserve" if processes == 1 else f"vaeserve x{processes}"
        system += "" if variant == "plain" else f" {variant}"
        system += f" {label}" if label else ""
        probe = (VAE_METHOD + "Encode", ENCODE1.request(graphs))
        servers, metrics_ports = [], []
        for i in range(processes):
            port, metrics_port = free_ports(2)
            binary = Path(python).parent / "vaeserve" if python else VAESERVE
            argv = [str(binary), "serve", "--repo", str(model_dir.parents[1]), "--name", model_dir.parent.name,
                    "--version", model_dir.name, "--host", "127.0.0.1", "--port", str(port),
                    "--metrics-port", str(metrics_port), "--variant", variant, *flags]  # fmt: skip
            log = self.work / f"{system.replace(' ', '')}-{model}-{i}.log"
            servers.append(stack.enter_context(server(f"{system} ({model})", argv, port, probe, log)))
            metrics_ports.append(metrics_port)
        # One process's batch sizes are what the compute limit is measured at.
        metrics_url = f"http://127.0.0.1:{metrics_ports[0]}/metrics" if processes == 1 else None
        return Target(system, servers, lambda call: (VAE_METHOD + call.rpc, call.request(graphs)), metrics_url)

    def baseline(self, stack: contextlib.ExitStack, system: str, model: str, model_dir: Path, graphs: Graphs) -> Target:
        port = free_port()
        module = {"naive": "serving_naive", "naive aio": "serving_naive", "transport": "serving_echo"}[system]
        argv = [sys.executable, "-m", f"tests.bench.{module}", "--model-dir", str(model_dir), "--port", str(port)]
        argv += ["--aio"] if system == "naive aio" else []
        probe = (VAE_METHOD + "Encode", ENCODE1.request(graphs))
        process = stack.enter_context(
            server(f"{system} ({model})", argv, port, probe, self.work / f"{system.replace(' ', '-')}-{model}.log")
        )
        return Target(system, [process], lambda call: (VAE_METHOD + call.rpc, call.request(graphs)))

    def triton(self, stack: contextlib.ExitStack, model: str, model_dir: Path) -> Target | None:
        """Triton, or None (and a note) where it cannot run: that should not cost the rest of the benchmark."""
        try:
            python = bench_python()
            ports = free_ports(3)
            requests = self.work / "triton-requests"
            argv = [str(python), "-m", "tests.bench.serving_triton", "--model-dir", str(model_dir),
                    "--requests-dir", str(requests), "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
                    "--metrics-port", str(ports[2])]  # fmt: skip
            # The server writes its request files before it starts listening: the probe reads them from there.
            probe = (TRITON_METHOD, requests / "encode1.bin")
            log = self.work / f"triton-{model}.log"
            process = stack.enter_context(
                server(f"triton ({model})", argv, ports[0], probe, log, env=triton_env(python))
            )
        except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
            print(f"Triton not measured: {exc}", file=sys.stderr)
            self.notes.append(f"Triton not measured: {str(exc).splitlines()[0]}")
            return None
        return Target(
            "triton",
            [process],
            lambda call: (TRITON_METHOD, (requests / f"{call.rpc.lower()}{call.rows}.bin").read_bytes()),
        )

    def measure(self, model: str, schedule: list[tuple[Call, tuple[int, ...], list[Target]]]) -> None:
        """For each call and concurrency, one point per target, the targets back to back. At concurrency 32 and
        above (the goals' throughput points, and the before/after comparison's) the targets take turns for --rounds
        rounds and each keeps its median round, its rounds kept beside it: one round moves by up to ~20% on a shared
        2-core machine (measured, 10 rounds of vaeserve Sample(16): 4,812 to 7,431 req/s), as the requests of 32
        clients settle into batches of different sizes and the VM's speed drifts."""
        for call, levels, targets in schedule:
            for concurrency in levels:
                active = [t for t in targets if t.levels is None or concurrency in t.levels]
                rounds: dict[str, list[dict]] = {t.system: [] for t in active}
                ids = []
                for _ in range(self.args.rounds if concurrency >= 32 else 1):
                    ids.append(self.rounds)
                    # Each round starts with another system: the first of a round was measured 10-25% slower
                    # than the same server measured later (two identical vaeserve installations, either first).
                    first = self.rounds % len(active)
                    self.rounds += 1
                    for target in active[first:] + active[:first]:
                        method, request = target.request(call)
                        results = self.load(target.servers, method, request, (concurrency,), target.metrics_url)
                        rounds[target.system] += results
                for system, results in rounds.items():
                    median = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
                    many = len(results) > 1  # a single run has no rounds to show
                    self.record(model, call, system, [median], [r["rps"] for r in results] if many else [],
                                ids if many else [])  # fmt: skip

    def compute_limit(self, model: str, model_dir: Path) -> None:
        """For each vaeserve point: requests/s if every batch vaeserve formed cost only its onnxruntime run."""
        sessions = [load_graphs(model_dir, threads) for threads in (1, 0)]
        rates: dict[tuple[str, int], tuple[float, float]] = {}
        for p in [p for p in self.points if p.model == model and p.system == "vaeserve" and p.batch]:
            call = next(c for c in CALLS if c.name == p.call)
            rows = max(1, round(p.batch))
            if (call.graph, rows) not in rates:
                rates[call.graph, rows] = max(graph_rate(g, call.graph, rows) for g in sessions)
            runs, seconds = rates[call.graph, rows]
            self.points.append(Point(model, p.call, "compute", p.concurrency, runs * rows / call.rows, seconds * 1e3,
                                     batch=rows))  # fmt: skip

    def profile(self, target: Target) -> None:
        """py-spy on vaeserve while the load generator runs Encode(1), then Sample(16), at concurrency 32."""
        from .serving_profile import record, summarize

        for call in (ENCODE1, SAMPLE16):
            out = WORK / f"profile-{call.rpc.lower()}{call.rows}.txt"
            with record(target.servers[0].process.pid, self.args.duration + self.args.warmup, out):
                self.load(target.servers, *target.request(call), (32,))
            self.profiles.append(f"py-spy, vaeserve {call.name} at concurrency 32 ({out.relative_to(ROOT)}):\n\n"
                                 + summarize(out))  # fmt: skip
            print(self.profiles[-1])


def mean_batch(before: str, after: str, graph: str) -> float | None:
    """Mean rows per onnxruntime run of `graph` between two scrapes of vaeserve_batch_size."""

    def totals(text: str) -> tuple[float, float]:
        found = {}
        for family in text_string_to_metric_families(text):
            if family.name == "vaeserve_batch_size":
                for s in family.samples:
                    if s.labels.get("graph") == graph and s.name.endswith(("_sum", "_count")):
                        found[s.name.rsplit("_", 1)[1]] = s.value
        return found.get("sum", 0.0), found.get("count", 0.0)

    (s0, c0), (s1, c1) = totals(before), totals(after)
    return (s1 - s0) / (c1 - c0) if c1 > c0 else None


def graph_rate(graphs: Graphs, graph: str, rows: int) -> tuple[float, float]:
    """(runs/s, median seconds per run) of one graph at `rows` rows, in this process."""
    if graph == "encoder":
        x = random_images(graphs, rows)
        return runs_per_second(lambda: graphs.encode(x), 0.5)
    z = np.random.default_rng(0).standard_normal((rows, graphs.latent_dim), dtype=np.float32)
    return runs_per_second(lambda: graphs.decode(z), 0.5)


def find_or_export(model: str) -> Path:
    """A version folder of `model` (mlp, conv: digits; mnist-mlp; default: what `make model` trains): a digits
    model from ./models if one is there, else trained and exported with the real CLI into runs/bench-serving/
    (kept for the next run while `vaeserve export --verify` passes)."""
    for info in sorted((ROOT / "models").glob("*/*/model.json")):
        try:
            described = json.loads(info.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        config = described.get("model_config", {})
        if model in ("mlp", "conv") and config.get("arch") == model and config.get("image_shape") == [1, 8, 8]:
            return info.parent
    repo = WORK / f"models-{model}"
    if (repo / "vae").is_dir() and not verified(version_dir(repo, "vae")):
        shutil.rmtree(repo)  # written by an older exporter: make a fresh one
    if not (repo / "vae").is_dir():
        run = WORK / f"run-{model}"
        WORK.mkdir(parents=True, exist_ok=True)  # its callers other than main() may not have made it
        print(f"training and exporting a {model} model into {repo.relative_to(ROOT)}", flush=True)
        if model == "mnist-mlp":
            data = ["--dataset", "npz", "--data-path", str(mnist.write_npz(WORK / "mnist-t10k.npz")), "--arch", "mlp",
                    "--likelihood", "bernoulli", "--hidden-dim", "400", "--latent-dim", "20",
                    "--epochs", "1"]  # fmt: skip
        elif model == "default":
            data = []  # `vaeserve train`'s defaults, as `make model`
        else:
            data = ["--dataset", "digits", "--arch", model, "--likelihood", "bernoulli", "--epochs", TRAIN_EPOCHS]
        train = ["train", *data, "--seed", "0", "--no-report", "--out", str(run)]
        export = ["export", "--checkpoint", str(run / "best.pt"), "--repo", str(repo), "--name", "vae",
                  "--variants", "int8"]  # fmt: skip
        for argv in (train, export):
            subprocess.run([str(VAESERVE), *argv], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return version_dir(repo, "vae")


def has_int8(model_dir: Path) -> bool:
    return "int8" in json.loads((model_dir / "model.json").read_text()).get("variants", {})


def verified(model_dir: Path) -> bool:
    argv = [str(VAESERVE), "export", "--verify", str(model_dir)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True).returncode == 0


# --- goals, tables, plot ---------------------------------------------------------------------------------------


@dataclass
class Goal:
    text: str
    measured: float | None
    target: float
    higher_is_better: bool = True
    per_round: list[float] = field(default_factory=list)  # the same ratio within each round both were measured in

    @property
    def passed(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.target if self.higher_is_better else self.measured <= self.target


def round_ratios(a: Point | None, b: Point | None) -> list[float]:
    """a's req/s over b's in each round, where both were measured in the same rounds (back to back, so each ratio
    carries less of the machine's drift than a ratio of medians); empty otherwise."""
    if ratio(a, b, "rps") is None or not a.round_ids or a.round_ids != b.round_ids:
        return []
    return [x / y for x, y in zip(a.rounds, b.rounds, strict=True)]


def rps_goal(text: str, a: Point | None, b: Point | None, target: float) -> Goal:
    """A throughput goal: the ratio of medians, and the ratio in each round where they share rounds."""
    return Goal(text, ratio(a, b, "rps"), target, per_round=round_ratios(a, b))


def ratio(a: Point | None, b: Point | None, attr: str) -> float | None:
    if a is None or b is None or a.errors or b.errors or not getattr(b, attr):
        return None
    return getattr(a, attr) / getattr(b, attr)


def goals(bench: Bench, decoder_images_per_s: dict[str, float]) -> list[Goal]:
    f = bench.find
    out = []
    for call in (ENCODE1, SAMPLE16):
        v32, v1 = f("mlp", call, "vaeserve", 32), f("mlp", call, "vaeserve", 1)
        out += [
            rps_goal(f"{call.name} c=32 req/s vs transport limit", v32, f("mlp", call, "transport", 32), 0.85),
            rps_goal(f"{call.name} c=32 req/s vs naive", v32, f("mlp", call, "naive", 32), 1.0),
            Goal(f"{call.name} c=1 p50 vs naive", ratio(v1, f("mlp", call, "naive", 1), "p50"), 1.3, False),
            rps_goal(f"{call.name} c=32 req/s vs Triton", v32, f("mlp", call, "triton", 32), 1.5),
            Goal(f"{call.name} c=1 p50 vs Triton", ratio(v1, f("mlp", call, "triton", 1), "p50"), 0.3, False),
        ]
    # Every model measured: where moving the bytes costs about as much as decoding them (the MLPs), the ceiling
    # printed beside the table is under the goal for any server on these cores.
    for model, rate in decoder_images_per_s.items():
        share = sample1024_share(bench, model, "vaeserve", rate)
        out.append(Goal(f"{model} Sample(1024) images/s vs in-process decoder at batch 1024", share, 0.6))
    for call in (ENCODE1, DECODE16):
        oip, v1 = f("mlp", call, "vaeserve OIP", 32), f("mlp", call, "vaeserve", 32)
        out.append(rps_goal(f"{call.name} c=32 req/s, Open Inference Protocol vs vae.v1", oip, v1, 0.85))
    conv, naive = f("conv", ENCODE32, "vaeserve", 32), f("conv", ENCODE32, "naive", 32)
    out.append(rps_goal("conv Encode(32) c=32 req/s vs naive (batching's margin)", conv, naive, 1.0))
    return out + default_goals(bench)


def default_goals(bench: Bench) -> list[Goal]:
    """vaeserve's own defaults on the default model against the grpc.aio naive server (issue 26)."""
    f = bench.find
    out = []
    for call, target in ((ENCODE1, 1.25), (SAMPLE16, 1.1)):
        v32, naive32 = f("default", call, "vaeserve", 32), f("default", call, "naive aio", 32)
        out += [
            rps_goal(f"default {call.name} c=32 req/s vs naive aio", v32, naive32, target),
            Goal(f"default {call.name} c=1 p50 vs naive aio",
                 ratio(f("default", call, "vaeserve", 1), f("default", call, "naive aio", 1), "p50"), 1.3, False),
        ]  # fmt: skip
    v32, transport = f("default", ENCODE1, "vaeserve", 32), f("default", ENCODE1, "transport", 32)
    out.append(rps_goal("default Encode(1) c=32 req/s vs transport limit", v32, transport, 0.85))
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def goals_table(gs: list[Goal]) -> str:
    verdict = {True: "pass", False: "**FAIL**", None: "not measured"}
    rows = [[g.text, fmt(g.measured) + "x", per_round_text(g), ("≥ " if g.higher_is_better else "≤ ") + f"{g.target}x",
             verdict[g.passed]] for g in gs]  # fmt: skip
    return markdown_table(["goal", "measured", "per round", "target", "result"], rows)


def per_round_text(g: Goal) -> str:
    """The ratio's lowest and highest within a round and how many rounds met the target: `0.78–0.88x (2 of 5)`."""
    if not g.per_round:
        return "—"
    met = sum(r >= g.target if g.higher_is_better else r <= g.target for r in g.per_round)
    return f"{min(g.per_round):.2f}–{max(g.per_round):.2f}x ({met} of {len(g.per_round)})"


def points_table(bench: Bench, model: str, call: Call) -> str:
    rows = []
    for system in SYSTEMS:
        for p in sorted((p for p in bench.points if (p.model, p.call, p.system) == (model, call.name, system)),
                        key=lambda p: p.concurrency):  # fmt: skip
            errors = f" ({sum(p.errors.values())} errors)" if p.errors else ""
            p50 = fmt(p.p50, 3 if p.p50 < 0.1 else 2)  # a compute "latency" is one run: microseconds
            rows.append([system, p.concurrency, f"{p.rps:,.0f}{errors}", spread_text(p) or "—", p50, fmt(p.p95),
                         fmt(p.p99), fmt(p.cpu_us, 0), fmt(p.batch, 1)])  # fmt: skip
    header = ["system", "concurrency", "req/s", "rounds' req/s", "p50 ms", "p95 ms", "p99 ms", "server CPU µs/req",
              "rows/run"]  # fmt: skip
    return markdown_table(header, rows)


def spread_text(p: Point) -> str:
    """The lowest and highest of a point's rounds, `5,944–7,390`; empty for a single run."""
    return f"{min(p.rounds):,.0f}–{max(p.rounds):,.0f}" if p.rounds else ""


def change_verdict(now: Point, before: Point) -> str:
    """Whether `now`'s median differs from `before`'s beyond the noise: outside the range of `before`'s rounds
    (measured in the same alternated rounds, so the range is what the same machine gave the other installation)."""
    if now.errors or before.errors or len(before.rounds) < 2:
        return "not comparable"
    if now.rps < min(before.rounds):
        return "**slower beyond noise**"
    return "faster beyond noise" if now.rps > max(before.rounds) else "within noise"


def before_after_table(bench: Bench) -> str:
    """vaeserve against `vaeserve before` (--baseline) at every point both were measured at in rounds."""
    rows = []
    for now in (p for p in bench.points if p.system == "vaeserve" and p.rounds):
        before = bench.find(now.model, CALL_NAMED[now.call], "vaeserve before", now.concurrency)
        if before is None:
            continue
        rows.append([now.model, now.call, now.concurrency, f"{now.rps:,.0f}", spread_text(now), f"{before.rps:,.0f}",
                     spread_text(before), f"{now.rps / before.rps - 1:+.0%}", change_verdict(now, before)])  # fmt: skip
    header = ["model", "call", "concurrency", "now req/s", "now's rounds", "before req/s", "before's rounds",
              "change", "verdict"]  # fmt: skip
    return markdown_table(header, rows)


def sample1024_share(bench: Bench, model: str, system: str, decoder_images_per_s: float) -> float | None:
    """Best images/s of `system` on Sample(1024) over the concurrencies measured, per in-process decoder image/s."""
    points = [p for p in bench.points if (p.model, p.call, p.system) == (model, SAMPLE1024.name, system)]
    best = max((p.rps for p in points if not p.errors), default=None)
    return best * SAMPLE1024.rows / decoder_images_per_s if best else None


def sample1024_context(bench: Bench, decoder_images_per_s: dict[str, float]) -> str:
    """Best images/s of Sample(1024) per server and model, as a share of the in-process decoder's."""
    lines = []
    for model, rate in decoder_images_per_s.items():
        parts = []
        for system in ("vaeserve", "naive", "transport"):
            share = sample1024_share(bench, model, system, rate)
            if share is not None:
                parts.append(f"{system} {share * rate:,.0f} images/s ({share:.0%})")
        line = (f"- {model}: in-process decoder at batch 1024 {rate:,.0f} images/s (best of 1 and default intra-op "
                f"threads); " + "; ".join(parts))  # fmt: skip
        transport = sample1024_share(bench, model, "transport", rate)
        if transport is not None:
            # Moving a call's bytes (server and client) and running its decoder both take this machine's cores:
            # a call needs at least the sum of their core-seconds, whichever server does it.
            ceiling = 1 / (1 / transport + 1)
            line += f". Ceiling on these cores with the client beside the server: {ceiling:.0%}"
        lines.append(line)
    return (
        "Sample(1024), best of concurrency 1 and 4, vs the in-process decoder. The ceiling is what a server that "
        "only moved the bytes (transport) and ran the decoder could reach here: 1 / (1/transport + 1/decoder), "
        "both as shares of the decoder's rate, since each alone keeps the machine's cores busy.\n\n" + "\n".join(lines)
    )


def plot(bench: Bench, gs: list[Goal], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, call in enumerate((ENCODE1, SAMPLE16)):
        for system in SYSTEMS:
            pts = sorted((p for p in bench.points if (p.model, p.call, p.system) == ("mlp", call.name, system)),
                         key=lambda p: p.concurrency)  # fmt: skip
            if not pts:
                continue
            c = [p.concurrency for p in pts]
            style = {"linestyle": "--" if system == "compute" else "-", "marker": "o", "label": system,
                     "color": f"C{SYSTEMS.index(system)}"}  # fmt: skip
            axes[0, col].plot(c, [p.rps for p in pts], **style)
            if system != "compute":  # its "latency" is one onnxruntime run, not a call
                axes[1, col].plot(c, [p.p50 for p in pts], **style)
        axes[0, col].set_title(f"MLP {call.name}: requests/s")
        axes[1, col].set_title(f"MLP {call.name}: p50 latency (ms)")
        levels = sorted({p.concurrency for p in bench.points if p.model == "mlp" and p.call == call.name})
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.set_xlabel("concurrency")
            ax.grid(True, which="both", alpha=0.3)
        axes[0, col].legend(fontsize=8)
        axes[1, col].legend(fontsize=8)
    passed = sum(g.passed is True for g in gs)
    failed = [g.text for g in gs if g.passed is False]
    fig.suptitle(f"vaeserve serving benchmark: {passed}/{len(gs)} goals pass"
                 + (f"; failing: {'; '.join(failed)}" if failed else ""), fontsize=9, wrap=True)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(bench: Bench, gs: list[Goal], decoder_images_per_s: dict[str, float]) -> str:
    a = bench.args
    parts = [
        f"Closed-loop gRPC clients (tests/bench/serving_loadgen.py, one process beside the server, same raw request "
        f"bytes for every server), {a.warmup:g} s warm-up then {a.duration:g} s per point; at concurrency 32 and "
        f"above the systems take turns for {a.rounds} rounds, each point is its system's median round and "
        f"*rounds' req/s* the lowest and highest of them. Systems: **vaeserve** "
        f"as shipped (`vaeserve serve`, default flags); **vaeserve x2**: two such processes on their own ports, the "
        f"clients spread over them evenly (as pods behind a Service; `--reuse-port` puts them on one port, where "
        f"the kernel spreads connections by hash, unevenly for a few connections); **naive**: the same proto and "
        f"graphs, one `session.run` per request in a sync gRPC thread pool of 10; **naive aio**: the same on "
        f"grpc.aio, each call run to completion on the event loop with one intra-op thread; **transport**: grpc.aio "
        f"answering the same payload sizes without computing; "
        f"**compute**: in-process onnxruntime at the batch sizes vaeserve formed (rows/run, from its "
        f"`vaeserve_batch_size` histogram; best of 1 and default intra-op threads; p50 is one run); **triton**: "
        f"nvidia-pytriton with the same graphs in a Python callable, dynamic batcher with a 2 ms window. Server CPU "
        f"µs/req is the CPU time of all the server's processes over the window divided by its calls: the figure a "
        f"busy, shared machine disturbs least.",
        "### Goals (MLP unless noted; default: the model `make serve` trains)\n\nA throughput goal is judged on the "
        "ratio of the two medians; *per round* gives the same ratio within each round the two shared (measured back "
        "to back, so less of the machine's drift is in it) and how many rounds met the target.\n\n" + goals_table(gs),
        sample1024_context(bench, decoder_images_per_s),
        f"![serving benchmark]({PLOT.relative_to(ROOT)})",
    ]
    if any(p.system == "vaeserve before" for p in bench.points):
        parts.append(
            "### vaeserve against vaeserve before (--baseline)\n\nThe same points, measured in the same alternated "
            "rounds. A change is beyond noise where this checkout's median lies outside the range of the "
            "baseline's rounds.\n\n" + before_after_table(bench)
        )
    for model in ("mlp", "conv", "default", "mnist-mlp"):
        for call in CALLS:
            if any((p.model, p.call) == (model, call.name) for p in bench.points):
                parts.append(f"### {model.upper()} {call.name}\n\n" + points_table(bench, model, call))
    parts += bench.notes
    parts += [f"<details><summary>{p.splitlines()[0]}</summary>\n\n```\n{p}\n```\n</details>" for p in bench.profiles]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="concurrency 1 and 32 only, 3 s points (default: off)")
    p.add_argument("--rounds", type=int, default=5, help="alternated rounds at concurrency 32 and above, median kept "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default: %(default)s)")
    p.add_argument("--no-triton", dest="triton", action="store_false", help="skip Triton (default: measured)")
    p.add_argument("--profile", action="store_true", help="py-spy vaeserve at concurrency 32 (default: off)")
    p.add_argument("--baseline", default=None, help="python of another vaeserve installation (an older checkout's "
                   ".venv/bin/python), measured as `vaeserve before` beside this one (default: none)")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 0.5)
    levels = (1, 32) if args.quick else (1, 8, 32, 64)
    started = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    before = "" if not args.baseline else subprocess.run(
        ["git", "-C", str(Path(args.baseline).absolute().parents[2]), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True).stdout.strip() or "unknown commit"  # fmt: skip
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        bench = Bench(args, Path(tmp))
        mlp_dir, conv_dir = find_or_export("mlp"), find_or_export("conv")
        mlp, conv = load_graphs(mlp_dir), load_graphs(conv_dir)
        main_calls, busy = (ENCODE1, SAMPLE16), tuple(c for c in levels if c >= 32)
        with contextlib.ExitStack() as stack:
            vaeserve = bench.vaeserve(stack, "mlp", mlp_dir, mlp)
            naive = bench.baseline(stack, "naive", "mlp", mlp_dir, mlp)
            transport = bench.baseline(stack, "transport", "mlp", mlp_dir, mlp)
            pair = bench.vaeserve(stack, "mlp", mlp_dir, mlp, processes=2)
            pair.levels = busy  # what two processes are for
            # The second protocol on the same server and batchers: what it costs against vae.v1.
            oip = Target("vaeserve OIP", vaeserve.servers, lambda call: (OIP_METHOD, call.oip_request(mlp)),
                         vaeserve.metrics_url, levels=busy)  # fmt: skip
            triton = bench.triton(stack, "mlp", mlp_dir) if args.triton else None
            old = (
                bench.vaeserve(stack, "mlp", mlp_dir, mlp, label="before", python=args.baseline)
                if args.baseline
                else None
            )
            everyone = [t for t in (vaeserve, old, pair, naive, transport, triton) if t]
            # OIP in vae.v1's own rounds (its levels: the busy ones), so that each round's ratio is paired.
            schedule = [(ENCODE1, levels, [*everyone, oip]), (SAMPLE16, levels, everyone),
                        (DECODE16, busy, [vaeserve, oip])]  # fmt: skip
            # Sample(1024) moves ~300 KB per call: the transport limit shows how much of the gap is gRPC's.
            schedule.append((SAMPLE1024, (1, 4), [vaeserve, naive, transport]))
            bench.measure("mlp", schedule)
            if args.profile:
                bench.profile(vaeserve)
        with contextlib.ExitStack() as stack:
            targets = [
                bench.vaeserve(stack, "conv", conv_dir, conv),
                bench.baseline(stack, "naive", "conv", conv_dir, conv),
            ]
            bench.measure("conv", [*((call, levels, targets) for call in main_calls), (ENCODE32, (32,), targets)])
            # The conv decoder is the heavy one: the same 8x8 payloads, many times the compute per image.
            targets.append(bench.baseline(stack, "transport", "conv", conv_dir, conv))
            bench.measure("conv", [(SAMPLE1024, (1, 4), targets)])
        # The model `make serve` serves, against the strongest naive server on these cores (grpc.aio, one
        # intra-op thread) and the transport limit: the goals of vaeserve's own defaults (issue 26).
        default_dir = find_or_export("default")
        default = load_graphs(default_dir)
        with contextlib.ExitStack() as stack:
            targets = [bench.vaeserve(stack, "default", default_dir, default)]
            targets += [bench.baseline(stack, system, "default", default_dir, default)
                        for system in ("naive aio", "naive", "transport")]  # fmt: skip
            if args.baseline:
                targets.append(bench.vaeserve(stack, "default", default_dir, default, label="before",
                                              python=args.baseline))  # fmt: skip
            pair = bench.vaeserve(stack, "default", default_dir, default, processes=2)
            pair.levels = busy
            bench.measure("default", [(call, (1, 32), [*targets, pair]) for call in main_calls])
        model_dirs = {"mlp": mlp_dir, "conv": conv_dir, "default": default_dir}
        if mnist.available():
            model_dirs["mnist-mlp"] = mnist_dir = find_or_export("mnist-mlp")
            big = load_graphs(mnist_dir)
            with contextlib.ExitStack() as stack:
                targets = [bench.vaeserve(stack, "mnist-mlp", mnist_dir, big)]
                if has_int8(mnist_dir):  # export keeps int8 only when it moves the test ELBO little
                    targets.append(bench.vaeserve(stack, "mnist-mlp", mnist_dir, big, variant="int8"))
                else:
                    bench.notes.append(
                        f"The MNIST MLP's int8 variant changed the test ELBO by "
                        f"{MAX_ELBO_CHANGE_PER_PIXEL} nats per pixel or more: not kept."
                    )
                targets += [
                    bench.baseline(stack, system, "mnist-mlp", mnist_dir, big) for system in ("naive", "transport")
                ]
                bench.measure("mnist-mlp", [(SAMPLE1024, (1, 4), targets)])
        else:
            bench.notes.append(f"No MNIST files in {mnist.MNIST_DIR}: Sample(1024) measured on the digits MLP only.")
        bench.compute_limit("mlp", mlp_dir)
        bench.compute_limit("conv", conv_dir)
        bench.compute_limit("default", default_dir)
    if args.baseline:
        bench.notes.append(f"**vaeserve before**: the same `vaeserve serve` command from the installation of "
                           f"`--baseline {args.baseline}` (commit {before}), same models, same rounds.")  # fmt: skip
    # Sample(1024)'s reference, for the models it was measured on (not the default model: its decoder is the conv
    # one, the same layers with another likelihood, which Sample does not run).
    measured = {p.model for p in bench.points if p.call == SAMPLE1024.name}
    decoder_images_per_s = {
        model: max(graph_rate(load_graphs(path, t), "decoder", 1024)[0] for t in (1, 0)) * 1024
        for model, path in model_dirs.items()
        if model in measured
    }
    gs = goals(bench, decoder_images_per_s)
    (WORK / "results.json").write_text(json.dumps([asdict(p) for p in bench.points], indent=1))
    plot(bench, gs, PLOT)
    body = report(bench, gs, decoder_images_per_s)
    write_section("serving", "Serving: vaeserve vs a naive server, Triton, and the transport and compute limits", body)
    print("\n" + goals_table(gs))
    print(f"\nwrote BENCHMARKS.md (serving), {PLOT.relative_to(ROOT)}, {(WORK / 'results.json').relative_to(ROOT)} "
          f"in {time.monotonic() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
