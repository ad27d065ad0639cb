"""Figures as people read them, the same in every stage's tables and reports."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal ("-" when there is none)."""
    return "-" if x is None else f"{x:.1%}"


def size(n: float) -> str:
    """A byte count in binary units, to one decimal: "512 MiB", "1.5 KiB", "1000 B"."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{round(n, 1):g} {units[i]}"
