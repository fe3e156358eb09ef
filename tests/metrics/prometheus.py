"""A real Prometheus server (Debian's /usr/bin/prometheus) on loopback, scraping given targets every second."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ServerProcess, free_port


class Prometheus:
    def __init__(self, process: ServerProcess) -> None:
        self.url = f"http://127.0.0.1:{process.port}"
        self.process = process

    def _get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.load(response)

    def query(self, expr: str) -> dict[str, Any]:
        """The /api/v1/query answer for `expr`, evaluated now (status, data.resultType, data.result)."""
        try:
            return self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        except urllib.error.HTTPError as exc:  # 400/422 for bad expressions: their JSON says why
            return json.load(exc)

    def targets(self) -> list[dict[str, Any]]:
        """/api/v1/targets: the active scrape targets with their health and last error."""
        return self._get("/api/v1/targets")["data"]["activeTargets"]

    def wait_for(self, what: str, ready: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Polls `ready` until it returns something truthy; fails naming `what` and Prometheus's log tail."""
        deadline = time.monotonic() + timeout
        while True:
            result = ready()
            if result:
                return result
            if self.process.returncode is not None or time.monotonic() > deadline:
                tail = self.process.output()[-3000:]
                pytest.fail(f"prometheus: timed out after {timeout:g} s waiting for {what} (last: {result!r})\n{tail}")
            time.sleep(0.25)


def _ready(process: ServerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def prometheus(targets: list[str], tmp_path: Path) -> Iterator[Prometheus]:
    """Runs Prometheus scraping `targets` (host:port) every second; skips where the binary is not installed."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus; `make system-deps` installs it)")
    config = tmp_path / "prometheus.yml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "vaeserve", "static_configs": [{"targets": targets}]}],
    }))  # fmt: skip
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    with ServerProcess(argv, tmp_path / "prometheus.log", port, _ready, name="prometheus") as process:
        yield Prometheus(process)
