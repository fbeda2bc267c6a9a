"""The ``,level=N`` options shared by the ``--to`` and ``--blob-compression`` grammars."""

from __future__ import annotations

import re
from collections.abc import Sequence

from converter.errors import InvalidFormat

__all__ = ["parse_level_options"]


def parse_level_options(options: Sequence[str], *, what: str, number: str = "non-negative whole number") -> int | None:
    """The level given by ``options`` (the comma-separated parts after the name), or None.

    Each option must be ``level=N`` with N a non-negative whole number, at most once; any other
    option is an ``InvalidFormat`` starting with ``what`` (e.g. ``format 'erofs+zstd,x=1'``); a bad
    value is "not a ``number``".
    """
    level: int | None = None
    seen: set[str] = set()
    for option in options:
        key, eq, value = option.partition("=")
        if not eq:
            raise InvalidFormat(f"{what}: option {option!r} is not KEY=VALUE (e.g. level=9)")
        if key != "level":
            raise InvalidFormat(f"{what}: unknown option {key!r}; the only option is level")
        if key in seen:
            raise InvalidFormat(f"{what}: option {key!r} is given twice")
        seen.add(key)
        if not re.fullmatch(r"[0-9]+", value):
            raise InvalidFormat(f"{what}: level {value!r} is not a {number}")
        level = int(value)
    return level
