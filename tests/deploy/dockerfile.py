"""Just enough of a Dockerfile reader for the deploy tests: stages and their instructions, ENV, exec forms."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str  # the image or stage it is FROM, global ARG defaults filled in
    base_as_written: str  # ${PYTHON_IMAGE}, builder, ...
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV K=V [K2=V2 ...] pairs, later ones winning, values unquoted; $VAR references are left as written."""
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
        return env

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT/CMD in exec (JSON) form; [] when the stage has none."""
        args = self.last(keyword)
        return json.loads(args) if args else []


def logical_lines(text: str) -> list[str]:
    """Instructions one per line: comments dropped, backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def global_args(path: Path) -> dict[str, str]:
    """The ARGs before the first FROM (the only ones a FROM can use) and their defaults."""
    args: dict[str, str] = {}
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() != "ARG":
            break
        key, _, default = rest.strip().partition("=")
        args[key] = default
    return args


def read_stages(path: Path) -> list[Stage]:
    """The stages, each FROM's ${ARG} replaced by that global ARG's default (what a plain `docker build` uses)."""
    defaults = global_args(path)
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[0])
            stages.append(Stage(name=name, base=base, base_as_written=words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def healthcheck(args: str) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK [--opt=value ...] CMD [exec form] -> (options, command)."""
    options, _, command = args.partition("CMD ")
    opts = dict(o.lstrip("-").split("=", 1) for o in options.split())
    return opts, json.loads(command)
