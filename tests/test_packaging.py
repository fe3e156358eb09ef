"""Packaging contract: one import namespace, one console command, and a server that never needs torch."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_vaeserve_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp_path, ROOT],
        check=True,
    )
    (wheel,) = tmp_path.glob("vaeserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"vaeserve"}
    for package in ("training", "export", "server", "client", "client/explore", "protos"):
        assert f"vaeserve/{package}/__init__.py" in names
    assert "vaeserve/protos/vae/v1/vae.proto" in names
    assert {"vaeserve/client/explore/page.html", "vaeserve/client/explore/digits.npz"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vaeserve = vaeserve.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_server_imports_nothing_of_the_client() -> None:
    # The client side (library, image files, commands, explorer) lives in vaeserve.client: the server runs
    # without it, so a change there cannot break serving.
    code = (
        "import sys, pkgutil, importlib, vaeserve.server as s\n"
        "for m in pkgutil.iter_modules(s.__path__):\n"
        "    importlib.import_module('vaeserve.server.' + m.name)\n"
        "assert not [k for k in sys.modules if k.startswith('vaeserve.client')], sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_and_server_import_without_torch() -> None:
    # The serve image has no torch: building the CLI and importing the server must not pull it in.
    code = (
        "import sys, vaeserve.cli as c, vaeserve.repository, vaeserve.server\n"
        "c.build_parser()\n"
        "import pkgutil, importlib, vaeserve.server as s\n"
        "for m in pkgutil.iter_modules(s.__path__):\n"
        "    importlib.import_module('vaeserve.server.' + m.name)\n"
        "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if k.startswith('torch'))\n"
        # The explorer's server loads only when `vaeserve explore` runs.
        "assert 'vaeserve.client.explore.app' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
