"""Just enough of a Dockerfile reader for the deploy tests: stages and their instructions, ENV, exec forms."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str
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


def read_stages(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def healthcheck(args: str) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK [--opt=value ...] CMD [exec form] -> (options, command)."""
    options, _, command = args.partition("CMD ")
    opts = dict(o.lstrip("-").split("=", 1) for o in options.split())
    return opts, json.loads(command)
