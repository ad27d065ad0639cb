"""Figures as people read them, the same in every stage's tables and reports."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal ("-" when there is none)."""
    return "-" if x is None else f"{x:.1%}"
