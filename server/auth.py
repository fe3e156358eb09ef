"""Bearer-token access control for the model's services: `authorization: Bearer TOKEN` on every call.

Tokens come from a file, one per line (blank lines and `#` comments ignored), re-read when the file changes
(polled) or on SIGHUP: a Kubernetes Secret mounted as a directory is updated in place, so rotating it takes
effect without a restart. A presented token is hashed and compared with every accepted token's hash in
constant time, so neither the comparison nor which token matched shows in the timing. The health service is
not behind this: probes carry no token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from vaeserve.errors import VaeserveError

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the file is checked for a change
MAX_TOKEN_FILE_BYTES = 1 << 20
BEARER = "bearer "


class Tokens:
    def __init__(self, path: str | Path, flag: str = "--auth-token-file") -> None:
        self.path = Path(path)
        self.flag = flag  # named in its messages
        self._digests: list[bytes] = []
        self._stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task | None = None
        self._digests = self._read()  # a bad file at start-up stops the server with its message

    def _read(self) -> list[bytes]:
        try:
            stat = self.path.stat()
            if stat.st_size > MAX_TOKEN_FILE_BYTES:
                raise VaeserveError(f"{self.flag} {self.path}: over {MAX_TOKEN_FILE_BYTES} bytes")
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise VaeserveError(f"{self.flag} {self.path}: cannot read it ({exc})") from exc
        tokens = [line.strip() for line in text.splitlines()]
        tokens = [t for t in tokens if t and not t.startswith("#")]
        if not tokens:
            raise VaeserveError(f"{self.flag} {self.path}: holds no token (one per line)")
        self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return [hashlib.sha256(t.encode()).digest() for t in tokens]

    def reload(self) -> None:
        """Re-reads the file; a file that cannot be read or holds no token keeps the tokens accepted so far."""
        try:
            self._digests = self._read()
        except VaeserveError as exc:
            log.warning("%s; still accepting the %d token(s) read before", exc, len(self._digests))
            return
        log.info("auth tokens reloaded from %s: %d accepted", self.path, len(self._digests))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="auth-token-file")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                stat = os.stat(self.path)
            except OSError:
                continue  # mid-rotation, or gone: keep what we have until a file is there again
            if (stat.st_ino, stat.st_mtime_ns, stat.st_size) != self._stamp:
                self.reload()

    def accepts(self, metadata: Any) -> bool:
        """Whether the call's metadata carries `authorization: Bearer T` for an accepted T."""
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value[:7].lower() == BEARER:
                presented = hashlib.sha256(value[7:].strip().encode()).digest()
                matched = False
                for digest in self._digests:  # every one, always: the time does not depend on which matched
                    matched |= hmac.compare_digest(presented, digest)
                return matched
        return False

    def checking(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`behavior` (an async unary-unary method) refusing calls without an accepted token (UNAUTHENTICATED)."""

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not self.accepts(context.invocation_metadata()):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown bearer token: send `authorization: Bearer TOKEN` metadata",
                )
            return await behavior(request, context)

        return checked
