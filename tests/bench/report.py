"""Writes one benchmark's figures into its own section of BENCHMARKS.md, leaving the others intact."""

from __future__ import annotations

import platform
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nWritten by `make bench` (tests/bench/); each section is replaced by its own benchmark's run.\n"
)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def commit(root: Path = ROOT) -> str:
    """`commit abc1234`: the checkout's, with "and uncommitted changes" where tracked files other than what the
    benchmarks write (BENCHMARKS.md, figures in docs/) differ from it; "no git checkout" outside one."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    if not head:
        return "no git checkout"
    # Not stripped: a porcelain line is "XY path", and " M" of the first line must keep its space.
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    ours = [
        path for path in changed if path != BENCHMARKS.name and not (path.startswith("docs/") and path.endswith(".png"))
    ]
    return f"commit {head}" + (" and uncommitted changes" if ours else "")


def write_section(name: str, title: str, body: str) -> None:
    """Replace (or append) the section delimited by `<!-- bench:NAME -->` markers."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = f"{start}\n## {title}\n\n_Run {stamp} at {commit()} on {machine()}._\n\n{body.strip()}\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
