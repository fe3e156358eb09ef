"""How many CPUs this process may use, read from the kernel (no onnxruntime): what sizes the thread pools."""

from __future__ import annotations

import os
from pathlib import Path


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> float:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (v2 cpu.max, v1 cfs_quota_us), so
    a container limited to 2 CPUs on a 64-core host sizes its thread pools for 2."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return cpus
    if quota in ("max", "-1"):
        return cpus
    return min(cpus, max(int(quota) / int(period), 1e-3))
