"""The ``--to FORMAT`` grammar: which EROFS flavour a layer is converted into.

Why: the format string travels through the CLI, job files and image tags, so it must parse
strictly (a typo must not silently build a different image) and print canonically (equal
formats give equal tags). Grammar::

    FORMAT    := "erofs" [ "+" ALGORITHM [ "," "level=" N ] ]
    ALGORITHM := "lz4" | "lz4hc" | "zstd" | "deflate" | "lzma"

``erofs`` is an uncompressed image; ``erofs+ALGO`` uses EROFS's internal (per-cluster)
compression through ``mkfs.erofs -z``. Levels are the ranges mkfs.erofs 1.9.4 really
accepts, measured rather than copied from its ``--help``:

* lz4: no level (mkfs rejects any);
* lz4hc: 0..12;
* zstd: 1..22 (mkfs also takes 0, which is only zstd's alias of its default 3: use level=3);
* deflate: 1..9 (``--help`` says 0..9, but mkfs.erofs 1.9.4 fails on 0);
* lzma: 0..9, and 100..109 for the "extreme" presets.

Without ``level=`` mkfs.erofs picks its own default for the algorithm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from converter.errors import InvalidFormat
from converter.levels import parse_level_options

BASE = "erofs"

LEVELS: dict[str, tuple[range, ...]] = {
    "lz4": (),
    "lz4hc": (range(0, 13),),
    "zstd": (range(1, 23),),
    "deflate": (range(1, 10),),
    "lzma": (range(0, 10), range(100, 110)),
}
ALGORITHMS = tuple(LEVELS)


def _describe(ranges: tuple[range, ...]) -> str:
    return " or ".join(f"{r.start}..{r.stop - 1}" for r in ranges)


@dataclass(frozen=True)
class TargetFormat:
    """A parsed ``--to`` value: ``algorithm`` None means an uncompressed EROFS image."""

    algorithm: str | None = None
    level: int | None = None

    def __post_init__(self) -> None:
        if self.algorithm is None:
            if self.level is not None:
                raise InvalidFormat("an uncompressed erofs format takes no level")
            return
        if self.algorithm not in LEVELS:
            raise InvalidFormat(f"unknown compression algorithm {self.algorithm!r}; "
                                f"known: {', '.join(ALGORITHMS)}")
        if self.level is not None:
            ranges = LEVELS[self.algorithm]
            if not ranges:
                raise InvalidFormat(f"{self.algorithm} takes no level")
            if not any(self.level in r for r in ranges):
                hint = " (zstd's level 0 is its default, level=3)" if self.algorithm == "zstd" and \
                    self.level == 0 else ""
                raise InvalidFormat(f"{self.algorithm} level {self.level} is out of range: use "
                                    f"{_describe(ranges)}{hint}")

    def __str__(self) -> str:
        if self.algorithm is None:
            return BASE
        text = f"{BASE}+{self.algorithm}"
        if self.level is not None:
            text += f",level={self.level}"
        return text

    @property
    def compressed(self) -> bool:
        return self.algorithm is not None

    @property
    def tag_suffix(self) -> str:
        """The canonical string made tag-safe: ``erofs+zstd,level=3`` → ``erofs-zstd-level-3``."""
        return re.sub(r"[+,=]", "-", str(self))

    def mkfs_args(self) -> list[str]:
        """The mkfs.erofs options for this format (``[]`` when uncompressed)."""
        if self.algorithm is None:
            return []
        if self.level is None:
            return [f"-z{self.algorithm}"]
        return [f"-z{self.algorithm},level={self.level}"]


def parse_format(text: str) -> TargetFormat:
    """Parse a ``--to`` value strictly; every mistake is an ``InvalidFormat`` saying what to write."""
    usage = (f"write erofs, or erofs+ALGORITHM[,level=N] with ALGORITHM one of {', '.join(ALGORITHMS)}")
    if text == BASE:
        return TargetFormat()
    head, plus, rest = text.partition("+")
    if head != BASE:
        raise InvalidFormat(f"unknown format {text!r}: {usage}")
    if not plus or not rest:
        raise InvalidFormat(f"format {text!r} names no compression algorithm after '+': {usage}")
    algorithm, *options = rest.split(",")
    if algorithm not in LEVELS:
        lowered = algorithm.lower()
        hint = f" (algorithm names are lower case: {lowered})" if lowered in LEVELS else ""
        raise InvalidFormat(f"format {text!r}: unknown compression algorithm {algorithm!r}{hint}; "
                            f"known: {', '.join(ALGORITHMS)}")
    level = parse_level_options(options, what=f"format {text!r}")
    try:
        return TargetFormat(algorithm, level)
    except InvalidFormat as exc:
        raise InvalidFormat(f"format {text!r}: {exc}") from None
