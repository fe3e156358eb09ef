"""A real `vaeserve serve` for the explorer tests, and the explorer's own server in this process in front of it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServerProcess, serving
from vaeserve.client.api import VaeClient
from vaeserve.client.explore.app import Explorer, ExplorerServer

SCALE = 1  # PNG pixels per image pixel in the in-process explorer: a cell is 8 + 1 pixels


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(model_repo, tmp_path_factory.mktemp("serve") / "serve.log") as s:
        yield s


@pytest.fixture(scope="module")
def explorer(server: ServerProcess) -> Iterator[ExplorerServer]:
    """The explorer's HTTP server on a free loopback port, served from a thread of this process."""
    with VaeClient(server.target, timeout=30) as client:
        http = ExplorerServer(("127.0.0.1", 0), Explorer.connect(client, SCALE))
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        yield http
        http.shutdown()
        http.server_close()
        thread.join()
