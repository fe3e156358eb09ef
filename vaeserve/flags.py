"""Command-line flags every subcommand shares: bounded numbers, switches, and defaults from VAESERVE_* variables.

Nothing heavy is imported here, so `vaeserve --help` stays instant.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any


def env_name(flag: str) -> str:
    return "VAESERVE_" + flag.lstrip("-").upper().replace("-", "_")


def add_flag(p: argparse.ArgumentParser, flag: str, default: Any, help: str, **kwargs: Any) -> None:
    """--flag whose default comes from VAESERVE_FLAG when set (argparse applies `type` to it like to a flag).
    A switch (a bool default) is `--flag [true|false]`, plus `--no-flag`."""
    env = env_name(flag)
    if isinstance(default, bool):
        kwargs.update(type=boolean, nargs="?", const=True)
        p.add_argument("--no-" + flag[2:], dest=flag[2:].replace("-", "_"), action="store_false",
                       default=argparse.SUPPRESS, help=f"the same as {flag} false")  # fmt: skip
    kwargs.setdefault("type", type(default) if default is not None else str)
    p.add_argument(flag, default=os.environ.get(env, default), help=f"{help} (env {env}; default: %(default)s)",
                   **kwargs)  # fmt: skip


def bounded(kind: type, low: float, high: float):  # -> an argparse `type`
    """An argparse type: a `kind` (int or float) in [low, high]; NaN, infinities and garbage are refused."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
            valid = math.isfinite(value) and low <= value <= high
        except (ValueError, OverflowError):  # garbage, or an integer too long for a float
            valid = False
        if not valid:
            bounds = f"[{low}, {high}]" if kind is int else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} in {bounds}, "
                                             f"got {text!r}")  # fmt: skip
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


SEED = bounded(int, 0, 2**64 - 1)  # the proto's uint64


def boolean(text: str) -> bool:
    """A switch's value from a flag or the environment: true/false, yes/no, on/off or 1/0."""
    value = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    try:
        return value[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None
