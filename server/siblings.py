"""--reuse-port siblings must share their security settings.

With --reuse-port several processes listen on one port and the kernel spreads connections over them, so a
sibling started with weaker settings (plaintext, no tokens, another CA) would serve a share of the clients of a
secured one. Each process on a shared port therefore holds a shared lock on a marker file for that port, in a
per-user runtime folder (SO_REUSEPORT only lets processes of one user share a port), and the marker names the
settings its holders run with; a process that finds it held under other settings refuses to start. The kernel
drops a dead process's lock, so a crash leaves nothing to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vaeserve.errors import VaeserveError

from .config import ServeConfig

SETTINGS = ("tls_cert", "tls_client_ca", "auth_token_file")  # what decides who may call, and how


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/vaeserve, else vaeserve-UID in the temporary folder: private to this user either way."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "vaeserve" if base else Path(tempfile.gettempdir()) / f"vaeserve-{os.getuid()}"


def settings_of(config: ServeConfig) -> dict[str, str]:
    """The security settings, files by their absolute paths (the same file however it was named)."""
    values = {name: getattr(config, name) for name in SETTINGS}
    return {name: str(Path(value).resolve()) if value else "" for name, value in values.items()}


def describe(settings: dict[str, str]) -> str:
    given = [f"--{name.replace('_', '-')} {value}" for name, value in settings.items() if value]
    return ", ".join(given) if given else "plaintext, no tokens"


@contextlib.contextmanager
def sharing_port(config: ServeConfig) -> Iterator[None]:
    """Holds --port's marker for as long as the block runs; refuses (VaeserveError) when the processes already
    sharing the port run with other security settings."""
    folder = runtime_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        guard = os.open(folder / f"port-{config.port}.guard", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise VaeserveError(f"--reuse-port: cannot use the runtime folder {folder} ({exc.strerror or exc})") from exc
    settings = settings_of(config)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one start-up at a time on this port: the check and the claim are one step
        marker = os.open(folder / f"port-{config.port}.json", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: siblings are serving
            held = _read(marker)
            if held != settings:
                os.close(marker)
                raise VaeserveError(
                    f"--reuse-port: port {config.port} is served by vaeserve processes with other security settings "
                    f"({describe(held)}; this one: {describe(settings)}), and the kernel would give this one a share "
                    f"of their clients: start it with the same --tls-cert, --tls-client-ca and --auth-token-file, "
                    f"or on another --port"
                ) from None
        else:  # the first on the port: its settings are the port's
            os.ftruncate(marker, 0)
            os.pwrite(marker, json.dumps(settings).encode(), 0)
        fcntl.flock(marker, fcntl.LOCK_SH)
    finally:
        os.close(guard)
    try:
        yield
    finally:
        os.close(marker)


def _read(marker: int) -> dict[str, str]:
    try:
        held = json.loads(os.pread(marker, 1 << 16, 0) or b"{}")
    except ValueError:
        return {}
    return held if isinstance(held, dict) else {}
