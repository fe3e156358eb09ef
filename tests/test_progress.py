"""vaeserve.progress: the one policy (terminal bar, plain lines, quiet) behind the client's bulk commands, training
and experiments; the plain lines on a fake clock, the flags' bounds through the real CLI."""

from __future__ import annotations

import io
import re

import pytest
from tqdm import tqdm

from vaeserve.cli import main as vaeserve
from vaeserve.progress import BAR_DELAY_S, Lines, Progress, Silent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A clock the test moves: no wall-clock time in these tests."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines_meter(total: int | None, every: float = 10.0) -> tuple[Lines, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    meter = Progress(every=every, stream=stream, clock=clock).meter(total, "encode", "images")
    assert isinstance(meter, Lines)
    return meter, stream, clock


def test_plain_lines_come_every_interval_with_rate_and_eta_then_one_closing_line() -> None:
    meter, stream, clock = lines_meter(1000)
    clock.now += 4
    meter.update(100)  # 4 s in: under the interval, nothing yet
    assert stream.getvalue() == ""
    clock.now += 6
    meter.update(150)  # 10 s, 250 done: 25 images/s, 750 left -> 30 s
    meter.set_postfix_str("epoch 1 of 2")
    clock.now += 5
    meter.update(250)  # 5 s since the last line: none
    clock.now += 5
    meter.update(250)  # 20 s, 750 done: 37.5/s, 250 left -> 6.67 s
    clock.now += 5
    meter.update(250)
    meter.close()
    meter.close()  # closing twice says it once
    assert stream.getvalue().splitlines() == [
        "encode: 250/1,000 images (25%), 25 images/s, ETA 0:30",
        "encode: 750/1,000 images (75%), 37.5 images/s, ETA 0:07, epoch 1 of 2",
        "encode: 1,000 images in 0:25, 40 images/s",
    ]


def test_work_shorter_than_the_interval_prints_nothing() -> None:
    meter, stream, clock = lines_meter(10)
    for _ in range(10):
        clock.now += 0.5
        meter.update()
    meter.close()
    assert stream.getvalue() == ""


def test_an_unknown_total_gives_counts_and_rate_without_eta() -> None:
    meter, stream, clock = lines_meter(None, every=60)
    clock.now += 3600
    meter.update(7_200_000)
    assert stream.getvalue() == "encode: 7,200,000 images, 2,000 images/s\n"
    clock.now += 3600
    meter.close()
    assert stream.getvalue().splitlines()[-1] == "encode: 7,200,000 images in 2:00:00, 1,000 images/s"


def test_interval_zero_prints_a_line_per_update() -> None:
    meter, stream, clock = lines_meter(3, every=0)
    for _ in range(3):
        clock.now += 1
        meter.update()
    assert [line.split(" images")[0] for line in stream.getvalue().splitlines()] == [
        "encode: 1/3",
        "encode: 2/3",
        "encode: 3/3",
    ]


def test_the_policy_picks_a_bar_on_a_terminal_lines_elsewhere_and_nothing_when_quiet() -> None:
    terminal, log = Terminal(), io.StringIO()
    bar = Progress(stream=terminal).meter(10, "train", "images")
    assert isinstance(bar, tqdm) and bar.delay == BAR_DELAY_S  # work under a second draws no bar
    bar.close()
    assert Progress(every=0.25, stream=terminal).meter(10, "train", "images").delay == 0.25
    assert isinstance(Progress(stream=log).meter(10, "train", "images"), Lines)
    # An inner level (an epoch's batches) is a bar on a terminal and nothing in plain lines.
    assert isinstance(Progress(stream=log).meter(10, "epoch 1/2", "batches", detail=True), Silent)
    for stream in (terminal, log):
        quiet = Progress(quiet=True, stream=stream)
        assert quiet.mode() == "quiet" and isinstance(quiet.meter(10, "train", "images"), Silent)
    assert terminal.getvalue() == "" and log.getvalue() == ""


COMMANDS = [["encode", "a.png"], ["reconstruct", "a.png"], ["score", "a.png"], ["train"], ["experiments"]]
HOSTILE = ["-1", "-0.001", "86401", "1e99", "nan", "inf", "-inf", "", "soon", "0x10"]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("value", HOSTILE)
def test_progress_every_is_bounded_from_the_flag_and_the_environment(
    command: list[str], value: str, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*command, "--out", str(tmp_path / "out")]
    expected = f"argument --progress-every: expected a number in [0, 86400], got {value!r}"
    for flags, env in (([f"--progress-every={value}"], None), ([], value)):
        if env is not None:
            monkeypatch.setenv("VAESERVE_PROGRESS_EVERY", env)
        with pytest.raises(SystemExit) as exited:
            vaeserve(argv + flags)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_progress_command_documents_quiet_and_its_interval(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        vaeserve([command[0], "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--quiet show no progress on stderr (default: False)" in text
    assert "(env VAESERVE_PROGRESS_EVERY; default: 10.0)" in text
