"""`configure_logging`: readable text lines or one JSON object per line, extra fields included, idempotent."""

from __future__ import annotations

import json
import logging

import pytest

from vaeserve.errors import VaeserveError
from vaeserve.server.logs import configure_logging


@pytest.fixture
def root_logger():
    """Leaves the root logger as it found it (pytest's own capture handlers included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_record_and_its_extra_fields(root_logger, capsys):
    configure_logging("json", "INFO")
    log = logging.getLogger("vaeserve.server")
    log.info("model loaded", extra={"model": "vae", "version": 1, "provider": "CPUExecutionProvider"})
    log.debug("not at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "INFO"
    assert entry["logger"] == "vaeserve.server"
    assert entry["message"] == "model loaded"
    assert (entry["model"], entry["version"], entry["provider"]) == ("vae", 1, "CPUExecutionProvider")
    assert entry["ts"].endswith("+00:00")


def test_json_keeps_exceptions_on_one_line(root_logger, capsys):
    configure_logging("json")
    try:
        raise OSError("disk full")
    except OSError:
        logging.getLogger("vaeserve").exception("export failed")
    (line,) = capsys.readouterr().err.splitlines()
    assert "OSError: disk full" in json.loads(line)["exception"]


def test_text_is_one_readable_line_with_extra_fields(root_logger, capsys):
    configure_logging("text", "info")
    logging.getLogger("vaeserve.server").info("listening", extra={"port": 50051, "metrics_port": 8000})
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO vaeserve.server: listening port=50051 metrics_port=8000")


def test_calling_twice_replaces_rather_than_duplicates(root_logger, capsys):
    configure_logging("text")
    configure_logging("json", "WARNING")
    log = logging.getLogger("vaeserve")
    log.info("dropped")
    log.warning("kept")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "kept"


@pytest.mark.parametrize(("fmt", "level", "flag"), [("yaml", "INFO", "--log-format"), ("json", "LOUD", "--log-level")])
def test_bad_settings_name_the_flag(root_logger, fmt, level, flag):
    with pytest.raises(VaeserveError, match=flag):
        configure_logging(fmt, level)
