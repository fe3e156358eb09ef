"""`make load`: a headless Locust run against a vaeserve started here on free loopback ports.

Serves ./models (`vaeserve serve --repo models --name vae`), waits for its health check to say SERVING,
runs tests/load/locustfile.py with 32 users for 30 s, prints Locust's summary, stops the server and exits
non-zero if any request failed or the server could not start.

    python -m tests.load.run_local [--users 32] [--spawn-rate 8] [--run-time 30s] [--repo models]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tests import harness

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def run_locust(
    host: str, users: int, spawn_rate: float, run_time: str, csv_prefix: Path, *extra: str, env: dict | None = None
) -> int:
    """Headless Locust against HOST:PORT (with `env` added to the environment); its exit code (1 when any request
    failed)."""
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "-u", str(users), "-r", str(spawn_rate), "-t", run_time, "--csv", str(csv_prefix),
            "--host", host, "--exit-code-on-error", "1", "--stop-timeout", "5", *extra]  # fmt: skip
    environment = {**os.environ, **(env or {})}
    return subprocess.run(argv, cwd=ROOT, env=environment, timeout=_seconds(run_time) + 120).returncode


def _seconds(run_time: str) -> float:
    """Locust's run-time syntax (30s, 2m, 1h30m) in seconds."""
    total, number = 0.0, ""
    for ch in run_time:
        if ch.isdigit():
            number += ch
        else:
            total += int(number or 0) * {"s": 1, "m": 60, "h": 3600}[ch]
            number = ""
    return total + int(number or 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository (default: %(default)s)")
    p.add_argument("--name", default="vae", help="model name in the repository (default: %(default)s)")
    p.add_argument("--users", type=int, default=32, help="simulated users (default: %(default)s)")
    p.add_argument("--spawn-rate", type=float, default=8, help="users started per second (default: %(default)s)")
    p.add_argument("--run-time", default="30s", help="run time, e.g. 30s or 2m (default: %(default)s)")
    p.add_argument("--csv", type=Path, default=Path("runs/load/locust"),
                   help="prefix of Locust's CSV files (default: %(default)s)")  # fmt: skip
    args = p.parse_args(argv)
    repo = args.repo if args.repo.is_absolute() else ROOT / args.repo
    if not list((repo / args.name).glob("*/model.json")):
        print(f"run_local: no model in {repo / args.name}: run `make model` first (trains and exports the default "
              f"digits model into {args.repo})", file=sys.stderr)  # fmt: skip
        return 2
    csv_prefix = args.csv if args.csv.is_absolute() else ROOT / args.csv
    log = csv_prefix.parent / "server.log"
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        with harness.serving(repo, log, name=args.name) as server:
            print(f"vaeserve SERVING at {server.target} (log: {log}); Locust: {args.users} users for {args.run_time}")
            code = run_locust(server.target, args.users, args.spawn_rate, args.run_time, csv_prefix)
    except harness.ServerFailed as exc:
        print(f"run_local: {exc}", file=sys.stderr)
        return 1
    if code != 0:
        print(f"run_local: Locust exited {code}: failed requests in {csv_prefix}_failures.csv", file=sys.stderr)
    else:
        print(f"run_local: no failed requests; statistics in {csv_prefix}_stats.csv")
    return code


if __name__ == "__main__":
    sys.exit(main())
