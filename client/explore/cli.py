"""Registers `vaeserve explore`; the page's server is imported only when the command runs."""

from __future__ import annotations

import argparse

from vaeserve.flags import bounded

from ..cli import client_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explore",
        help="a local web page to look at a running server's model: samples, interpolations, latent traversals",
        description="Serve a web page that draws samples, interpolates between two images and walks each latent "
        "dimension, all computed by the gRPC server at --target.",
    )
    client_flags(p)
    # Plain flags, no VAESERVE_* variables: VAESERVE_PORT and VAESERVE_HOST belong to `serve`.
    p.add_argument("--host", default="127.0.0.1", help="address the page listens on; other than loopback, anyone "
                   "who reaches it can call the server with your credentials (default: %(default)s)")  # fmt: skip
    p.add_argument("--port", type=bounded(int, 0, 65535), default=8080,
                   help="port of the page (0: any free port, printed) (default: %(default)s)")  # fmt: skip
    p.set_defaults(run=run_explore)


def run_explore(args: argparse.Namespace) -> int:
    from .app import run

    return run(args)
