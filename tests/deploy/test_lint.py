"""deploy/ passes yamllint and checkov as committed; checkov's skips are the annotated ones, each with a reason."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT

# checkov pins old packaging/networkx/python-dateutil, so `make test` installs it into its own venv (Makefile).
TOOLS_VENV = ROOT / ".venv-tools"
CHECKOV = TOOLS_VENV / "bin" / "checkov"


def test_yamllint_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def checkov(kubectl: str) -> Path:  # kubectl: checkov renders the kustomizations with it
    if not CHECKOV.exists():
        # The Makefile rule is the one installer; run it here too so a bare `pytest` works where pip can.
        done = subprocess.run(["make", "-s", str(TOOLS_VENV.relative_to(ROOT) / ".installed-stamp")], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if done.returncode != 0 or not CHECKOV.exists():
            pytest.skip(f"checkov could not be installed into {TOOLS_VENV} (no package index?):\n{done.stderr[-2000:]}")
    return CHECKOV


def test_checkov_finds_no_failed_check(checkov: Path) -> None:
    done = subprocess.run([str(checkov), "--config-file", str(DEPLOY / ".checkov.yaml"), "--directory", str(DEPLOY)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    # Both kinds of file were scanned: a config that silently matched nothing would also exit 0.
    assert "dockerfile scan results" in report and "kustomize scan results" in report, report
    assert re.findall(r"Failed checks: (\d+)", report) == ["0", "0"] and "Traceback" not in report, report
