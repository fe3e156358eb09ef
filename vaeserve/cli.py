"""The one console command: `vaeserve <subcommand>`.

Each package registers its own subcommands (training: train, evaluate, experiments; export: export; server:
serve; client: sample, encode, decode, reconstruct, score, interpolate, info; client.explore: explore).
Registration imports no heavy libraries, so `vaeserve serve` never imports torch and `vaeserve --help` is
instant; each subcommand imports its implementation when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vaeserve import __version__
from vaeserve.errors import VaeserveError


def build_parser() -> argparse.ArgumentParser:
    from vaeserve.client import cli as client_cli
    from vaeserve.client.explore import cli as explore_cli
    from vaeserve.export import cli as export_cli
    from vaeserve.server import cli as server_cli
    from vaeserve.training import cli as training_cli

    parser = argparse.ArgumentParser(
        prog="vaeserve",
        description="Train a variational autoencoder, export it to ONNX and serve it over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"vaeserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (training_cli, export_cli, server_cli, client_cli, explore_cli):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except VaeserveError as exc:
        print(f"vaeserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
