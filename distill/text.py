"""How numbers read in the terminal: one format for each kind, wherever it is printed (torch-free)."""

from __future__ import annotations


def percent(fraction: float) -> str:
    """A fraction as a percentage with two decimals: 0.9123 -> '91.23%'."""
    return f"{100 * fraction:.2f}%"


def minutes(seconds: float) -> str:
    """A duration as '4m05.2s' (or '41.0s' under a minute)."""
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s" if seconds >= 60 else f"{seconds:.1f}s"
