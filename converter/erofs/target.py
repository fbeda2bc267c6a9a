"""The ``--to FORMAT`` grammar: which EROFS flavour a layer is converted into.

Why: the format string travels through the CLI, job files and image tags, so it must parse
strictly (a typo must not silently build a different image) and print canonically (equal
formats give equal tags). Grammar::

    FORMAT    := "erofs" [ "+" ALGORITHM { "," OPTION } ]
    ALGORITHM := "lz4" | "lz4hc" | "zstd" | "deflate" | "lzma"
    OPTION    := "level=" N | "pcluster=" BYTES | "ztailpacking"

``erofs`` is an uncompressed image; ``erofs+ALGO`` uses EROFS's internal (per-cluster)
compression through ``mkfs.erofs -z``. Levels are the ranges mkfs.erofs 1.9.4 really
accepts, measured rather than copied from its ``--help``:

* lz4: no level (mkfs rejects any);
* lz4hc: 0..12;
* zstd: 1..22 (mkfs also takes 0, which is only zstd's alias of its default 3: use level=3);
* deflate: 1..9 (``--help`` says 0..9, but mkfs.erofs 1.9.4 fails on 0);
* lzma: 0..9, and 100..109 for the "extreme" presets.

Without ``level=`` mkfs.erofs picks its own default for the algorithm, except for zstd: there
mkfs.erofs (1.9.3 and 1.9.4, ``lib/compressor_libzstd.c``) hands its "no level" marker, -1, to
libzstd as the level, which is zstd's fast level -1, not its default 3 (its other compressors map
-1 to their default); so mkfs is given ``level=3`` (``ZSTD_DEFAULT_LEVEL``), which our own writer
uses too (docs/deviations.md).

``pcluster=BYTES`` allows physical clusters (the compressed units) of up to that many bytes, a
multiple of 4096 up to 1 MiB, like ``mkfs.erofs -C``: bigger ones compress better but need
Linux 5.13+ (big pclusters) and cost more to read at random. 4096, one block, is the default
(mounted by Linux 5.4+) and is not printed. ``ztailpacking`` (like ``mkfs.erofs -Eztailpacking``)
stores a file's last extent inline after its inode, compressed when that is smaller than a
block, else as it is when it is less than a block; that saves most of a block per compressed
file and lets files of a block or less be compressed at all; Linux 5.17+. Options print in the
order level, pcluster, ztailpacking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from converter.erofs import format as fmt
from converter.errors import InvalidFormat
from converter.levels import ZSTD_DEFAULT_LEVEL, parse_int_options

BASE = "erofs"

LEVELS: dict[str, tuple[range, ...]] = {
    "lz4": (),
    "lz4hc": (range(0, 13),),
    "zstd": (range(1, 23),),
    "deflate": (range(1, 10),),
    "lzma": (range(0, 10), range(100, 110)),
}
ALGORITHMS = tuple(LEVELS)
BLOCK = fmt.BLOCK_SIZE  # one block: the default pcluster, which older kernels need


def _describe(ranges: tuple[range, ...]) -> str:
    return " or ".join(f"{r.start}..{r.stop - 1}" for r in ranges)


@dataclass(frozen=True)
class TargetFormat:
    """A parsed ``--to`` value: ``algorithm`` None means an uncompressed EROFS image.

    ``pcluster`` is the largest physical cluster in bytes; None (or 4096) is one block.
    ``ztailpacking``: last extents inline after the inode (Linux 5.17+).
    """

    algorithm: str | None = None
    level: int | None = None
    pcluster: int | None = None
    ztailpacking: bool = False

    def __post_init__(self) -> None:
        if self.algorithm is None:
            if self.level is not None:
                raise InvalidFormat("an uncompressed erofs format takes no level")
            if self.pcluster is not None:
                raise InvalidFormat("an uncompressed erofs format takes no pcluster size")
            if self.ztailpacking:
                raise InvalidFormat("ztailpacking needs a compression algorithm (raw images always inline tails)")
            return
        if self.pcluster is not None:
            if self.pcluster % BLOCK or not BLOCK <= self.pcluster <= fmt.Z_MAX_PCLUSTER:
                raise InvalidFormat(f"pcluster {self.pcluster} is not a multiple of {BLOCK} up to {fmt.Z_MAX_PCLUSTER} "
                                    f"(1 MiB), e.g. pcluster=65536")
            if self.pcluster == BLOCK:  # the default: equal formats print (and tag) equally
                object.__setattr__(self, "pcluster", None)
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
        if self.pcluster is not None:
            text += f",pcluster={self.pcluster}"
        if self.ztailpacking:
            text += ",ztailpacking"
        return text

    @property
    def compressed(self) -> bool:
        return self.algorithm is not None

    @property
    def pcluster_bytes(self) -> int:
        """The largest pcluster in bytes (one block unless ``pcluster=`` says more)."""
        return BLOCK if self.pcluster is None else self.pcluster

    @property
    def tag_suffix(self) -> str:
        """The canonical string made tag-safe: ``erofs+zstd,level=3`` → ``erofs-zstd-level-3``."""
        return re.sub(r"[+,=]", "-", str(self))

    def mkfs_args(self) -> list[str]:
        """The mkfs.erofs options for this format (``[]`` when uncompressed)."""
        if self.algorithm is None:
            return []
        level = ZSTD_DEFAULT_LEVEL if self.level is None and self.algorithm == "zstd" else self.level
        args = [f"-z{self.algorithm}" if level is None else f"-z{self.algorithm},level={level}"]
        if self.pcluster is not None:
            args.append(f"-C{self.pcluster}")
        if self.ztailpacking:
            args.append("-Eztailpacking")
        return args


def parse_format(text: str) -> TargetFormat:
    """Parse a ``--to`` value strictly; every mistake is an ``InvalidFormat`` saying what to write."""
    usage = (f"write erofs, or erofs+ALGORITHM[,level=N][,pcluster=BYTES][,ztailpacking] with ALGORITHM one of "
             f"{', '.join(ALGORITHMS)}")
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
    values = parse_int_options(options, keys=("level", "pcluster"), flags=("ztailpacking",), what=f"format {text!r}")
    try:
        return TargetFormat(algorithm, values.get("level"), values.get("pcluster"), "ztailpacking" in values)
    except InvalidFormat as exc:
        raise InvalidFormat(f"format {text!r}: {exc}") from None
