"""New model versions going live while serving (issue 25): `python -m tests.bench.bench_lifecycle`.

A `vaeserve serve --model-control explicit` takes 32 closed-loop clients (16 Encode(1), 16 Sample(16)) for
60 s, while 10 loads alternate two versions (the digits MLP and conv models, each published as the next version
number by an atomic rename, as export does; the 1st and the 10th swap both bring in the conv model) and one
corrupt version (a truncated decoder) is loaded between them. Measured: failed calls, p99 of the calls that
started during a swap (from the load call until a second after the new version first answered) against the
p99 of all others, each swap's peak RSS above the RSS it started from (against what the larger version adds
to a server serving both under the same clients), RSS after the 10th swap against after the 1st (old versions
freed), and the time from the load call to the new version's first answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from tests.bench.bench_serving import WORK, find_or_export
from tests.bench.report import markdown_table, write_section
from tests.harness import ServerProcess, vaeserve_process, wait_until
from vaeserve.client.api import to_tensor
from vaeserve.protos.inference import grpc_service_pb2 as pb
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.server.models import CYCLE_HELD

CLIENTS = 32
SWAPS = 10
CORRUPT_AFTER = 5  # the corrupt version is loaded after this many swaps
STEADY_S = 5.0  # before the first swap
FOOTPRINT_STARTS = 3  # servers started per policy to measure what one version adds
FOOTPRINT_SERVE_S = 2.0  # load each of them serves before its RSS is read
SWAP_WINDOW_S = 1.0  # calls starting this long after the new version's first answer still count as "during"


@dataclass
class Call:
    start: float
    seconds: float
    ok: bool
    version: int


def publish(source: Path, repo: Path, version: int, corrupt: bool = False) -> None:
    """vae/VERSION holding `source`'s graphs, written beside the repository and renamed into place (as export)."""
    staging = repo / "vae" / f".publish-{version}"
    shutil.copytree(source, staging)
    info = json.loads((staging / "model.json").read_text())
    (staging / "model.json").write_text(json.dumps({**info, "version": version}))
    if corrupt:
        decoder = staging / "decoder.onnx"
        decoder.write_bytes(decoder.read_bytes()[:-10])
    staging.rename(repo / "vae" / str(version))


def rss_mb(server: ServerProcess, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(server: ServerProcess) -> None:
    """Resets the process's VmHWM to its RSS now (Linux: clear_refs 5), so the next read is this window's peak."""
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")


async def client(channel: grpc.aio.Channel, i: int, stop: asyncio.Event, end: float, calls: list[Call]) -> None:
    """Calls until `stop` is set (or, at the latest, until `end`)."""
    if i % 2:
        method, request = "Sample", vae_pb2.SampleRequest(num_samples=16).SerializeToString()
        parse = vae_pb2.SampleResponse.FromString
    else:
        images = to_tensor(np.random.default_rng(i).random((1, 1, 8, 8), dtype=np.float32))
        method, request = "Encode", vae_pb2.EncodeRequest(images=images).SerializeToString()
        parse = vae_pb2.EncodeResponse.FromString
    call = channel.unary_unary(f"/vae.v1.VaeService/{method}")
    while not stop.is_set() and (start := time.perf_counter()) < end:
        try:
            version = parse(await call(request, timeout=30)).model_version
            calls.append(Call(start, time.perf_counter() - start, True, version))
        except grpc.aio.AioRpcError:
            calls.append(Call(start, time.perf_counter() - start, False, 0))


async def run(server: ServerProcess, repo: Path, sources: list[Path], seconds: float) -> dict:
    calls: list[Call] = []
    swaps: list[dict] = []
    rss: list[float] = []
    load = pb.RepositoryModelLoadRequest(model_name="vae").SerializeToString()
    async with grpc.aio.insecure_channel(server.target) as channel:
        begin, stop = time.perf_counter(), asyncio.Event()
        clients = [asyncio.create_task(client(channel, i, stop, begin + 3 * seconds, calls)) for i in range(CLIENTS)]
        load_call = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")
        await asyncio.sleep(STEADY_S)  # the steady state the swaps are compared with
        steady_peak = rss_mb(server, "VmHWM")
        interval = (seconds - STEADY_S - 1) / (SWAPS + 1)
        version = 1
        for swap in range(SWAPS + 1):
            corrupt = swap == CORRUPT_AFTER
            version += 1
            publish(sources[version % 2 == 0], repo, version, corrupt)  # even: conv, odd: MLP
            before_mb = rss_mb(server)  # the steady state of the version served now, which the swap starts from
            reset_peak(server)
            t0 = time.perf_counter()
            try:
                await load_call(load, timeout=120)
                refused = ""
            except grpc.aio.AioRpcError as exc:
                refused = exc.code().name
            returned = time.perf_counter()
            if not corrupt:
                freed = f"version {version - 1 if swap != CORRUPT_AFTER + 1 else version - 2}: freed"
                # The new version's sessions for heavy batches are built once the old one is freed (server/models.py):
                # RSS is read with the swap complete.
                logged = (freed, f"version {version}: sessions for heavy batches ready")
                deadline = time.perf_counter() + 60
                while not any(c.version == version for c in calls) or not all(s in server.output() for s in logged):
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"version {version} never answered or completed, or the one before was "
                                           "never freed")  # fmt: skip
                    await asyncio.sleep(0.01)
                first = min(c.start + c.seconds for c in calls if c.version == version)
                rss.append(rss_mb(server))
                swaps.append({"version": version, "load_s": returned - t0, "live_s": first - t0, "start": t0,
                              "until": first + SWAP_WINDOW_S, "before_mb": before_mb,
                              "peak_mb": rss_mb(server, "VmHWM")})  # fmt: skip
            else:
                swaps.append({"version": version, "refused": refused, "start": t0, "until": returned})
            await asyncio.sleep(max(0.0, t0 + interval - time.perf_counter()))
        await asyncio.sleep(max(0.0, begin + seconds - time.perf_counter()))
        stop.set()
        await asyncio.gather(*clients)
    peak = rss_mb(server, "VmHWM")
    warm = [c for c in calls if c.start >= begin + 1.0]  # the first second: connections and caches warming
    swapping = [any(s["start"] <= c.start <= s["until"] for s in swaps) for c in warm]
    during = [c for c, swap in zip(warm, swapping, strict=True) if swap]
    steady = [c for c, swap in zip(warm, swapping, strict=True) if not swap]
    return {"calls": len(calls), "failed": sum(not c.ok for c in calls), "swaps": swaps, "rss_after": rss,
            "steady_peak_mb": steady_peak, "peak_mb": peak,
            "p99_steady_ms": 1e3 * float(np.percentile([c.seconds for c in steady], 99)),
            "p99_swaps_ms": 1e3 * float(np.percentile([c.seconds for c in during], 99)),
            "calls_during": len(during)}  # fmt: skip


async def serve_a_while(server: ServerProcess, seconds: float) -> None:
    """The benchmark's clients for `seconds`: every graph runs on the event loop and on the worker."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        end, stop, calls = time.perf_counter() + seconds, asyncio.Event(), []
        await asyncio.gather(*(client(channel, i, stop, end, calls) for i in range(CLIENTS)))


def one_model_mb(repo: Path, work: Path) -> float:
    """What the larger of the two versions adds to a serving server's RSS: both served (latest:2) against the
    smaller served alone, after FOOTPRINT_SERVE_S of the benchmark's load (an idle server lacks what serving
    allocates: each thread's first runs of a graph), each the median of FOOTPRINT_STARTS servers (one start's
    RSS varies by a few MiB)."""
    sizes = {}
    for policy in ("specific:1", "specific:2", "latest:2"):
        starts = []
        for start in range(FOOTPRINT_STARTS):
            log = work / f"footprint-{policy.replace(':', '-')}-{start}.log"
            with vaeserve_process(repo, log, "--version-policy", policy) as server:
                asyncio.run(serve_a_while(server, FOOTPRINT_SERVE_S))
                starts.append(rss_mb(server))
        sizes[policy] = statistics.median(starts)
    return sizes["latest:2"] - min(sizes["specific:1"], sizes["specific:2"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    work = WORK / "lifecycle"
    shutil.rmtree(work, ignore_errors=True)
    repo = work / "models"
    sources = [find_or_export("mlp"), find_or_export("conv")]
    (repo / "vae").mkdir(parents=True)
    publish(sources[0], repo, 1)
    publish(sources[1], repo, 2)
    extra_mb = one_model_mb(repo, work)
    shutil.rmtree(repo / "vae" / "2")
    with vaeserve_process(repo, work / "serve.log", "--model-control", "explicit") as server:
        result = asyncio.run(run(server, repo, sources, args.seconds))
        wait_until(lambda: server.metric('vaeserve_model_load_failures_total{reason="verify"}') == 1, "the count")
        log = server.output()
    good = [s for s in result["swaps"] if "live_s" in s]
    (corrupt,) = [s for s in result["swaps"] if "refused" in s]
    live = [s["live_s"] for s in good]
    rss = result["rss_after"]
    growth = rss[-1] / rss[0] - 1
    extra = result["peak_mb"] - result["steady_peak_mb"]
    # Each swap against the RSS it started from: the whole run's peak also holds the difference between the
    # models (the MLP served at the start, two conv versions in a conv -> conv swap after the corrupt one).
    worst = max(good, key=lambda s: s["peak_mb"] - s["before_mb"])
    swap_extra = worst["peak_mb"] - worst["before_mb"]
    ratio = result["p99_swaps_ms"] / result["p99_steady_ms"]
    freed, collected = log.count(": freed\n"), log.count(CYCLE_HELD)
    print(json.dumps({**result, "one_model_mb": extra_mb}, indent=1, default=str))
    rows = [
        ["failed calls", f"{result['failed']} of {result['calls']:,}", "0", _ok(result["failed"] == 0)],
        ["p99 during swaps vs steady", f"{result['p99_swaps_ms']:.1f} vs {result['p99_steady_ms']:.1f} ms "
         f"({ratio:.2f}x; {result['calls_during']:,} calls during swaps)", "<= 2x", _ok(ratio <= 2)],
        ["peak RSS of a swap above the RSS it started from (the largest of the swaps)",
         f"{swap_extra:.0f} MiB (version {worst['version']}; one extra served version: {extra_mb:.0f} MiB, median "
         f"of {FOOTPRINT_STARTS} starts)",
         "<= one extra model", _ok(swap_extra <= max(extra_mb, 1.0))],
        ["the run's peak RSS above the steady state before the first swap", f"{extra:.0f} MiB (includes the "
         "larger model replacing the smaller)", "", ""],
        ["RSS after the 10th swap vs the 1st", f"{rss[-1]:.0f} vs {rss[0]:.0f} MiB ({100 * growth:+.1f}%)",
         "within 10%", _ok(abs(growth) <= 0.10)],
        ["load call to the new version answering", f"median {statistics.median(live):.2f} s, max {max(live):.2f} s "
         f"(the call returns in median {statistics.median(s['load_s'] for s in good):.2f} s)", "", ""],
        ["versions freed by reference counting (no full garbage collection on the event loop)",
         f"{freed - collected} of {freed}", "all", _ok(freed == len(good) and collected == 0)],
        ["corrupt version", f"refused {corrupt['refused']}, counted once (reason verify), served version kept", "",
         _ok(corrupt["refused"] == "FAILED_PRECONDITION")],
    ]  # fmt: skip
    body = (
        f"{CLIENTS} closed-loop clients (16 Encode(1), 16 Sample(16)) for {args.seconds:g} s on one `vaeserve serve "
        f"--model-control explicit` (digits models, CPU), {SWAPS} RepositoryModelLoad calls alternating the MLP "
        f"and conv versions (each published as the next version by a rename, as export does) and one corrupt "
        f"version after the {CORRUPT_AFTER}th. Clients and server share this machine's cores.\n\n"
        + markdown_table(["measure", "measured", "goal", "met"], rows)
    )
    write_section("lifecycle", "Model versions going live while serving", body)


def _ok(passed: bool) -> str:
    return "yes" if passed else "**no**"


if __name__ == "__main__":
    main()
