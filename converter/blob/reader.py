"""Random access to a layer's image data from byte ranges of its blob: raw, or ``+zstd`` with a chunk index.

``ImageData`` objects are seekable read-only files (``converter.erofs.reader.ErofsImage`` reads
through them) that fetch only what is read, through a ``RangeFetch`` (an HTTP ``Range`` request
to a registry, a slice of a local file). Chunk frames are checked against the index's
SHA-256 before they are decompressed (the EROFS OCI layer spec (draft) §3.4.2, §8.2-7) and
kept in a small LRU; raw blobs are read in aligned windows. A ``+zstd`` blob without a usable
index (none, or one with a CompressionType or flags we do not know, §3.4.6) has no random
access: ``spool_zstd`` decompresses it once into a temporary file, checked against the
uncompressed digest. Every malformed index, frame or checksum is an ``ErofsFormatError``.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import io
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from converter.blob.chunkindex import ENTRY, HEADER, MAGIC, SKIPPABLE_HEADER
from converter.blob.encode import (
    ANN_CHUNK_INDEX_DIGEST,
    ANN_CHUNK_INDEX_RANGE,
    ANN_UNCOMPRESSED_DIGEST,
    ANN_VERITY_BLOCK_SIZE,
    ANN_VERITY_HASH_OFFSET,
)
from converter.errors import ErofsFormatError

#: ``fetch(start, end)``: bytes ``[start, end)`` of the blob, exactly.
RangeFetch = Callable[[int, int], bytes]

_WINDOW = 64 << 10
_CACHED_WINDOWS = 64
_CACHE_BYTES = 16 << 20  # decompressed chunks kept per layer (at least one)
_FEED = 4096  # compressed bytes per decompress call for frames without a content size
_MAX_INDEX = 64 << 20


class UnreadableIndex(Exception):
    """The index is well-formed but of a kind we may not use (§3.4.6: read sequentially)."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    block_offset: int
    uncompressed_offset: int
    checksum: bytes


@dataclass(frozen=True, slots=True)
class ChunkIndex:
    """A parsed, checked chunk index: entry i's frame is ``[block_offset, next block_offset)``
    (the last one's ends at ``index_start``) and holds ``[uncompressed_offset, next)``."""

    uncompressed_size: int
    entries: tuple[IndexEntry, ...]
    index_start: int

    def frame(self, i: int) -> tuple[int, int]:
        nxt = self.entries[i + 1].block_offset if i + 1 < len(self.entries) else self.index_start
        return self.entries[i].block_offset, nxt

    def data(self, i: int) -> tuple[int, int]:
        nxt = self.entries[i + 1].uncompressed_offset if i + 1 < len(self.entries) else self.uncompressed_size
        return self.entries[i].uncompressed_offset, nxt


def parse_range(text: str, *, blob_size: int, where: str) -> tuple[int, int]:
    """``org.erofs.chunk-index.range``: ``OFFSET`` or ``OFFSET:END`` (end exclusive, §2.3)."""
    start_text, colon, end_text = text.partition(":")
    if not start_text.isdigit() or (colon and not end_text.isdigit()):
        raise ErofsFormatError(f"{where}: chunk-index range {text!r} is not OFFSET or OFFSET:END")
    start, end = int(start_text), int(end_text) if colon else blob_size
    if not start < end <= blob_size or end - start > _MAX_INDEX:
        raise ErofsFormatError(f"{where}: chunk-index range {text!r} does not fit the {blob_size}-byte blob")
    return start, end


def parse_index(section: bytes, *, start: int, digest: str | None, zstd: bool, where: str) -> ChunkIndex:
    """The index in ``section`` (the blob bytes at the annotated range), strictly checked."""
    payload = section
    if zstd:
        if len(section) < SKIPPABLE_HEADER.size:
            raise ErofsFormatError(f"{where}: the chunk-index section is {len(section)} bytes")
        magic, size = SKIPPABLE_HEADER.unpack_from(section)
        if magic & 0xFFFFFFF0 != 0x184D2A50:
            raise ErofsFormatError(f"{where}: the chunk index is not in a zstd skippable frame (magic {magic:#x})")
        payload = section[SKIPPABLE_HEADER.size:]
        if size != len(payload):
            raise ErofsFormatError(f"{where}: the skippable frame says {size} bytes, the range holds {len(payload)}")
    if digest is not None and "sha256:" + hashlib.sha256(payload).hexdigest() != digest:
        raise ErofsFormatError(f"{where}: the chunk index does not match its digest annotation")
    if len(payload) < HEADER.size:
        raise ErofsFormatError(f"{where}: the chunk index is {len(payload)} bytes, shorter than its header")
    magic_b, version, ctype, flags, usize, count, algo, hsize, reserved = HEADER.unpack_from(payload)
    if magic_b != MAGIC:
        raise ErofsFormatError(f"{where}: bad chunk-index magic {magic_b.hex()}")
    if version != 1:
        raise UnreadableIndex(f"chunk-index version {version}")
    if ctype != (1 if zstd else 0) or flags:
        raise UnreadableIndex(f"CompressionType {ctype}, flags {flags:#x}")
    if reserved != bytes(10):
        raise ErofsFormatError(f"{where}: reserved chunk-index bytes are not zero")
    if (algo, hsize) not in ((0, 0), (1, 32), (1, 64)):
        raise ErofsFormatError(f"{where}: chunk-index hash algorithm {algo} with size {hsize}")
    entry_size = ENTRY.size + hsize
    if len(payload) != HEADER.size + count * entry_size:
        raise ErofsFormatError(f"{where}: the chunk index is {len(payload)} bytes, {count} entries need "
                               f"{HEADER.size + count * entry_size}")
    entries = []
    for i in range(count):
        off = HEADER.size + i * entry_size
        block, uoff = ENTRY.unpack_from(payload, off)
        entries.append(IndexEntry(block, uoff, payload[off + ENTRY.size: off + entry_size]))
    _check_entries(entries, usize=usize, index_start=start, where=where)
    return ChunkIndex(uncompressed_size=usize, entries=tuple(entries), index_start=start)


def _check_entries(entries: list[IndexEntry], *, usize: int, index_start: int, where: str) -> None:
    if not entries:
        if usize:
            raise ErofsFormatError(f"{where}: the chunk index has no chunks for {usize} bytes")
        return
    if entries[0].uncompressed_offset != 0:
        raise ErofsFormatError(f"{where}: the first chunk does not start at offset 0")
    for i, entry in enumerate(entries):
        nxt_block = entries[i + 1].block_offset if i + 1 < len(entries) else index_start
        nxt_data = entries[i + 1].uncompressed_offset if i + 1 < len(entries) else usize
        if not entry.block_offset < nxt_block <= index_start or not entry.uncompressed_offset < nxt_data:
            raise ErofsFormatError(f"{where}: chunk {i} has bad offsets (frame {entry.block_offset}, "
                                   f"data {entry.uncompressed_offset})")


class _ImageData(io.RawIOBase):
    """A seekable read-only view; subclasses fill ``_read_at``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(0, self._size - self._pos))
        done = 0
        while done < n:
            piece = self._read_at(self._pos + done, n - done)
            view[done:done + len(piece)] = piece
            done += len(piece)
        self._pos += n
        return n

    def _read_at(self, pos: int, n: int) -> bytes:
        raise NotImplementedError


class RangeImageData(_ImageData):
    """A raw blob (the image data itself) read in cached, aligned windows."""

    def __init__(self, fetch: RangeFetch, size: int) -> None:
        super().__init__(size)
        self._fetch = fetch
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def _read_at(self, pos: int, n: int) -> bytes:
        start = pos - pos % _WINDOW
        window = self._cache.get(start)
        if window is None:
            window = self._fetch(start, min(self._size, start + _WINDOW))
            self._cache[start] = window
            if len(self._cache) > _CACHED_WINDOWS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(start)
        return window[pos - start: pos - start + n]


class ChunkedImageData(_ImageData):
    """A ``+zstd`` blob's image data through its chunk index: one verified frame per chunk."""

    def __init__(self, fetch: RangeFetch, index: ChunkIndex, *, where: str, end: int | None = None) -> None:
        super().__init__(index.uncompressed_size if end is None else end)
        self._fetch = fetch
        self._index = index
        self._where = where
        self._starts = [e.uncompressed_offset for e in index.entries]
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cached = 0

    def _read_at(self, pos: int, n: int) -> bytes:
        i = bisect.bisect_right(self._starts, pos) - 1
        data = self._chunk(i)
        start = self._starts[i]
        return data[pos - start: pos - start + n]

    def _chunk(self, i: int) -> bytes:
        cached = self._cache.get(i)
        if cached is not None:
            self._cache.move_to_end(i)
            return cached
        b0, b1 = self._index.frame(i)
        d0, d1 = self._index.data(i)
        frame = self._fetch(b0, b1)
        entry = self._index.entries[i]
        if entry.checksum:
            digest = (hashlib.sha256 if len(entry.checksum) == 32 else hashlib.sha512)(frame).digest()
            if digest != entry.checksum:
                raise ErofsFormatError(f"{self._where}: chunk {i} does not match its checksum")
        data = decompress_frame(frame, expected=d1 - d0, what=f"{self._where}: chunk {i}")
        self._cache[i] = data
        self._cached += len(data)
        while self._cached > _CACHE_BYTES and len(self._cache) > 1:
            self._cached -= len(self._cache.popitem(last=False)[1])
        return data


def decompress_frame(frame: bytes, *, expected: int, what: str) -> bytes:
    """Exactly one zstd frame holding exactly ``expected`` bytes (§3.3: one frame per chunk);
    never more than ``expected`` plus one block is decompressed, whatever the frame claims."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise ErofsFormatError(f"{what}: not a zstd frame: {exc}") from None
    if params.content_size not in (expected, zstandard.CONTENTSIZE_UNKNOWN):
        raise ErofsFormatError(f"{what}: the frame holds {params.content_size} bytes, the index says {expected}")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    try:
        for at in range(0, len(frame), _FEED):
            if dobj.eof:
                raise ErofsFormatError(f"{what}: more than one zstd frame")
            out += dobj.decompress(frame[at:at + _FEED])
            if len(out) > expected:
                raise ErofsFormatError(f"{what}: the frame holds more than the {expected} bytes the index says")
    except zstandard.ZstdError as exc:
        raise ErofsFormatError(f"{what}: corrupt zstd frame: {exc}") from None
    if not dobj.eof:
        raise ErofsFormatError(f"{what}: the zstd frame is cut short")
    if dobj.unused_data:
        raise ErofsFormatError(f"{what}: more than one zstd frame")
    if len(out) != expected:
        raise ErofsFormatError(f"{what}: the frame holds {len(out)} bytes, the index says {expected}")
    return bytes(out)


def spool_zstd(stream: BinaryIO, *, digest: str | None, where: str, workdir: Path | None = None,
               limit: int | None = None) -> IO[bytes]:
    """Decompress a whole ``+zstd`` blob into an unnamed temporary file (gone when closed),
    checked against its uncompressed digest; for blobs without a usable chunk index."""
    out = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115 - returned to the caller
    h = hashlib.sha256()
    total = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True, closefd=False)
        while chunk := reader.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise ErofsFormatError(f"{where}: decompresses to more than {limit} bytes")
    except zstandard.ZstdError as exc:
        out.close()
        raise ErofsFormatError(f"{where}: corrupt zstd stream: {exc}") from None
    except BaseException:
        out.close()
        raise
    if digest is not None and "sha256:" + h.hexdigest() != digest:
        out.close()
        raise ErofsFormatError(f"{where}: the decompressed image does not match org.erofs.uncompressed-digest")
    out.seek(0)
    return out


def image_end(annotations: Mapping[str, str], data_size: int, *, where: str) -> int:
    """Where the EROFS image ends in the image data: ``hash_offset`` with a verity tree (§3.5)."""
    text = annotations.get(ANN_VERITY_HASH_OFFSET)
    if text is None:
        return data_size
    block = annotations.get(ANN_VERITY_BLOCK_SIZE, "4096")
    if not text.isdigit() or not block.isdigit() or int(block) == 0:
        raise ErofsFormatError(f"{where}: dm-verity annotations {text!r}/{block!r} are not numbers")
    offset = int(text)
    if offset % int(block) or not 0 < offset <= data_size:
        raise ErofsFormatError(f"{where}: dm-verity hash_offset {offset} is not a multiple of the block size "
                               f"{block} inside the {data_size}-byte image data")
    return offset


__all__ = [
    "ANN_CHUNK_INDEX_DIGEST",
    "ANN_CHUNK_INDEX_RANGE",
    "ANN_UNCOMPRESSED_DIGEST",
    "ChunkIndex",
    "ChunkedImageData",
    "RangeFetch",
    "RangeImageData",
    "UnreadableIndex",
    "decompress_frame",
    "image_end",
    "parse_index",
    "parse_range",
    "spool_zstd",
]
