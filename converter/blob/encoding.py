"""The ``--blob-compression``/``--chunk-size``/``--verity`` options as one value, parsed strictly."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from converter.errors import InvalidFormat, UsageError
from converter.levels import ZSTD_DEFAULT_LEVEL, parse_level_options

#: zstd levels we accept (zstd's own 1..22; 20..22 are its "ultra" levels).
ZSTD_LEVELS = range(1, 23)
#: EROFS block size: chunks and dm-verity blocks are multiples of it.
BLOCK = 4096
#: Uncompressed bytes per zstd frame when a chunk index is written. Measured on the benchmark
#: image (docs/blob-encoding.md): 4 MiB frames cost 1.4% over one frame, 1 MiB ones 7.4%.
DEFAULT_CHUNK_SIZE = 4 << 20
MAX_CHUNK_SIZE = 1 << 30


class BlobCompression(enum.StrEnum):
    """How the image data is wrapped in the blob (not EROFS-internal compression)."""

    NONE = "none"
    ZSTD = "zstd"


@dataclass(frozen=True, slots=True)
class BlobEncoding:
    """A layer blob's encoding.

    ``level`` None means ``ZSTD_DEFAULT_LEVEL``; ``chunk_size`` None means
    ``DEFAULT_CHUNK_SIZE`` for zstd (a chunk index) and 0 means one frame, no index.
    ``verity`` appends a dm-verity hash tree to the image data.
    """

    compression: BlobCompression = BlobCompression.NONE
    level: int | None = None
    chunk_size: int | None = None
    verity: bool = False

    def __post_init__(self) -> None:
        if self.compression is BlobCompression.NONE:
            if self.level is not None:
                raise InvalidFormat("blob compression none takes no level")
            if self.chunk_size:
                raise UsageError("--chunk-size needs --blob-compression zstd: a raw EROFS blob is random-access "
                                 "already (HTTP ranges), so it gets no chunk index")
        if self.level is not None and self.level not in ZSTD_LEVELS:
            raise InvalidFormat(f"zstd level {self.level} is out of range: use "
                                f"{ZSTD_LEVELS.start}..{ZSTD_LEVELS.stop - 1}")
        size = self.chunk_size
        if size is not None and size != 0 and (size % BLOCK or not BLOCK <= size <= MAX_CHUNK_SIZE):
            raise UsageError(f"--chunk-size {size}: use 0 (one frame) or a multiple of 4K "
                             f"from 4K to {MAX_CHUNK_SIZE >> 30}G")

    @property
    def zstd(self) -> bool:
        return self.compression is BlobCompression.ZSTD

    @property
    def zstd_level(self) -> int:
        return ZSTD_DEFAULT_LEVEL if self.level is None else self.level

    @property
    def resolved_chunk_size(self) -> int:
        """Uncompressed bytes per frame; 0: one frame and no chunk index (always 0 without zstd)."""
        if not self.zstd:
            return 0
        return DEFAULT_CHUNK_SIZE if self.chunk_size is None else self.chunk_size

    @property
    def is_identity(self) -> bool:
        """The blob is the EROFS image itself."""
        return not self.zstd and not self.verity

    def canonical(self) -> str:
        """Every output-deciding value, defaults resolved: provenance and layer-cache keys."""
        parts = [self.compression.value]
        if self.zstd:
            parts += [f"level={self.zstd_level}", f"chunk={self.resolved_chunk_size}"]
        if self.verity:
            parts.append("verity")
        return ",".join(parts)

    @property
    def tag_suffix(self) -> str:
        """What the default destination tag gains (``""`` for a plain raw blob).

        ``.zstd`` (zstd, default level and chunk size), ``.zstd-level-9``, ``.chunk-256k`` or
        ``.chunk-0`` (one frame) when not the default, ``.verity``. A dot separates it from the
        filesystem format, so ``--to erofs+zstd`` (``-erofs-zstd``) never meets
        ``--blob-compression zstd`` (``-erofs.zstd``).
        """
        out = ""
        if self.zstd:
            out += ".zstd" if self.zstd_level == ZSTD_DEFAULT_LEVEL else f".zstd-level-{self.zstd_level}"
            if self.resolved_chunk_size != DEFAULT_CHUNK_SIZE:
                out += f".chunk-{_human(self.resolved_chunk_size)}"
        if self.verity:
            out += ".verity"
        return out


def _human(size: int) -> str:
    for shift, unit in ((30, "g"), (20, "m"), (10, "k")):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def parse_blob_compression(text: str) -> tuple[BlobCompression, int | None]:
    """Parse ``none``, ``zstd`` or ``zstd,level=N`` strictly (as ``--to`` is parsed)."""
    usage = "write none, zstd or zstd,level=N"
    name, *options = text.split(",")
    try:
        compression = BlobCompression(name)
    except ValueError:
        lowered = name.lower()
        hint = f" (names are lower case: {lowered})" if lowered in {c.value for c in BlobCompression} else ""
        raise InvalidFormat(f"blob compression {text!r}: unknown compression {name!r}{hint}; {usage}") from None
    level = parse_level_options(options, what=f"blob compression {text!r}", number="whole number")
    if level is not None:
        if compression is BlobCompression.NONE:
            raise InvalidFormat(f"blob compression {text!r}: none takes no level")
        if level not in ZSTD_LEVELS:
            raise InvalidFormat(f"blob compression {text!r}: zstd level {level} is out of range: use "
                                f"{ZSTD_LEVELS.start}..{ZSTD_LEVELS.stop - 1}")
    return compression, level


def make_encoding(compression: str = "none", *, chunk_size: int | None = None, verity: bool = False) -> BlobEncoding:
    """A BlobEncoding from the CLI/job-file spellings."""
    kind, level = parse_blob_compression(compression)
    return BlobEncoding(compression=kind, level=level, chunk_size=chunk_size, verity=verity)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """A byte count like ``4096``, ``256K``, ``1M`` (binary multiples; a trailing B or iB is allowed)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (value[:-1], value[-1]) if value[-1:] in ("K", "M", "G") else (value, "")
    if not number.isdigit():
        raise UsageError(f"not a size: {text!r} (use e.g. 0, 256K, 1M)")
    return int(number) * _SIZE_UNITS[unit]
