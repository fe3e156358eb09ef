"""The OIP model repository extension spoken by NVIDIA's real tritonclient (get_model_repository_index,
load_model, unload_model), and who may call it: an admin token when --admin-token-file is given, anyone who can
connect on a loopback-only server, no one otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import run_cli
from tests.harness import serving
from tests.oip.test_oip import triton

ADMIN, USER = "admin-token", "user-token"


def repo_of(model_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae", repo / "vae")
    return repo


def test_tritonclient_lists_loads_and_unloads_versions(model_repo: Path, digits_run: Path, tmp_path: Path) -> None:
    repo = repo_of(model_repo, tmp_path)
    with serving(repo, tmp_path / "serve.log", "--model-control", "explicit") as server:
        run_cli("export", "--checkpoint", str(digits_run / "best.pt"), "--repo", str(repo), "--name", "vae")
        index, versions, loaded, after, unloaded, gone, reloaded = triton(
            "repository", server.target, "vae", "-", "index", "versions", "load", "index", "unload", "index", "load"
        )
        not_picked = "not picked by --version-policy latest:1"
        assert index["result"] == [
            {"name": "vae", "version": "2", "state": "UNAVAILABLE", "reason": not_picked},
            {"name": "vae", "version": "1", "state": "READY"},
        ]
        assert versions["result"] == ["1"]
        assert loaded == {"status": "OK", "result": None}
        assert [(m["version"], m["state"]) for m in after["result"]] == [("2", "READY"), ("1", "UNAVAILABLE")]
        assert unloaded["status"] == "OK"
        assert [m["state"] for m in gone["result"]] == ["UNAVAILABLE", "UNAVAILABLE"]
        assert reloaded["status"] == "OK"
        (versions,) = triton("repository", server.target, "vae", "-", "versions")
        assert versions["result"] == ["2"]
    assert server.returncode == 0


def test_repository_calls_need_the_admin_token_when_one_is_configured(model_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(f"{USER}\n")
    (tmp_path / "admin").write_text(f"{ADMIN}\n")
    flags = ("--model-control", "explicit", "--auth-token-file", str(tmp_path / "tokens"),
             "--admin-token-file", str(tmp_path / "admin"))  # fmt: skip
    with serving(model_repo, tmp_path / "serve.log", *flags) as server:
        for token in ("-", USER, "x" * 4000):  # a longer header is refused by gRPC itself
            (refused,) = triton("repository", server.target, "vae", token, "load")
            assert refused["status"] == "StatusCode.UNAUTHENTICATED", refused
        load, index = triton("repository", server.target, "vae", ADMIN, "load", "index")
        assert load["status"] == "OK" and index["result"][0]["state"] == "READY"
        (versions,) = triton("repository", server.target, "vae", ADMIN, "versions")
        assert versions["status"] == "StatusCode.UNAUTHENTICATED", "the admin token is for the repository calls only"
        (versions,) = triton("repository", server.target, "vae", USER, "versions")
        assert versions["result"] == ["1"]


def test_repository_calls_are_refused_beyond_loopback_without_an_admin_token(model_repo: Path, tmp_path: Path) -> None:
    # Listening on every address, reached here through 127.0.0.1 only.
    with serving(model_repo, tmp_path / "serve.log", "--model-control", "explicit", "--host", "0.0.0.0") as server:
        for action in ("index", "load", "unload"):
            (refused,) = triton("repository", server.target, "vae", "-", action)
            assert refused["status"] == "StatusCode.PERMISSION_DENIED", refused
            assert refused["message"] == (
                "the repository calls need --admin-token-file on a server that listens beyond loopback (--host 0.0.0.0)"
            )
        (versions,) = triton("repository", server.target, "vae", "-", "versions")
        assert versions["result"] == ["1"], "the model itself is still served"
