"""py-spy on a running server: record collapsed stacks, then the functions that own the samples.

Needs py-spy (`.venv/bin/python -m pip install py-spy`, in the dev extra) and ptrace rights on the server.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_LINE = re.compile(r":\d+\)$")  # "handler (server/servicer.py:42)" -> per function, not per line


@contextlib.contextmanager
def record(pid: int, seconds: float, out: Path) -> Iterator[None]:
    """Samples `pid` for `seconds` (without pausing it) while the body runs; writes py-spy's raw format."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/python -m pip install py-spy")
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
            "--nonblocking", "--format", "raw", "--output", str(out)]  # fmt: skip
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield
    finally:
        _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.strip()[-500:]}")


def summarize(path: Path, top: int = 15, focus: str = "(server/") -> str:
    """The functions with the most samples on-CPU themselves (self), and the `focus` functions (vaeserve's
    server package) by samples anywhere on their stack (total)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return "no samples"
    lines = [f"{samples} samples", "self %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(top)]
    lines += [f"total %  function in {focus.strip('(')}"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in total.most_common() if focus in f][:top]
    return "\n".join(lines)
