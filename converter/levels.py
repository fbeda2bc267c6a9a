"""The ``,KEY=N`` and bare-word options (``level=N``, ``pcluster=N``, ``ztailpacking``) of the
``--to`` and ``--blob-compression`` grammars."""

from __future__ import annotations

import re
from collections.abc import Sequence

from converter.errors import InvalidFormat

#: zstd's default level (ZSTD_CLEVEL_DEFAULT): what ``erofs+zstd`` (with either builder;
#: converter/erofs/target.py says why mkfs.erofs is told it) and ``--blob-compression zstd`` mean
#: without a level.
ZSTD_DEFAULT_LEVEL = 3

__all__ = ["ZSTD_DEFAULT_LEVEL", "parse_int_options", "parse_level_options"]


def parse_level_options(options: Sequence[str], *, what: str, number: str = "non-negative whole number") -> int | None:
    """The level given by ``options`` (the comma-separated parts after the name), or None.

    Each option must be ``level=N`` with N a non-negative whole number, at most once; any other
    option is an ``InvalidFormat`` starting with ``what`` (e.g. ``format 'erofs+zstd,x=1'``); a bad
    value is "not a ``number``".
    """
    return parse_int_options(options, keys=("level",), what=what, number=number).get("level")


def parse_int_options(options: Sequence[str], *, keys: Sequence[str], what: str,
                      number: str = "non-negative whole number", flags: Sequence[str] = ()) -> dict[str, int]:
    """The ``KEY=N`` options in ``options`` with KEY one of ``keys``, each at most once; an option
    in ``flags`` (a bare word) maps to 1."""
    found: dict[str, int] = {}
    example = f"{keys[0]}=9"
    names = [*keys, *flags]
    known = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    for option in options:
        key, eq, value = option.partition("=")
        if key in found:
            raise InvalidFormat(f"{what}: option {key!r} is given twice")
        if key in flags:
            if eq:
                raise InvalidFormat(f"{what}: option {key!r} takes no value")
            found[key] = 1
            continue
        if not eq:
            raise InvalidFormat(f"{what}: option {option!r} is not KEY=VALUE (e.g. {example})"
                                + (f" or one of {', '.join(flags)}" if flags else ""))
        if key not in keys:
            only = f"the only option is {known}" if len(names) == 1 else f"the options are {known}"
            raise InvalidFormat(f"{what}: unknown option {key!r}; {only}")
        if not re.fullmatch(r"[0-9]+", value):
            raise InvalidFormat(f"{what}: {key} {value!r} is not a {number}")
        found[key] = int(value)
    return found
