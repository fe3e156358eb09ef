"""The shared `vaeserve serve` of the server tests (tests/harness.py starts it) and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServerProcess, serving
from vaeserve.server.client import VaeClient

# The shared server: small limits so the limit cases are cheap to provoke.
MAX_NUM_SAMPLES = 512
MAX_MESSAGE_MB = 1


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    flags = (
        "--max-batch-size",
        "32",
        "--max-num-samples",
        str(MAX_NUM_SAMPLES),
        "--max-message-mb",
        str(MAX_MESSAGE_MB),
    )
    with serving(model_repo, log, *flags) as s:
        yield s
    assert s.returncode == 0, s.output()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[VaeClient]:
    with VaeClient(server.target, timeout=30) as c:
        yield c
