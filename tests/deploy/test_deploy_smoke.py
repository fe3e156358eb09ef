"""`make deploy-smoke` (tests/deploy/smoke.py) as a developer or CI runs it: overlays/cpu played as a pod and driven
by the Locust image with no failure, and the KServe ServingRuntime's container answering ModelInfer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.deploy.conftest import ROOT


def test_make_deploy_smoke_plays_the_manifests(images: float, kubectl: str, dev_certs: Path, model_repo: Path) -> None:
    # `images` builds what the target needs (so this run finds them cached); kubectl and dev_certs skip the test,
    # saying why, where kubectl or openssl is missing.
    done = subprocess.run(["make", "--no-print-directory", "deploy-smoke", f"REPO={model_repo}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    (summary,) = [line for line in done.stdout.splitlines() if line.startswith("deploy-smoke passed: ")]
    figures = json.loads(summary.removeprefix("deploy-smoke passed: "))
    assert figures["locust_requests"] > 0 and figures["locust_failures"] == 0, figures
