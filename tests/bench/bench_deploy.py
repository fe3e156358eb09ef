"""Deployment benchmark: image build times and sizes, and the CPU image's start, memory and stop.

1. Builds: `make image-*` one image at a time, from cold (the images, their build stages and the local Debian base
   removed first; pip downloads from PyPI every time) and again with every layer cached. --warm skips the cold
   builds (and keeps what is built).
2. Sizes: `podman image inspect` of each image.
3. The baked CPU image (model inside, `make model`'s) started as the Deployment hardens it (uid 10001, read-only
   root with /tmp writable, no capabilities, no privilege escalation, the overlays/cpu batching and grace
   settings), plaintext on loopback: seconds from `podman run` to SERVING (RUNS starts); resident memory of
   the server process at idle and its peak under CLIENTS closed-loop Encode(1) callers; seconds from SIGTERM to
   the container's exit, idle and under the same load.

    python -m tests.bench.bench_deploy [--warm]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time

import grpc
import numpy as np

from tests.bench.report import markdown_table, write_section
from tests.deploy.containers import (
    BAKED_IMAGE,
    LOCUST_IMAGE,
    MODELS_IMAGE,
    SERVER_IMAGE,
    Container,
    build,
    on_loopback,
    podman,
    problem,
    wait_serving,
)
from tests.harness import METHOD, ROOT
from vaeserve.client.api import VaeClient, to_tensor
from vaeserve.protos.vae.v1 import vae_pb2

REPO = ROOT / "models"
LOCAL_BASE = "localhost/vaeserve-base:bookworm"
GPU_IMAGE = SERVER_IMAGE.replace("-cpu", "-gpu")
TARGETS = {  # make target -> the image it tags
    "image-cpu": SERVER_IMAGE,
    "image-cpu-baked": BAKED_IMAGE,
    "image-gpu": GPU_IMAGE,
    "image-models": MODELS_IMAGE,
    "image-locust": LOCUST_IMAGE,
}
RUNS = 5
CLIENTS = 32
LOAD_S = 10.0
# overlays/cpu's settings that change how the server batches and stops.
SETTINGS = {"VAESERVE_MAX_BATCH_SIZE": "64", "VAESERVE_MAX_BATCH_DELAY_MS": "1", "VAESERVE_GRACE_PERIOD": "20"}
HARDENED = ["--user", "10001:10001", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
            "--cap-drop=all", "--security-opt", "no-new-privileges"]  # fmt: skip


def builds(warm_only: bool) -> list[list[object]]:
    """(target, cold s, cached s) per image, the base first."""
    rows = []
    if not warm_only:
        for image in [*TARGETS.values(), LOCAL_BASE]:
            podman("rmi", "--force", "--ignore", image)
        podman("image", "prune", "--force")  # the build stages, so no layer is reused
        start = time.monotonic()
        cold = {"base-image": build(REPO, "base-image")}
        cold.update({target: build(REPO, target) for target in TARGETS})
        print(f"cold builds: {cold} ({time.monotonic() - start:.0f} s)", flush=True)
    warm = {target: build(REPO, target) for target in ["base-image", *TARGETS]}
    print(f"cached builds: {warm}", flush=True)
    for target, seconds in warm.items():
        rows.append([target, f"{cold[target]:.0f}" if not warm_only else "-", f"{seconds:.1f}"])
    return rows


def sizes() -> list[list[object]]:
    rows = []
    for image in [LOCAL_BASE, *TARGETS.values()]:
        size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
        rows.append([image.removeprefix("localhost/"), f"{size / 1e6:.0f}"])
    return rows


def started(name: str) -> tuple[Container, str, float]:
    """The baked image, hardened, on loopback ports; (container, target, seconds from `podman run` to SERVING)."""
    env, ports = on_loopback(SETTINGS, "VAESERVE_PORT", "VAESERVE_METRICS_PORT")
    server = Container(name, BAKED_IMAGE, HARDENED, env)
    start = time.monotonic()
    server.start()
    target = f"127.0.0.1:{ports['VAESERVE_PORT']}"
    wait_serving(target, server.running, "the baked image")
    return server, target, time.monotonic() - start


async def load(target: str, stop: threading.Event, answered: threading.Event) -> int:
    """CLIENTS closed-loop Encode(1) callers until `stop` (or the server stops answering); sets `answered` once
    every caller has had a reply. The calls answered."""
    with VaeClient(target) as client:
        shape = tuple(client.info().image_shape)
    data = vae_pb2.EncodeRequest(images=to_tensor(np.full((1, *shape), 0.5, np.float32))).SerializeToString()
    count, first = 0, 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD + "Encode")

        async def caller() -> None:
            nonlocal count, first
            for i in range(1_000_000):
                if stop.is_set():
                    return
                try:
                    await call(data, timeout=30)
                except grpc.aio.AioRpcError:
                    return
                count += 1
                if i == 0:
                    first += 1
                    if first == CLIENTS:
                        answered.set()

        await asyncio.gather(*(caller() for _ in range(CLIENTS)))
    return count


def under_load(server: Container, target: str, then_sigterm: bool) -> dict[str, float]:
    """Load for LOAD_S seconds, sampling the server's RSS; then either stop the load, or SIGTERM the server under
    it and time its exit."""
    stop, answered = threading.Event(), threading.Event()
    result: dict[str, float] = {}
    thread = threading.Thread(target=lambda: result.update(calls=asyncio.run(load(target, stop, answered))))
    thread.start()
    assert answered.wait(60), "the callers got no answers"
    peak, start = server.rss_bytes(), time.monotonic()
    while time.monotonic() - start < LOAD_S:
        peak = max(peak, server.rss_bytes())
        time.sleep(0.25)
    out = {"rss_load": float(peak)}
    if then_sigterm:
        signalled = time.monotonic()
        server.send_signal("TERM")
        assert server.wait(60) == 0
        out["sigterm_load_s"] = time.monotonic() - signalled
    stop.set()
    thread.join(60)
    out["calls_per_s"] = result["calls"] / (time.monotonic() - start)
    return out


def runtime_figures() -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"serving_s": [], "rss_idle": [], "rss_load": [], "calls_per_s": [],
                                       "sigterm_idle_s": [], "sigterm_load_s": []}  # fmt: skip
    for i in range(RUNS):
        name = f"vaeserve-bench-{i}"
        server, target, serving_s = started(name)
        try:
            figures["serving_s"].append(serving_s)
            if i % 2:  # idle stop on odd runs, stop under load on even ones
                time.sleep(1.0)  # settle after warm-up before reading idle memory
                figures["rss_idle"].append(server.rss_bytes())
                signalled = time.monotonic()
                server.send_signal("TERM")
                assert server.wait(60) == 0
                figures["sigterm_idle_s"].append(time.monotonic() - signalled)
            else:
                for key, value in under_load(server, target, then_sigterm=True).items():
                    figures[key].append(value)
        finally:
            server.remove()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", action="store_true", help="skip the cold builds (default: False)")
    args = parser.parse_args(argv)
    reason = problem()
    if reason:
        raise SystemExit(f"bench_deploy: {reason}")
    build_rows = builds(args.warm)
    size_rows = sizes()
    figures = runtime_figures()
    mb = lambda values: f"{statistics.median(values) / 1e6:.0f} (max {max(values) / 1e6:.0f})"  # noqa: E731
    s = lambda values: f"{statistics.median(values):.2f} (max {max(values):.2f})"  # noqa: E731
    calls = lambda values: f"{statistics.median(values):.0f} (max {max(values):.0f})"  # noqa: E731
    runtime_rows = [
        ["`podman run` to SERVING, s", s(figures["serving_s"]), RUNS],
        ["server RSS idle after warm-up, MB", mb(figures["rss_idle"]), len(figures["rss_idle"])],
        [f"server RSS peak under {CLIENTS} Encode(1) callers, MB", mb(figures["rss_load"]), len(figures["rss_load"])],
        [f"calls/s under {CLIENTS} callers (the callers on the same cores)", calls(figures["calls_per_s"]),
         len(figures["calls_per_s"])],
        ["SIGTERM to exit, idle, s", s(figures["sigterm_idle_s"]), len(figures["sigterm_idle_s"])],
        [f"SIGTERM to exit under {CLIENTS} callers, s", s(figures["sigterm_load_s"]), len(figures["sigterm_load_s"])],
    ]  # fmt: skip
    print(markdown_table(["target", "cold s", "cached s"], build_rows))
    print(markdown_table(["image", "MB"], size_rows))
    print(markdown_table(["figure", "median (max)", "runs"], runtime_rows))
    body = f"""`python -m tests.bench.bench_deploy` (`make bench`): the images `make images` builds with podman from the
local Debian base (deploy/base-image.sh: bookworm, Python 3.11), and the baked CPU image started hardened as the
Deployment runs it (uid 10001, read-only root with /tmp writable, no capabilities, no privilege escalation;
overlays/cpu's batching and grace settings), plaintext on loopback, with `make model`'s model inside.

**Builds** (wall s; cold: the images, their build stages and the base removed first, pip downloading from PyPI;
cached: every layer reused, the build context sent again):

{markdown_table(["make target", "cold s", "cached s"], build_rows)}

**Sizes** (`podman image inspect`; layers are shared, so the models image adds ~1 MB to the base it shares with
the others; from busybox it is ~5 MB; the GPU image is built FROM the Debian base here, without CUDA):

{markdown_table(["image", "MB"], size_rows)}

**The baked CPU image running** ({RUNS} starts; RSS: the server process's VmRSS; idle stops on alternate starts,
stops under load on the others):

{markdown_table(["figure", "median (max)", "runs"], runtime_rows)}
"""
    write_section("deploy", "Deployment: images and the CPU container", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
