"""Bearer-token access control for the model's services: `authorization: Bearer TOKEN` on every call.

Tokens come from a file, one per line (blank lines and `#` comments ignored), re-read when the file changes
(polled) or on SIGHUP: a Kubernetes Secret mounted as a directory is updated in place, so rotating it takes
effect without a restart. A presented token is hashed and compared with every accepted token's hash in
constant time, so neither the comparison nor which token matched shows in the timing. The health service is
not behind this: probes carry no token.

Revoking fails closed: once the file is gone, unreadable, too large or holds no token, no token is accepted
(every call is UNAUTHENTICATED) until it holds tokens again. Deleting or emptying the file is how an operator
revokes every token, and keeping the old ones then would keep revoked tokens valid without a word. Each such
change is one ERROR line (the file is re-read only when it changes) and counts in
vaeserve_auth_reload_failures_total; vaeserve_auth_tokens says how many tokens are accepted now.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from vaeserve.errors import VaeserveError

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often the file is checked for a change
MAX_TOKEN_FILE_BYTES = 1 << 20
BEARER = "bearer "


Stamp = tuple[int, int, int]  # inode, modification time, size: what changes when the file does


def _stamp(path: Path) -> Stamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None  # gone, or not reachable
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class Tokens:
    def __init__(self, path: str | Path, flag: str = "--auth-token-file") -> None:
        self.path = Path(path)
        self.flag = flag  # named in its messages
        self.failures = 0  # reloads that left no token accepted
        self._stamp: Stamp | None = None
        self._task: asyncio.Task | None = None
        self._digests = self._read()  # a bad file at start-up stops the server with its message

    @property
    def count(self) -> int:
        """How many tokens are accepted now."""
        return len(self._digests)

    def _read(self) -> list[bytes]:
        # The stamp first: a bad file is then re-read (and reported) when it changes, not on every poll.
        self._stamp = _stamp(self.path)
        try:
            if self.path.stat().st_size > MAX_TOKEN_FILE_BYTES:
                raise VaeserveError(f"{self.flag} {self.path}: over {MAX_TOKEN_FILE_BYTES} bytes")
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise VaeserveError(f"{self.flag} {self.path}: cannot read it ({exc})") from exc
        tokens = [line.strip() for line in text.splitlines()]
        tokens = [t for t in tokens if t and not t.startswith("#")]
        if not tokens:
            raise VaeserveError(f"{self.flag} {self.path}: holds no token (one per line)")
        return [hashlib.sha256(t.encode()).digest() for t in tokens]

    def reload(self) -> None:
        """Re-reads the file. One that is gone, cannot be read or holds no token revokes every token (fail
        closed), with one ERROR line."""
        try:
            self._digests = self._read()
        except VaeserveError as exc:
            self._digests = []
            self.failures += 1
            log.error("%s: no token is accepted until it holds one (every call is UNAUTHENTICATED)", exc)
            return
        log.info("auth tokens reloaded from %s: %d accepted", self.path, len(self._digests))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="auth-token-file")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def check(self) -> None:
        """One poll: re-reads the file if it changed since it was last read. A file that went away is a change
        too: Kubernetes swaps a Secret's files in one rename, so a missing file is a deletion, not a rotation under
        way."""
        if _stamp(self.path) != self._stamp:
            self.reload()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            self.check()

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
        """`behavior` (an async handler: unary-unary, or a stream one that writes with context.write) refusing calls
        without an accepted token (UNAUTHENTICATED)."""

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not self.accepts(context.invocation_metadata()):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown bearer token: send `authorization: Bearer TOKEN` metadata",
                )
            return await behavior(request, context)

        return checked
