"""Sizes as people read them."""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(count: float) -> str:
    """``1.5 MB`` (decimal units, as registries and Docker print sizes)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
