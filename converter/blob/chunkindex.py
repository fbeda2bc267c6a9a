"""The chunk index of the EROFS OCI layer spec (draft) §3.4: a 32-byte header and one entry per chunk.

Producer side only (the reader is the tests' own, independent one). All integers little-endian
(§1.1). Header: magic ``CD E4 EC 67``, version 1, CompressionType (1 = one zstd frame per
chunk), Flags 0, UncompressedSize, NumChunks, HashAlgo 1 (SHA-2) with HashSize 32, ten
reserved zero bytes. Entry: BlockOffset (the frame's offset in the blob), UncompressedOffset,
SHA-256 of the frame's bytes as stored (§3.4.2). On a ``+zstd`` blob the index sits in a zstd
skippable frame (RFC 8878 §3.1.2) at the end of the blob (§3.4.3).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"\xcd\xe4\xec\x67"
VERSION = 1
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
HASH_SHA2 = 1
HASH_SIZE = 32
HEADER = struct.Struct("<4sBBHQIBB10s")
ENTRY = struct.Struct("<QQ")
SKIPPABLE_MAGIC = 0x184D2A50  # the first of the sixteen skippable-frame magics
SKIPPABLE_HEADER = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk: where its frame starts in the blob, where its data starts, the frame's SHA-256."""

    block_offset: int
    uncompressed_offset: int
    checksum: bytes


def index_payload(chunks: list[Chunk], *, uncompressed_size: int, compression: int = COMPRESSION_ZSTD) -> bytes:
    """The index bytes: header plus entries (what ``org.erofs.chunk-index.digest`` covers)."""
    out = bytearray(HEADER.pack(MAGIC, VERSION, compression, 0, uncompressed_size, len(chunks), HASH_SHA2,
                                HASH_SIZE, bytes(10)))
    for chunk in chunks:
        if len(chunk.checksum) != HASH_SIZE:
            raise ValueError("a chunk checksum must be a SHA-256 digest")
        out += ENTRY.pack(chunk.block_offset, chunk.uncompressed_offset) + chunk.checksum
    return bytes(out)


def skippable_frame(payload: bytes) -> bytes:
    """``payload`` in a zstd skippable frame, which every zstd decoder passes over."""
    if len(payload) >= 1 << 32:
        raise ValueError("a skippable frame holds less than 4 GiB")
    return SKIPPABLE_HEADER.pack(SKIPPABLE_MAGIC, len(payload)) + payload
