"""Registers `vaeserve explore`; the page's server is imported only when the command runs."""

from __future__ import annotations

import argparse

from vaeserve.flags import bounded

from ..cli import client_flags

# What one person's page needs (a browser opens at most 6 connections to a host) and what bounds the rest: each
# turn may decode an upload (up to a 4096x4096 file, 64 MB in Pillow) and holds a request body (up to 16 MiB).
MAX_REQUESTS = 4
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT_S = 60.0  # a 16 MiB body at 2 Mbit/s, or a photo from a phone on a slow network


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
    p.add_argument("--max-requests", type=bounded(int, 1, 64), default=MAX_REQUESTS,
                   help="requests answered at once (each may decode an upload and call the server); more wait up to "
                   "--request-timeout-s for a turn, then get 503 (default: %(default)s)")  # fmt: skip
    p.add_argument("--max-connections", type=bounded(int, 1, 1024), default=MAX_CONNECTIONS,
                   help="open connections (a thread each); more are answered 503 and closed at once "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--request-timeout-s", type=bounded(float, 0.1, 3600), default=REQUEST_TIMEOUT_S,
                   help="seconds a client has to send a request (line, headers, then body) and for each write of "
                   "its answer; a slower or idle connection is closed (default: %(default)s)")  # fmt: skip
    p.set_defaults(run=run_explore)


def run_explore(args: argparse.Namespace) -> int:
    from .app import run

    return run(args)
