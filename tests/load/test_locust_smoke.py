"""A short headless Locust run of tests/load/locustfile.py against a real server: no failures, every RPC sent."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests import harness
from tests.harness import free_port
from tests.load.run_local import main as run_local
from tests.load.run_local import run_locust
from tests.server.certs import CertificateAuthority

# The request names locustfile.py reports, one per task.
TASK_NAMES = {"Encode(1)", "Encode(32)", "Sample(16)", "Sample(16, uint8)", "Decode(16)", "Reconstruct(16)",
              "Score(4x16)", "Interpolate(8)"}  # fmt: skip


def read_stats(csv_prefix: Path) -> dict[str, dict[str, str]]:
    """Locust's PREFIX_stats.csv rows by request name, the "Aggregated" row included."""
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def target(default_server: harness.ServerProcess) -> str:
    """HOST:PORT of the suite's shared `vaeserve serve`, for the module's Locust runs."""
    return default_server.target


def test_mixed_traffic_has_no_failures_and_reaches_every_rpc(target: str, tmp_path: Path) -> None:
    csv_prefix = tmp_path / "mixed"
    assert run_locust(target, 8, 8, "10s", csv_prefix) == 0
    stats = read_stats(csv_prefix)
    assert int(stats["Aggregated"]["Failure Count"]) == 0
    assert set(stats) - {"Aggregated"} == TASK_NAMES
    for name in TASK_NAMES:
        assert int(stats[name]["Request Count"]) > 0, name


def test_tags_focus_on_one_rpc(target: str, tmp_path: Path) -> None:
    csv_prefix = tmp_path / "encode"
    assert run_locust(target, 4, 4, "3s", csv_prefix, "--tags", "encode") == 0
    assert set(read_stats(csv_prefix)) - {"Aggregated"} == {"Encode(1)", "Encode(32)"}


def test_a_secured_server_is_loaded_over_tls_with_a_token(model_repo: Path, tmp_path: Path) -> None:
    # What the Locust workers in deploy/k8s/locust get: the CA in VAESERVE_TLS_CA, the token in VAESERVE_TOKEN_FILE.
    ca = CertificateAuthority(tmp_path)
    cert = ca.issue("server", server=True)
    (tmp_path / "tokens").write_text("locust-token\n")
    flags = ("--tls-cert", str(cert.cert), "--tls-key", str(cert.key), "--auth-token-file", str(tmp_path / "tokens"))
    env = {"VAESERVE_TLS_CA": str(ca.pem), "VAESERVE_TOKEN_FILE": str(tmp_path / "tokens")}
    with harness.serving(model_repo, tmp_path / "serve.log", *flags, with_health_port=True) as server:
        csv_prefix = tmp_path / "secured"
        assert run_locust(f"localhost:{server.port}", 4, 4, "3s", csv_prefix, "--tags", "encode", env=env) == 0
        assert int(read_stats(csv_prefix)["Aggregated"]["Request Count"]) > 0
        # Without the token every call fails, and the run says so.
        assert run_locust(f"localhost:{server.port}", 2, 2, "2s", tmp_path / "no-token", "--tags", "encode",
                          env={"VAESERVE_TLS_CA": str(ca.pem)}) != 0  # fmt: skip


def test_failures_fail_the_run(tmp_path: Path) -> None:
    # Nothing listens on the port: every call fails and Locust's exit code says so.
    assert run_locust(f"127.0.0.1:{free_port()}", 2, 2, "2s", tmp_path / "down") != 0


def test_run_local_without_a_model_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_local(["--repo", str(tmp_path)]) == 2
    assert "make model" in capsys.readouterr().err
