"""The run header in BENCHMARKS.md names the commit, and says "uncommitted changes" only when code differs from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.bench.report import commit


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def _checkout(root: Path) -> str:
    (root / "docs").mkdir()
    for name in ("BENCHMARKS.md", "docs/bench.png", "server.py"):
        (root / name).write_text("before\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return _git(root, "rev-parse", "--short", "HEAD")


def test_what_the_benchmarks_write_is_not_an_uncommitted_change(tmp_path: Path) -> None:
    head = _checkout(tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("figures\n")  # the first line of `git status --porcelain`: " M ..."
    (tmp_path / "docs/bench.png").write_text("plot\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert commit(tmp_path) == f"commit {head}"


def test_a_changed_source_file_is(tmp_path: Path) -> None:
    head = _checkout(tmp_path)
    (tmp_path / "server.py").write_text("after\n")
    assert commit(tmp_path) == f"commit {head} and uncommitted changes"


def test_outside_a_checkout(tmp_path: Path) -> None:
    assert commit(tmp_path) == "no git checkout"
