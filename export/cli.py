"""Registers `vaeserve export`: write a checkpoint's graphs as a new model version, or re-verify one."""

from __future__ import annotations

import argparse

from vaeserve.repository import VARIANT_KINDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX graphs in a model repository, or verify an exported version",
        description="Write REPO/NAME/VERSION/{encoder.onnx,decoder.onnx,model.json} from a training checkpoint "
        "(checked against PyTorch, moved into place atomically), or re-check an existing version with --verify.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="training checkpoint to export, e.g. runs/NAME/best.pt (default: none)")
    source.add_argument(
        "--verify", metavar="VERSION_DIR", help="re-check an exported version, e.g. models/vae/1 (default: none)"
    )
    p.add_argument("--repo", default="models", help="model repository folder (default: %(default)s)")
    p.add_argument("--name", default="vae", help="model name, a folder under --repo (default: %(default)s)")
    p.add_argument("--version", type=int, default=None, help="version number to write (default: the next free integer)")
    p.add_argument(
        "--variants",
        default="",
        help=f"comma-separated extra graphs to measure and write, from {', '.join(VARIANT_KINDS)}; each is kept only "
        "if it changes the test ELBO by less than 0.001 nats per pixel (default: none)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.verify:
        from vaeserve.repository import verify_version

        version = verify_version(args.verify)
        print(f"{version.path}: ok ({version.name} version {version.version})")
        return 0

    from vaeserve.repository import RepositoryError

    from .exporter import export_checkpoint

    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted(set(variants) - set(VARIANT_KINDS))
    if unknown:
        raise RepositoryError(f"--variants: unknown {unknown}, choose from {', '.join(VARIANT_KINDS)}")
    print(export_checkpoint(args.checkpoint, args.repo, args.name, args.version, variants))
    return 0
