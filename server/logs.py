"""Logging setup of the server: readable lines for people, one JSON object per line for log pipelines.

The server logs one line per startup fact (model, version, provider, threads, ports) and nothing per request
at INFO: per-request facts belong in the metrics (vaeserve.server.metrics), which cost far less per call.
Pass facts as `extra` fields, e.g. `log.info("serving", extra={"port": 50051})`: the JSON format emits them as
keys, the text format appends them as key=value.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from vaeserve.errors import VaeserveError

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`2026-11-24T19:40:00.123+00:00 INFO vaeserve.server: serving port=50051`"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extra = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the `extra` fields, exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extra(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)  # numpy scalars, paths: their str() is what a reader wants


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Sends all logging to stderr in `fmt`; calling it again replaces the handler it installed, never adds one."""
    if fmt not in FORMATS:
        raise VaeserveError(f"--log-format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if level.upper() not in LEVELS:
        raise VaeserveError(f"--log-level: expected one of {', '.join(LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if getattr(handler, "_vaeserve", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._vaeserve = True  # type: ignore[attr-defined]  # marks the handler a later call replaces
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
