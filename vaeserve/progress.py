"""How long work shows its progress on stderr, one policy for the client's bulk commands, training and experiments.

On a terminal: a tqdm bar (rate, ETA), drawn once the work has taken BAR_DELAY_S, so quick commands print none.
Elsewhere (a log file, a pipe, CI): a bar's redraws would be fragments, so a plain line every --progress-every
seconds (done/total, rate, ETA) and, when any was printed, one closing line. --quiet: neither.
tqdm is imported only when a bar is drawn, so `vaeserve --help` and quiet runs never load it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .flags import add_flag, bounded

EVERY_S = 10.0  # between plain lines: a log gains six lines a minute, enough to see a run move
BAR_DELAY_S = 1.0  # "work over a second": shorter work finishes before a bar would tell anything
MAX_EVERY_S = 86_400.0


def add_progress_flags(p: argparse.ArgumentParser) -> None:
    """--quiet and --progress-every (env VAESERVE_PROGRESS_EVERY), for every command that shows progress."""
    p.add_argument("--quiet", action="store_true", help="show no progress on stderr (default: %(default)s)")
    add_flag(p, "--progress-every", EVERY_S, "seconds between progress lines when stderr is not a terminal; a "
             f"terminal's bar appears after {BAR_DELAY_S:g} s or this, if less",
             type=bounded(float, 0, MAX_EVERY_S))  # fmt: skip


@dataclass(frozen=True)
class Progress:
    """The policy: `meter(...)` is a tqdm bar, a `Lines` meter or a `Silent` one, by `quiet` and the stream.

    stream None: sys.stderr at the time a meter is made (so a test's or caller's swapped stderr is honoured).
    clock: seconds, monotonic; injected by tests of the plain lines.
    """

    quiet: bool = False
    every: float = EVERY_S
    stream: TextIO | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Progress:
        return cls(quiet=args.quiet, every=args.progress_every)

    def mode(self) -> str:
        """The mode: "quiet", "bar" (stderr is a terminal) or "lines"."""
        if self.quiet:
            return "quiet"
        return "bar" if self._stream().isatty() else "lines"

    def meter(self, total: int | None, desc: str, unit: str, *, detail: bool = False, leave: bool = True) -> Any:
        """A meter over `total` units (None: unknown, no ETA). detail: only ever a bar (an inner level, such as
        an epoch's batches under a run's bar, that plain lines would only repeat)."""
        mode = self.mode()
        if mode == "bar":
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit=f" {unit}", file=self._stream(), leave=leave, dynamic_ncols=True,
                        delay=min(BAR_DELAY_S, self.every), unit_scale=False)  # fmt: skip
        if mode == "lines" and not detail:
            return Lines(total, desc, unit, self._stream(), self.every, self.clock)
        return Silent()

    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr


class Silent:
    """A meter that shows nothing (tqdm's interface, the parts used here)."""

    disable = True

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Lines(Silent):
    """One line per `every` seconds of work, "encode: 2,560/10,000 images (26%), 1,204 images/s, ETA 0:06", and
    when any was printed a closing "encode: 10,000 images in 0:08, 1,190 images/s"."""

    disable = False

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO, every: float,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.stream, self.every, self.clock = total, desc, unit, stream, every, clock
        self.done, self.postfix, self.printed, self.closed = 0, "", False, False
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._print(self._progress(now))

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if self.printed and not self.closed:
            elapsed = self.clock() - self.start
            self._print(f"{self.desc}: {self.done:,} {self.unit} in {clock_time(elapsed)}, "
                        f"{rate(self.done, elapsed)} {self.unit}/s")  # fmt: skip
        self.closed = True

    def _progress(self, now: float) -> str:
        elapsed = now - self.start
        line = f"{self.desc}: {self.done:,}"
        if self.total:
            left = self.total - self.done
            eta = clock_time(left * elapsed / self.done) if self.done and elapsed > 0 else "?"
            line += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
            line += f", {rate(self.done, elapsed)} {self.unit}/s, ETA {eta}"
        else:
            line += f" {self.unit}, {rate(self.done, elapsed)} {self.unit}/s"
        return line + (f", {self.postfix}" if self.postfix else "")

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
        self.printed = True


def rate(done: float, seconds: float) -> str:
    """done/seconds with 3 significant digits at least and thousands separated; "?" before time has passed."""
    if seconds <= 0:
        return "?"
    value = done / seconds
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def clock_time(seconds: float) -> str:
    """0:07, 12:05, 3:02:09."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def write(meter: Any, line: str, file: TextIO) -> None:
    """print(line) to `file` without breaking a bar drawn on the same terminal."""
    if getattr(meter, "fp", None) is not None:  # a tqdm bar: cleared, the line written, redrawn
        meter.write(line, file=file)
        file.flush()
    else:
        print(line, file=file, flush=True)
