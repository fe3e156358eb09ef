"""Registers the client commands: `sample`, `encode`, `decode`, `reconstruct`, `score`, `interpolate`, `info`.

Each calls a running server through the client library (api.py) and reads or writes image files (images.py).
Nothing heavy is imported here: grpc and numpy load when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vaeserve.flags import SEED, add_flag, bounded
from vaeserve.progress import add_progress_flags

DEFAULT_TARGET = "localhost:50051"
# What a folder argument contributes: its files with these extensions, at any depth, in sorted order.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy")
NAMED = 5  # a conversion note names its files up to this many, else counts them (--verbose names them all)


def register(sub: argparse._SubParsersAction) -> None:
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
    client_flags(p)
    p.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    p.add_argument("--seed", type=SEED, default=None, help="noise seed; same seed, same images (default: random)")
    p.add_argument("--temperature", type=float, default=1.0, help="scale of the latent noise (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid to write (default: %(default)s)")
    p.add_argument("--latents-out", type=Path, default=None, help=".npy file for the latents (default: none)")
    p.set_defaults(run=run_sample)


def _register_encode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode images with a running server; write the means (or all) to a file")
    client_flags(p)
    _image_flags(p)
    p.add_argument("--seed", type=SEED, default=None, help="seed of the latent sample (default: random)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("embeddings.npy"),
        help=".npy: the means [N, latent_dim], with OUT.paths.txt naming each row's file; .npz: mean, "
        "log_variance, latents and path (default: %(default)s)",
    )
    p.set_defaults(run=run_encode)


def _register_decode(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode latents with a running server and write the images as a PNG grid")
    client_flags(p)
    p.add_argument("latents", type=Path, metavar="LATENTS.npy",
                   help="latents [N, latent_dim] or one [latent_dim], as encode and sample --latents-out write "
                   "them")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("decoded.png"), help="PNG grid to write (default: %(default)s)")
    p.set_defaults(run=run_decode)


def _register_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="reconstruct images with a running server; write them under the inputs")
    client_flags(p)
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
    client_flags(p)
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
    client_flags(p)
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
    client_flags(p)
    p.set_defaults(run=run_info)


def _image_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("images", nargs="+" if required else "*", metavar="IMAGE",
                   help="image files (PNG, JPEG, ...: any size or colours, converted to the model's), .npy arrays "
                   "[N, C, H, W] in [0, 1], or folders of them (searched recursively)")  # fmt: skip
    _conversion_flags(p)
    from .bulk import DEFAULT_CONCURRENCY, MAX_CONCURRENCY

    p.add_argument("--concurrency", type=bounded(int, 1, MAX_CONCURRENCY), default=DEFAULT_CONCURRENCY,
                   help="calls in flight at once; the work is split by the server's limits "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any file could not be read (default: skip them, listed in one summary, "
                   "exit 0)")  # fmt: skip
    p.add_argument("--verbose", action="store_true",
                   help="name every file in the conversion notes (default: counts past a few)")  # fmt: skip
    add_progress_flags(p)


def _conversion_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-resize", dest="resize", action="store_false",
                   help="refuse images of another size instead of resizing them (default: resize, aspect ratio kept, "
                   "padded)")  # fmt: skip
    p.add_argument("--invert", action="store_true",
                   help="invert the images: for dark strokes on a light background (default: as they are)")  # fmt: skip


def client_flags(p: argparse.ArgumentParser) -> None:
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


def connect(args: argparse.Namespace):  # -> VaeClient
    """The client the --target, --tls-*, --token-file and --timeout flags describe."""
    from .api import VaeClient

    return VaeClient(args.target, timeout=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                     tls_key=args.tls_key, token=_token(args))  # fmt: skip


def _calling(args: argparse.Namespace, call):  # -> the call's result
    """Runs call(client); a failed RPC becomes one line naming the server and the status."""
    import grpc

    from vaeserve.errors import VaeserveError

    from .api import rpc_error_message

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

    from .pictures import write_grid

    images, latents = _calling(args, lambda c: c.sample(args.n, args.seed, args.temperature, uint8=True))
    write_grid(images, args.out, scale=args.scale)
    if args.latents_out:
        np.save(args.latents_out, latents)
    print(f"wrote {len(images)} samples to {args.out}")
    return 0


def _read(args: argparse.Namespace):  # -> images [N, C, H, W] converted to the served model's shape
    """The IMAGE arguments as the model takes them, in one array (interpolate's two ends; bulk work goes through
    _bulk). Image files are 8-bit: they travel as UINT8 (a quarter of the bytes); .npy arrays as float32."""
    import numpy as np

    from .images import ImageError, light_on_dark, read_images

    paths = args.images
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


def image_files(paths, flag: str = "IMAGE") -> list[Path]:
    """IMAGE arguments as files: a file as given, a folder as its image files (IMAGE_SUFFIXES) at any depth,
    sorted; checked before the server is asked anything (a typo is the likelier mistake)."""
    from .images import ImageError

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ImageError(f"{flag} {path}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ImageError(f"{path}: no such file")
    return files


def _bulk(args: argparse.Namespace, files: list[Path], work, k: int = 1, skipped: list | None = None):
    """(chunk, result) pairs in input order for `files`, through bulk.py's engine (split by the server's limits,
    --concurrency calls in flight, retried), with progress on stderr (vaeserve/progress.py's policy). Unreadable
    files are skipped and summarised at the end (added to `skipped`); a failed call becomes one line naming the
    server and the status."""
    import grpc

    from vaeserve.errors import VaeserveError
    from vaeserve.progress import Progress

    from .api import rpc_error_message
    from .bulk import Reader, chunks, results, rows_per_call
    from .images import light_on_dark

    # A .npy file holds any number of rows: with one among the files the total is unknown (no ETA).
    total = None if any(f.suffix.lower() == ".npy" for f in files) else len(files)
    with connect(args) as client, Progress.from_args(args).meter(total, args.command, "images") as meter:
        try:
            info = client.info()
            reader = Reader(tuple(info.image_shape), resize=args.resize, invert=args.invert,
                            hint_invert=light_on_dark(info.metadata), skip_unreadable=True)  # fmt: skip
            chunked = chunks(reader.rows(files), rows_per_call(info, client.max_message_bytes, k))
            yield from results(client, chunked, work, concurrency=args.concurrency, progress=meter.update)
        except grpc.RpcError as exc:
            raise VaeserveError(rpc_error_message(args.target, exc)) from None
        if total is not None and reader.skipped:
            meter.update(len(reader.skipped))  # skipped files are dealt with too: the bar ends at its total
    _summarise(args, reader, len(files))
    if skipped is not None:
        skipped += reader.skipped


def _summarise(args: argparse.Namespace, reader, files: int) -> None:  # reader: bulk.Reader
    """The conversion notes (files named up to NAMED, or all with --verbose, else counted) and the unreadable
    files, on stderr."""
    from vaeserve.errors import VaeserveError

    for note, sources in reader.notes.items():
        named = args.verbose or len(sources) <= NAMED
        said = ", ".join(sources) if named else f"{len(sources):,} images"
        print(f"vaeserve {args.command}: {said}: {note}", file=sys.stderr)
    if reader.skipped:
        print(f"vaeserve {args.command}: skipped {len(reader.skipped):,} of {files:,} file(s) that could not be "
              "read:\n  " + "\n  ".join(reader.skipped), file=sys.stderr)  # fmt: skip
    if len(reader.skipped) == files:
        raise VaeserveError(f"none of the {files:,} file(s) could be read")


def _exit_code(args: argparse.Namespace, skipped: list) -> int:
    return 1 if skipped and args.strict else 0


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from .api import _encode
    from .bulk import chunk_seed

    files, skipped = image_files(args.images), []
    sources, parts = [], []
    for chunk, result in _bulk(args, files, lambda run, i, x: run(_encode(x, chunk_seed(args.seed, i))),
                               skipped=skipped):  # fmt: skip
        sources += chunk.sources
        parts.append(result)
    mean, log_variance, latents = (np.concatenate(a) for a in zip(*parts, strict=True))
    if args.out.suffix == ".npz":
        np.savez(args.out, mean=mean, log_variance=log_variance, latents=latents, path=np.array(sources))
    else:
        np.save(args.out, mean)
        paths_out = args.out.with_suffix(".paths.txt")
        paths_out.write_text("".join(f"{s}\n" for s in sources))
    print(f"encoded {len(mean)} images to {args.out} (latent_dim {mean.shape[1]})")
    return _exit_code(args, skipped)


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
    from .pictures import write_grid

    info = _calling(args, lambda c: c.info())
    latents = read_latents(args.latents, info.latent_dim)
    images = _calling(args, lambda c: c.decode(latents, uint8=True))
    write_grid(images, args.out, scale=args.scale)
    print(f"decoded {len(images)} latents to {args.out}")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np

    from vaeserve.errors import VaeserveError

    from .api import _reconstruction
    from .bulk import chunk_seed
    from .pictures import write_grid

    if args.mean and args.seed is not None:
        raise VaeserveError("--seed and --mean: the posterior mean is decoded as it is, there is no noise to seed")
    files, skipped = image_files(args.images), []
    work = lambda run, i, x: _reconstruction(run, x, chunk_seed(args.seed, i), args.mean, True)  # noqa: E731
    pairs = list(_bulk(args, files, work, skipped=skipped))
    images = np.concatenate([chunk.images for chunk, _ in pairs])
    reconstructed = np.concatenate([result[0] for _, result in pairs])
    images, reconstructed = (a.astype("float32") / 255 if a.dtype.kind == "u" else a for a in (images, reconstructed))
    columns = min(len(images), RECONSTRUCTION_COLUMNS)
    write_grid(input_rows(images, reconstructed, columns), args.out, columns=columns, scale=args.scale,
               row_labels=("input", "reconstruction"))  # fmt: skip
    print(f"wrote {len(images)} input(s) and their reconstructions to {args.out}")
    return _exit_code(args, skipped)


RECONSTRUCTION_COLUMNS = 8


def input_rows(inputs, outputs, columns: int):  # -> [2 * rows * columns, C, H, W]
    """Rows of `columns` inputs, each followed by the row of their outputs; the last rows' empty cells are NaN
    (blank in a grid)."""
    import numpy as np

    rows = -(-len(inputs) // columns)
    padded = np.full((2, rows * columns, *inputs.shape[1:]), np.nan, np.float32)
    padded[0, : len(inputs)], padded[1, : len(outputs)] = inputs, outputs
    return padded.reshape(2, rows, columns, *inputs.shape[1:]).swapaxes(0, 1).reshape(-1, *inputs.shape[1:])


def _scores(args: argparse.Namespace, files: list[Path], skipped: list):  # -> (labels, -log p(x), -elbo)
    """Each image's label (its file, file[i] for a .npy file's rows), -log p(x) and -ELBO, in input order."""
    import numpy as np

    from .api import _score
    from .bulk import chunk_seed

    work = lambda run, i, x: run(_score(x, args.k, chunk_seed(args.seed, i)))  # noqa: E731
    labels, nll, neg_elbo = [], [], []
    for chunk, scored in _bulk(args, files, work, k=args.k, skipped=skipped):
        labels += chunk.sources
        nll.append(-scored["log_likelihood"])
        neg_elbo.append(-scored["elbo"])
    return labels, np.concatenate(nll), np.concatenate(neg_elbo)


def run_score(args: argparse.Namespace) -> int:
    """One line per image: -log p(x) (and -ELBO) in nats, and with a threshold `anomaly` or `normal`."""
    import numpy as np

    from vaeserve.errors import VaeserveError

    if not args.images and args.fit_threshold is None:
        raise VaeserveError("give images to score, or --fit-threshold FOLDER to pick a threshold (or both)")
    if args.threshold is not None and args.fit_threshold is not None:
        raise VaeserveError("--threshold and --fit-threshold: give one")
    threshold, skipped = args.threshold, []
    if args.fit_threshold is not None:
        if not args.fit_threshold.is_dir():
            raise VaeserveError(f"--fit-threshold {args.fit_threshold}: not a folder")
        _, scores, _ = _scores(args, image_files([args.fit_threshold], "--fit-threshold"), skipped)
        # Higher than (1 - fpr) of the normal images' scores: that share of normal images is called normal.
        threshold = float(np.quantile(scores, 1 - args.fpr, method="higher"))
        print(f"threshold {threshold:.2f} nats: -log p(x) of {len(scores)} normal image(s) in {args.fit_threshold} "
              f"at false-positive rate {args.fpr:g}")  # fmt: skip
    if args.images:
        for label, nll, neg_elbo in zip(*_scores(args, image_files(args.images), skipped), strict=True):
            verdict = "" if threshold is None else ("  anomaly" if nll > threshold else "  normal")
            print(f"{label}  -log p(x) {nll:.2f} nats  -elbo {neg_elbo:.2f}{verdict}")
    return _exit_code(args, skipped)


def run_interpolate(args: argparse.Namespace) -> int:
    from vaeserve.errors import VaeserveError

    from .pictures import write_grid

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
    described = {f: getattr(info, f) for f in fields} | {"served_versions": list(info.served_versions)}
    expects = describe_input(info.image_shape, info.metadata)
    expects += "; encode and reconstruct convert other sizes and colours (--no-resize refuses them)"
    described |= {"image_shape": list(info.image_shape), "expects": expects,
                  "metadata": dict(sorted(info.metadata.items()))}  # fmt: skip
    print(json.dumps(described, indent=2))
    return 0
