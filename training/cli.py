"""Registers `vaeserve train` and `vaeserve evaluate` (filled in by the training package)."""


def register(sub) -> None:  # placeholder until the training CLI lands
    pass
