"""`vaeserve train` under torchrun: 2 gloo ranks on loopback compute the updates of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import run_cli
from tests.harness import free_port


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path: Path):
    # 20% validation leaves 1150 training images: even, so the sampler's shards drop none, and the epoch ends
    # on a partial global batch of 62 (31 per rank).
    flags = [
        "train",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--val-fraction",
        "0.2",
        "--latent-dim",
        "4",
        "--no-report",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]  # fmt: skip
    ddp = tmp_path / "ddp"
    proc = subprocess.run([*torchrun, "-m", "vaeserve.cli", *flags, "--out", str(ddp)],
                          env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout

    single = tmp_path / "single"
    run_cli(*flags, "--out", str(single))

    a = torch.load(ddp / "checkpoint.pt", weights_only=True)
    b = torch.load(single / "checkpoint.pt", weights_only=True)
    for key in b["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    # Rank 0 alone writes: one metrics line for the one epoch, not one per rank.
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
