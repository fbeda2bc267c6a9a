"""Decoders for the streams inside EROFS pclusters: LZ4 block, MicroLZMA, raw DEFLATE, zstd frame."""

from __future__ import annotations

import enum
import lzma
import zlib

import lz4.block  # type: ignore[import-untyped]
import zstandard

from converter.errors import ErofsFormatError

#: Kernel limit on what one extent may decode to (fs/erofs: Z_EROFS_PCLUSTER_MAX_DSIZE, 12 MiB);
#: it also bounds the memory one extent costs us.
MAX_EXTENT_SIZE = 12 << 20
#: MicroLZMA dictionary: the largest the kernel accepts (fs/erofs/decompressor_lzma.c); a
#: dictionary at least as large as the encoder's decodes the same stream.
_LZMA_DICT = 8 << 20


class Algorithm(enum.IntEnum):
    """``h_algorithmtype`` values (fs/erofs/erofs_fs.h, Z_EROFS_COMPRESSION_*)."""

    LZ4 = 0
    LZMA = 1
    DEFLATE = 2
    ZSTD = 3


def strip_padding(data: bytes) -> bytes:
    """Drop the leading zero bytes of a 0PADDING pcluster (the stream starts at the first non-zero)."""
    stripped = data.lstrip(b"\0")
    if not stripped:
        raise ErofsFormatError("the pcluster holds only zero bytes")
    return stripped


def decompress(algorithm: Algorithm, stream: bytes, size: int, *, partial: bool = False) -> bytes:
    """Decode ``stream`` (padding already stripped) into exactly ``size`` bytes.

    ``partial`` allows the stream to decode to more than ``size`` bytes (a deduplicated
    pcluster referenced by a shorter extent); otherwise it must produce exactly ``size``.
    """
    if not 0 < size <= MAX_EXTENT_SIZE:
        raise ErofsFormatError(f"an extent of {size} bytes is outside 1..{MAX_EXTENT_SIZE}")
    try:
        out = _DECODERS[algorithm](stream, size, partial)
    except ErofsFormatError:
        raise
    except (lz4.block.LZ4BlockError, lzma.LZMAError, zlib.error, zstandard.ZstdError, ValueError) as exc:
        raise ErofsFormatError(f"corrupt {algorithm.name.lower()} data: {exc}") from exc
    if len(out) != size and not (partial and len(out) >= size):
        raise ErofsFormatError(
            f"corrupt {algorithm.name.lower()} data: decodes to {len(out)} bytes, the index says {size}"
        )
    return out[:size]


def _lz4(stream: bytes, size: int, partial: bool) -> bytes:
    if partial:
        # A shared pcluster decodes to more than we need: decode into a bigger buffer and cut.
        out: bytes = lz4.block.decompress(stream, uncompressed_size=MAX_EXTENT_SIZE)
        return out
    out = lz4.block.decompress(stream, uncompressed_size=size)
    return out


def _lzma(stream: bytes, size: int, partial: bool) -> bytes:
    # MicroLZMA (xz-utils' microlzma_decoder.c): a raw LZMA1 stream whose first byte (always 0
    # in LZMA1) is replaced by the bitwise NOT of the lc/lp/pb properties byte; no end marker.
    props = ~stream[0] & 0xFF
    if props >= 9 * 5 * 5:
        raise ErofsFormatError(f"corrupt lzma data: bad MicroLZMA properties byte {stream[0]:#04x}")
    pb, rest = divmod(props, 45)
    lp, lc = divmod(rest, 9)
    dec = lzma.LZMADecompressor(
        lzma.FORMAT_RAW,
        filters=[{"id": lzma.FILTER_LZMA1, "dict_size": _LZMA_DICT, "lc": lc, "lp": lp, "pb": pb}],
    )
    out = dec.decompress(b"\0" + stream[1:], max_length=size)
    if dec.eof:  # an end-of-payload marker is invalid in MicroLZMA (the kernel rejects it too)
        raise ErofsFormatError("corrupt lzma data: the MicroLZMA stream has an end marker")
    return out


def _deflate(stream: bytes, size: int, partial: bool) -> bytes:
    out: bytes = zlib.decompressobj(-15).decompress(stream, size)  # never more than the extent
    return out


def _zstd(stream: bytes, size: int, partial: bool) -> bytes:
    limit = MAX_EXTENT_SIZE if partial else size
    declared = zstandard.frame_content_size(stream)  # -1 when the frame does not say
    if declared > limit:
        raise ErofsFormatError(f"corrupt zstd data: the frame declares {declared} bytes, the index says {size}")
    out: bytes = zstandard.ZstdDecompressor().decompress(stream, max_output_size=limit)
    return out


_DECODERS = {
    Algorithm.LZ4: _lz4,
    Algorithm.LZMA: _lzma,
    Algorithm.DEFLATE: _deflate,
    Algorithm.ZSTD: _zstd,
}
