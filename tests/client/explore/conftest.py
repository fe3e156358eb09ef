"""The explorer's own server in this process, in front of the suite's shared `vaeserve serve` (`default_server`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.harness import ServerProcess
from vaeserve.client.api import VaeClient
from vaeserve.client.explore.app import Explorer, ExplorerServer

SCALE = 1  # PNG pixels per image pixel in the in-process explorer: a cell is 8 + 1 pixels


@pytest.fixture(scope="module")
def explorer(default_server: ServerProcess) -> Iterator[ExplorerServer]:
    """The explorer's HTTP server on a free loopback port, served from a thread of this process."""
    with VaeClient(default_server.target, timeout=30) as client:
        http = ExplorerServer(("127.0.0.1", 0), Explorer.connect(client, SCALE))
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        yield http
        http.shutdown()
        http.server_close()
        thread.join()
