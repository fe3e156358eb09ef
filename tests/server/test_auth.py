"""The token file's life on a real file: rotation, and revocation that fails closed with one ERROR per change.
(tests/server/test_security.py drives the same through a real server.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vaeserve.server.auth import Tokens


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_a_deleted_empty_or_garbled_file_revokes_every_token_with_one_error_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("first\nsecond\n")
    tokens = Tokens(path)
    assert tokens.count == 2 and tokens.accepts(bearer("first"))
    revocations = {
        "deleted": (path.unlink, "cannot read it ([Errno 2] No such file or directory"),
        "empty": (lambda: path.write_text("# nothing left\n"), "holds no token (one per line)"),
        "garbled": (lambda: path.write_bytes(b"\xff\xfe\x00garbage\n"), "cannot read it ('utf-8' codec can't decode"),
    }
    for n, (what, (revoke, why)) in enumerate(revocations.items(), 1):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vaeserve.server.auth"):
            revoke()
            for _ in range(5):  # polls: only the first sees a change
                tokens.check()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and why in errors[0] and "no token is accepted" in errors[0], (what, errors)
        assert len(caplog.records) == 1, what  # nothing else, however often it is polled
        assert (tokens.count, tokens.failures) == (0, n), what
        assert not tokens.accepts(bearer("first")) and not tokens.accepts(bearer("")), what
        path.write_text(f"first\nthird-{n}\n")  # restored: accepted again on the next poll
        tokens.check()
        assert tokens.count == 2 and tokens.accepts(bearer("first")) and tokens.accepts(bearer(f"third-{n}")), what
