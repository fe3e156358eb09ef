"""--version-policy: which of the repository's versions are served at once (TensorFlow Serving's and Triton's
names): `latest:N` (the N newest that load), `all`, or `specific:1,3`.

Standard library only: config.py checks the flag before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaeserve.errors import VaeserveError

MAX_SERVED = 64  # versions served at once, at most: each holds its own sessions (weights, arenas, thread pools)
MAX_VERSION = 2**62  # a version number as vae.v1's int64 model_version can name it
MAX_POLICY_CHARS = 1024


@dataclass(frozen=True)
class VersionPolicy:
    kind: str  # "latest" | "all" | "specific"
    count: int = 0  # latest: how many
    versions: tuple[int, ...] = ()  # specific: which, ascending

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """The policy `text` states; a VaeserveError naming --version-policy for anything else."""

        def refuse(why: str) -> VaeserveError:
            shown = text if len(text) <= 64 else text[:64] + "..."
            return VaeserveError(f"--version-policy: {why}, got {shown!r}")

        kind, _, arguments = text.strip().partition(":")
        if len(text) > MAX_POLICY_CHARS:
            raise refuse(f"expected at most {MAX_POLICY_CHARS} characters")
        if kind == "all" and not arguments:
            return cls("all")
        numbers = [a.strip() for a in arguments.split(",")]
        if kind not in ("latest", "specific") or not all(n.isdigit() and n.isascii() for n in numbers):
            raise refuse("expected latest:N, all, or specific:V1,V2,...")
        values = [int(n) for n in numbers]
        if kind == "latest":
            if len(values) != 1 or not 1 <= values[0] <= MAX_SERVED:
                raise refuse(f"latest:N takes one N in [1, {MAX_SERVED}]")
            return cls("latest", count=values[0])
        if not all(1 <= v <= MAX_VERSION for v in values) or len(set(values)) > MAX_SERVED:
            raise refuse(f"specific: takes up to {MAX_SERVED} version numbers in [1, 2^62]")
        return cls("specific", versions=tuple(sorted(set(values))))

    def order(self, available: list[int]) -> list[int]:
        """The available versions this policy would serve, in the order to try them (newest first): for latest:N
        a version that fails to load gives its place to the next older one, as at start-up."""
        newest_first = sorted(available, reverse=True)
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first

    @property
    def most(self) -> int:
        """The most versions served at once under this policy."""
        return self.count if self.kind == "latest" else MAX_SERVED

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        return "all" if self.kind == "all" else "specific:" + ",".join(map(str, self.versions))
