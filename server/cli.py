"""Registers `vaeserve serve` and the client commands `sample`, `encode`, `decode`, `reconstruct`, `info`.

Every `serve` flag can also be set by an environment variable, VAESERVE_<FLAG> (e.g. VAESERVE_PORT,
VAESERVE_MAX_BATCH_SIZE), which is how the Kubernetes manifests configure it; a flag on the command line wins.
Nothing heavy is imported here: grpc, onnxruntime and numpy load when a command runs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from vaeserve.repository import VARIANTS

from .config import DEVICES, EVENT_LOOPS, ServeConfig

DEFAULT_TARGET = "localhost:50051"


def env_name(flag: str) -> str:
    return "VAESERVE_" + flag.lstrip("-").upper().replace("-", "_")


def add_flag(p: argparse.ArgumentParser, flag: str, default: Any, help: str, **kwargs: Any) -> None:
    """--flag whose default comes from VAESERVE_FLAG when set (argparse applies `type` to it like to a flag).
    A switch (a bool default) is `--flag [true|false]`, plus `--no-flag`."""
    env = env_name(flag)
    if isinstance(default, bool):
        kwargs.update(type=boolean, nargs="?", const=True)
        p.add_argument("--no-" + flag[2:], dest=flag[2:].replace("-", "_"), action="store_false",
                       default=argparse.SUPPRESS, help=f"the same as {flag} false")  # fmt: skip
    kwargs.setdefault("type", type(default) if default is not None else str)
    p.add_argument(flag, default=os.environ.get(env, default), help=f"{help} (env {env}; default: %(default)s)",
                   **kwargs)  # fmt: skip


def bounded(kind: type, low: float, high: float):  # -> an argparse `type`
    """An argparse type: a `kind` (int or float) in [low, high]; NaN, infinities and garbage are refused."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
            valid = math.isfinite(value) and low <= value <= high
        except (ValueError, OverflowError):  # garbage, or an integer too long for a float
            valid = False
        if not valid:
            bounds = f"[{low}, {high}]" if kind is int else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} in {bounds}, "
                                             f"got {text!r}")  # fmt: skip
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


SEED = bounded(int, 0, 2**64 - 1)  # the proto's uint64


def boolean(text: str) -> bool:
    """A switch's value from a flag or the environment: true/false, yes/no, on/off or 1/0."""
    value = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    try:
        return value[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


# Every `serve` flag: ServeConfig field -> (help, extra argparse arguments). The default comes from ServeConfig.
SERVE_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "repo": ("model repository folder", {"type": Path}),
    "name": ("model name in the repository", {}),
    "version": ("model version number, or latest", {}),
    "variant": ("graph pair to serve: plain (fp32), or one `vaeserve export --variants` wrote (ort, int8: CPU; "
                "fp16: CUDA)", {"choices": VARIANTS}),
    "host": ("address to listen on (0.0.0.0 in a container)", {}),
    "port": ("gRPC port (0: any free port, logged)", {}),
    "reuse_port": ("let several serve processes share --port (SO_REUSEPORT; each needs its own --metrics-port). "
                   "The kernel gives each a share of the clients, so a process whose --tls-cert, --tls-client-ca "
                   "or --auth-token-file differ from those already on the port is refused; off: a port in use is "
                   "an error", {}),
    "metrics_port": ("Prometheus /metrics port (0: disabled); unauthenticated, keep it off client networks", {}),
    "metrics_host": ("address /metrics listens on (empty: --host)", {}),
    "health_port": ("plaintext port serving only the gRPC health service, for probes that speak no TLS "
                    "(0: none)", {}),
    "device": ("execution provider: auto (CUDA when usable, else CPU), cpu, cuda", {"choices": DEVICES}),
    "cuda_mem_limit_mb": ("most GPU memory the CUDA arena may hold, in MiB (0: no limit)", {}),
    "max_batch_size": ("most rows per onnxruntime run", {}),
    "max_batch_delay_ms": ("longest a batch that is not full may wait for the requests of callers known to be "
                           "active (a lone caller never waits)", {}),
    "max_queue": ("requests waiting per graph before new ones get RESOURCE_EXHAUSTED", {}),
    "inline_budget_us": ("batches predicted (from warm-up timings) to take at most this many microseconds run on "
                         "the event loop instead of the worker thread (CPU only; 0: always the thread)", {}),
    "max_num_samples": ("most rows (samples, images, interpolation steps) in one request", {}),
    "max_importance_samples": ("most posterior samples per image a Score call may ask for", {}),
    "intra_op_threads": ("onnxruntime intra-op threads per session (0: 2, or fewer under a smaller CPU quota)", {}),
    "inter_op_threads": ("onnxruntime inter-op threads per session", {}),
    "max_concurrent_rpcs": ("most calls in flight at once (>= --max-batch-size); more get RESOURCE_EXHAUSTED", {}),
    "max_wait_ms": ("refuse new calls (RESOURCE_EXHAUSTED) when those in flight would take longer than this to "
                    "serve at the measured rate", {}),
    "max_message_mb": ("largest request or response message in MiB (0: what the model's largest valid call "
                       "needs)", {}),
    "max_connection_age_s": ("close client connections after this many seconds, so load rebalances across "
                             "replicas (0: never)", {}),
    "max_connection_age_grace_s": ("time calls on an aged connection get to finish", {}),
    "grace_period": ("seconds in-flight calls get to finish after SIGTERM/SIGINT (the server exits as soon as "
                     "they have)", {}),
    "tls_cert": ("PEM certificate chain: serve TLS on --port (with --tls-key)", {}),
    "tls_key": ("PEM private key of --tls-cert", {}),
    "tls_client_ca": ("PEM CA bundle: require client certificates it signed (mTLS)", {}),
    "auth_token_file": ("file of accepted bearer tokens, one per line, re-read when it changes or on SIGHUP; "
                        "calls need `authorization: Bearer TOKEN` (health stays open). Fails closed: once the file "
                        "is deleted, unreadable or empty, no token is accepted until it holds some again", {}),
    "reflection": ("gRPC server reflection (with --auth-token-file it needs a token too, like the API it "
                   "describes)", {}),
    "max_health_watches": ("most health Watch streams open at once (they need no token); more get "
                           "RESOURCE_EXHAUSTED", {}),
    "otlp_endpoint": ("OpenTelemetry collector for a span per RPC and per batch, http://HOST:4317 (needs the "
                      "tracing extra; empty: off)", {}),
    "event_loop": ("asyncio event loop: auto (uvloop when installed), asyncio, uvloop", {"choices": EVENT_LOOPS}),
}  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    _register_serve(sub)
    _register_clients(sub)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model version over gRPC",
        description="Serve a model version over gRPC. Every flag can also be set by VAESERVE_<FLAG>.",
    )
    for field in fields(ServeConfig):
        help, kwargs = SERVE_FLAGS[field.name]
        add_flag(p, "--" + field.name.replace("_", "-"), field.default, help, **kwargs)
    add_flag(p, "--log-format", "text", "log line format", choices=("text", "json"))
    add_flag(p, "--log-level", "INFO", "log level")
    p.set_defaults(run=run_serve)


def _register_clients(sub: argparse._SubParsersAction) -> None:
    for register_command in (
        _register_sample,
        _register_encode,
        _register_decode,
        _register_reconstruct,
        _register_score,
        _register_interpolate,
        _register_info,
    ):
        register_command(sub)


def _register_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples from a running server and write them as a PNG grid")
    _client_flags(p)
    p.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    p.add_argument("--seed", type=SEED, default=None, help="noise seed; same seed, same images (default: random)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the latent noise (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid to write (default: %(default)s)")
    p.add_argument("--latents-out", type=Path, default=None, help=".npy file for the latents (default: none)")
    p.set_defaults(run=run_sample)


def _register_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode images with a running server; write the means (or all) to a file")
    _client_flags(p)
    _image_flags(p)
    p.add_argument("--seed", type=SEED, default=None, help="seed of the latent sample (default: random)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("embeddings.npy"),
        help=".npy: the means [N, latent_dim]; .npz: mean, log_variance, latents (default: %(default)s)",
    )
    p.set_defaults(run=run_encode)


def _register_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode latents with a running server and write the images as a PNG grid")
    _client_flags(p)
    p.add_argument("latents", type=Path, metavar="LATENTS.npy",
                   help="latents [N, latent_dim] or one [latent_dim], as encode and sample --latents-out write "
                   "them")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("decoded.png"), help="PNG grid to write (default: %(default)s)")
    p.set_defaults(run=run_decode)


def _register_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct images with a running server; write them under the inputs")
    _client_flags(p)
    _image_flags(p)
    p.add_argument("--seed", type=SEED, default=None, help="seed of the latent sample (default: random)")
    p.add_argument("--mean", action="store_true", help="decode the posterior mean instead of a sample: "
                   "deterministic, no --seed (default: a sample)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("reconstructions.png"),
                   help="PNG grid: rows of inputs, each above its reconstructions (default: %(default)s)")  # fmt: skip
    p.set_defaults(run=run_reconstruct)


def _register_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="how likely each image is under the model: -log p(x) per image, for anomaly "
                       "detection")  # fmt: skip
    _client_flags(p)
    _image_flags(p, required=False)
    p.add_argument("--k", type=bounded(int, 1, 100_000), default=100,
                   help="posterior samples per image, for the importance-weighted bound "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=SEED, default=None, help="seed of the posterior samples (default: random)")
    p.add_argument("--threshold", type=bounded(float, -1e9, 1e9), default=None,
                   help="-log p(x) in nats above which an image is called an anomaly (default: none; or "
                   "--fit-threshold)")  # fmt: skip
    p.add_argument("--fit-threshold", type=Path, default=None, metavar="FOLDER",
                   help="pick --threshold from the normal images in FOLDER (PNG, JPEG, .npy) at --fpr "
                   "(default: none)")  # fmt: skip
    p.add_argument(
        "--fpr",
        type=bounded(float, 1e-6, 0.5),
        default=0.05,
        help="false-positive rate on the normal images that --fit-threshold allows (default: %(default)s)",
    )
    p.set_defaults(run=run_score)


def _register_interpolate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="decode the path between two images' embeddings as a PNG strip")
    _client_flags(p)
    p.add_argument("images", nargs=2, metavar="IMAGE", help="the two ends: image files or .npy arrays of one image")
    p.add_argument("--steps", type=bounded(int, 2, 4096), default=10,
                   help="images on the path, both ends included (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--spherical",
        action="store_true",
        help="follow the great circle (slerp) instead of the straight line (default: straight)",
    )
    _conversion_flags(p)
    p.add_argument("--out", type=Path, default=Path("interpolation.png"), help="PNG strip (default: %(default)s)")
    p.set_defaults(run=run_interpolate)


def _register_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the served model's description as JSON")
    _client_flags(p)
    p.set_defaults(run=run_info)


def _image_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("images", nargs="+" if required else "*", metavar="IMAGE",
                   help="image files (PNG, JPEG, ...: any size or colours, converted to the model's) or .npy arrays "
                   "[N, C, H, W] in [0, 1]")  # fmt: skip
    _conversion_flags(p)


def _conversion_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-resize", dest="resize", action="store_false",
                   help="refuse images of another size instead of resizing them (default: resize, aspect ratio kept, "
                   "padded)")  # fmt: skip
    p.add_argument("--invert", action="store_true",
                   help="invert the images: for dark strokes on a light background (default: as they are)")  # fmt: skip


def _client_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--target", DEFAULT_TARGET, "server address host:port")
    # No VAESERVE_* variables for these: in a server's container they would pick up the server's own certificate.
    p.add_argument("--tls-ca", help="PEM CA bundle that signed the server's certificate: connect with TLS "
                   "(default: plaintext, unless --tls-cert is given)")  # fmt: skip
    p.add_argument("--tls-cert", help="PEM client certificate for servers that require one (mTLS), with --tls-key "
                   "(default: none)")  # fmt: skip
    p.add_argument("--tls-key", help="PEM private key of --tls-cert (default: none)")
    p.add_argument("--token-file", help="file whose first line is the bearer token to send (default: the token in "
                   "env VAESERVE_TOKEN, if set)")  # fmt: skip
    p.add_argument("--timeout", type=bounded(float, 0.001, 3600), default=60.0,
                   help="deadline of each call in seconds (default: %(default)s)")  # fmt: skip
    p.add_argument("--scale", type=bounded(int, 1, 64), default=4,
                   help="PNG pixels per image pixel (default: %(default)s)")  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    import dataclasses

    from .logs import configure_logging
    from .serve import ServeConfig, run

    configure_logging(args.log_format, args.log_level)
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    return run(config)


def connect(args: argparse.Namespace):  # -> VaeClient
    """The client the --target, --tls-*, --token-file and --timeout flags describe."""
    from .client import VaeClient

    return VaeClient(args.target, timeout=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                     tls_key=args.tls_key, token=_token(args))  # fmt: skip


def _calling(args: argparse.Namespace, call):  # -> the call's result
    """Runs call(client); a failed RPC becomes one line naming the server and the status."""
    import grpc

    from vaeserve.errors import VaeserveError

    from .client import rpc_error_message

    with connect(args) as client:
        try:
            return call(client)
        except grpc.RpcError as exc:
            raise VaeserveError(rpc_error_message(args.target, exc)) from None


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token: the first line of --token-file, else VAESERVE_TOKEN, else none."""
    if args.token_file:
        from vaeserve.errors import VaeserveError

        try:
            lines = Path(args.token_file).read_text().split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise VaeserveError(f"--token-file {args.token_file}: cannot read it ({exc})") from exc
        if not lines[0].strip():
            raise VaeserveError(f"--token-file {args.token_file}: its first line holds no token")
        return lines[0].strip()
    return os.environ.get("VAESERVE_TOKEN") or None


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .client import write_grid

    images, latents = _calling(args, lambda c: c.sample(args.n, args.seed, args.temperature, uint8=True))
    write_grid(images, args.out, scale=args.scale)
    if args.latents_out:
        np.save(args.latents_out, latents)
    print(f"wrote {len(images)} samples to {args.out}")
    return 0


def _read(args: argparse.Namespace, paths=None):  # -> images [N, C, H, W] converted to the served model's shape
    """The images of `paths` (default: the IMAGE arguments) as the model takes them. Image files are 8-bit: they
    travel as UINT8 (a quarter of the bytes); .npy arrays as float32."""
    import numpy as np

    from .images import ImageError, light_on_dark, read_images

    paths = args.images if paths is None else paths
    for path in map(Path, paths):  # before the server is asked anything: a typo is the likelier mistake
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
    info = _calling(args, lambda c: c.info())
    images, notes = read_images(paths, tuple(info.image_shape), resize=args.resize, invert=args.invert,
                                hint_invert=light_on_dark(info.metadata))  # fmt: skip
    for note in notes:
        print(f"vaeserve {args.command}: {note}", file=sys.stderr)
    if all(Path(p).suffix.lower() != ".npy" for p in paths):
        images = np.rint(images * 255).astype(np.uint8)
    return images


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    images = _read(args)
    mean, log_variance, latents = _calling(args, lambda c: c.encode(images, args.seed))
    if args.out.suffix == ".npz":
        np.savez(args.out, mean=mean, log_variance=log_variance, latents=latents)
    else:
        np.save(args.out, mean)
    print(f"encoded {len(images)} images to {args.out} (latent_dim {mean.shape[1]})")
    return 0


def read_latents(path: Path, latent_dim: int):  # -> float32 [N, latent_dim]
    """A .npy file of latents, [N, latent_dim] or one [latent_dim], as float32; refused, naming the file, when it
    is not one, holds no rows, has another width, or holds NaN or infinite values."""
    import numpy as np

    from vaeserve.errors import VaeserveError

    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise VaeserveError(f"{path}: cannot read as .npy ({exc})") from exc
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise VaeserveError(f"{path}: expected real numbers, got {z.dtype}")
    z = z[None] if z.ndim == 1 else z
    if z.ndim != 2 or z.shape[1] != latent_dim or not len(z):
        raise VaeserveError(f"{path}: expected latents [N, {latent_dim}] (or one [{latent_dim}]) for the served "
                            f"model's latent_dim {latent_dim}, got {list(z.shape)}")  # fmt: skip
    z = z.astype(np.float32)
    if not np.isfinite(z).all():
        raise VaeserveError(f"{path}: holds NaN or infinite values")
    return z


def run_decode(args: argparse.Namespace) -> int:
    from .client import write_grid

    info = _calling(args, lambda c: c.info())
    latents = read_latents(args.latents, info.latent_dim)
    images = _calling(args, lambda c: c.decode(latents, uint8=True))
    write_grid(images, args.out, scale=args.scale)
    print(f"decoded {len(images)} latents to {args.out}")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    from vaeserve.errors import VaeserveError

    from .client import write_grid

    if args.mean and args.seed is not None:
        raise VaeserveError("--seed and --mean: the posterior mean is decoded as it is, there is no noise to seed")
    images = _read(args)
    reconstructed, _ = _calling(args, lambda c: c.reconstruct(images, args.seed, mean=args.mean, uint8=True))
    images, reconstructed = (a.astype("float32") / 255 if a.dtype.kind == "u" else a for a in (images, reconstructed))
    columns = min(len(images), RECONSTRUCTION_COLUMNS)
    write_grid(input_rows(images, reconstructed, columns), args.out, columns=columns, scale=args.scale,
               row_labels=("input", "reconstruction"))  # fmt: skip
    print(f"wrote {len(images)} input(s) and their reconstructions to {args.out}")
    return 0


RECONSTRUCTION_COLUMNS = 8


def input_rows(inputs, outputs, columns: int):  # -> [2 * rows * columns, C, H, W]
    """Rows of `columns` inputs, each followed by the row of their outputs; the last rows' empty cells are NaN
    (blank in a grid)."""
    import numpy as np

    rows = -(-len(inputs) // columns)
    padded = np.full((2, rows * columns, *inputs.shape[1:]), np.nan, np.float32)
    padded[0, : len(inputs)], padded[1, : len(outputs)] = inputs, outputs
    return padded.reshape(2, rows, columns, *inputs.shape[1:]).swapaxes(0, 1).reshape(-1, *inputs.shape[1:])


def _labels(paths) -> list[str]:  # one per image: a file's name, with [i] for the rows of a .npy file
    import numpy as np

    labels = []
    for path in map(Path, paths):
        rows = len(np.load(path, mmap_mode="r")) if path.suffix.lower() == ".npy" else 1
        labels += [str(path)] if rows == 1 else [f"{path}[{i}]" for i in range(rows)]
    return labels


def _images_in(folder: Path) -> list[Path]:
    from vaeserve.errors import VaeserveError

    if not folder.is_dir():
        raise VaeserveError(f"--fit-threshold {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".npy"))
    if not files:
        raise VaeserveError(f"--fit-threshold {folder}: holds no images (.png, .jpg, .jpeg, .bmp, .npy)")
    return files


def run_score(args: argparse.Namespace) -> int:
    """One line per image: -log p(x) (and -ELBO) in nats, and with a threshold `anomaly` or `normal`."""
    import numpy as np

    from vaeserve.errors import VaeserveError

    if not args.images and args.fit_threshold is None:
        raise VaeserveError("give images to score, or --fit-threshold FOLDER to pick a threshold (or both)")
    if args.threshold is not None and args.fit_threshold is not None:
        raise VaeserveError("--threshold and --fit-threshold: give one")
    threshold = args.threshold
    if args.fit_threshold is not None:
        normal = _read(args, _images_in(args.fit_threshold))
        scores = -_calling(args, lambda c: c.score(normal, args.k, args.seed))["log_likelihood"]
        # Higher than (1 - fpr) of the normal images' scores: that share of normal images is called normal.
        threshold = float(np.quantile(scores, 1 - args.fpr, method="higher"))
        print(f"threshold {threshold:.2f} nats: -log p(x) of {len(normal)} normal image(s) in {args.fit_threshold} "
              f"at false-positive rate {args.fpr:g}")  # fmt: skip
    if args.images:
        images = _read(args)
        scored = _calling(args, lambda c: c.score(images, args.k, args.seed))
        for label, nll, neg_elbo in zip(_labels(args.images), -scored["log_likelihood"], -scored["elbo"],
                                        strict=True):  # fmt: skip
            verdict = "" if threshold is None else ("  anomaly" if nll > threshold else "  normal")
            print(f"{label}  -log p(x) {nll:.2f} nats  -elbo {neg_elbo:.2f}{verdict}")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    from vaeserve.errors import VaeserveError

    from .client import write_grid

    ends = _read(args)
    if len(ends) != 2:
        raise VaeserveError(f"expected two images, one in each IMAGE argument, got {len(ends)}")
    images, _ = _calling(args, lambda c: c.interpolate(ends[0], ends[1], args.steps, args.spherical, uint8=True))
    write_grid(images, args.out, columns=len(images), scale=args.scale)
    print(f"wrote {len(images)} images from {args.images[0]} to {args.images[1]} to {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import json

    from .images import describe_input

    info = _calling(args, lambda c: c.info())
    fields = ("name", "version", "variant", "latent_dim", "likelihood", "execution_provider", "max_batch_size",
              "max_num_samples", "max_importance_samples", "can_score")  # fmt: skip
    described = {f: getattr(info, f) for f in fields}
    expects = describe_input(info.image_shape, info.metadata)
    expects += "; encode and reconstruct convert other sizes and colours (--no-resize refuses them)"
    described |= {"image_shape": list(info.image_shape), "expects": expects,
                  "metadata": dict(sorted(info.metadata.items()))}  # fmt: skip
    print(json.dumps(described, indent=2))
    return 0
