"""The pure-Python writer's compressed data area: LZ4/LZ4HC/zstd/DEFLATE/LZMA pclusters and their indexes.

See docs/erofs-format.md §5.4 for the format and §5.4.6 for this writer's profile and design.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from converter.erofs import format as fmt
from converter.erofs import microlzma
from converter.erofs.layout import BlockRef
from converter.erofs.writer import COPY_CHUNK, TAIL_MEMORY, ImageDataArea
from converter.erofs.zcodec import ZSTD_WINDOW_LOG, Codec, check_available, compiled_segment, make_compressor
from converter.erofs.zindex import FullIndexes, meta_size_bound
from converter.errors import ErofsFormatError, LayerError
from converter.layers.filedata import FileData
from converter.layers.model import Inode

__all__ = ["SEGMENT", "CompressedDataArea", "PendingRef", "Segment", "compress_segment"]

_BLKSZ = fmt.BLOCK_SIZE
_BITS = fmt.BLOCK_SIZE_BITS
#: Files are compressed in independent segments of this many bytes (a multiple of the block
#: size), so a large file's segments compress in parallel and memory stays bounded: at most the
#: queue's byte budget (``workers + 1`` segments, see QUEUE_BYTES) of input waits at once, with
#: the compressed forms of what is done. An extent never crosses a segment boundary, which
#: costs at most one partly filled pcluster per segment (< 0.1 %).
SEGMENT = 4 << 20
#: Files (and the segments of bigger files) are compressed in the background while the next ones
#: are read: at most this many wait to be written, in file order, with at most ``QUEUE_BYTES``
#: of input, or one segment more than there are workers, whichever is more. No bound changes the
#: image (writes happen in file order whatever the timing). The byte bound is what bounds memory;
#: a count of 64 stalled the reading thread behind one slow file (a few hundred KiB of lzma) while
#: the other worker ran out of small files: small-files layer, lzma, 9.7-9.8 s, with 1024 8.8-9.1 s
#: (lz4 and zstd unchanged within noise; peak RSS +3 MB).
QUEUE_FILES = 1024
QUEUE_BYTES = 4 << 20
#: The longest inline (ztailpacking) stream: the planner can always place it inside one block,
#: as the kernel requires, by starting its inode at one of the block's 32-byte slots.
MAX_INLINE = _BLKSZ - 32
#: Below this size a file is compressed by the reading thread itself: for LZ4 handing a small
#: file to a worker costs more than compressing it (the small-files bench layer: 5.7-6.1 s against 4.1-5.1 s).
_INLINE_BELOW = {Codec.LZ4: 64 << 10}
#: With ztailpacking, files of a block or less are compressed from this size on (smaller ones
#: gain nothing once the map header and index are counted).
_INLINE_MIN = 64
#: The longest uncompressed inline tail: less than a block (the kernel maps an uncompressed
#: extent into at most its pcluster) and within what the planner can place.
_INLINE_PLAIN_MAX = min(MAX_INLINE, _BLKSZ - 1)


@dataclass(frozen=True, slots=True)
class Segment:
    """One compressed segment: its pclusters (in order, back to back in ``blocks``) and their extents.

    ``extents[k]`` is (lcluster type, decoded length, blocks) of the ``k``-th pcluster: HEAD1
    for a compressed stream right-aligned in its blocks (0PADDING), PLAIN for raw bytes stored
    from the start of one block ("shifted") and zero-filled after.
    """

    blocks: bytes
    extents: tuple[tuple[int, int, int], ...]
    #: ztailpacking: the last extent's stream, stored after the inode instead of in a block
    #: (its entry in ``extents`` has 0 blocks).
    inline: bytes = b""

    @property
    def compressed(self) -> bool:
        return any(kind == fmt.Z_LCLUSTER_HEAD1 for kind, _, _ in self.extents)


def compress_segment(data: bytes, *, codec: Codec, level: int | None, pcluster_blocks: int = 1,
                     inline_tail: bool = False) -> Segment:
    """Cut ``data`` into extents as mkfs.erofs does and compress each into one pcluster.

    Each extent is as much input as fits ``pcluster_blocks`` blocks once compressed; its
    stream takes the fewest whole blocks that hold it. If the extent's input is not more
    than those blocks, compressing gains nothing and that input's whole blocks (at least the
    next ``min(blksz, rest)`` bytes) are stored raw instead, one block per extent (the kernel
    requires a raw extent to fit its one block). With ``inline_tail`` (the file's last segment,
    ztailpacking), the rest of ``data`` becomes ``Segment.inline`` instead of pclusters when it
    can (``_inline_tail``), if need be after its last extent is compressed again into one block
    fewer (``_trailing_fewer_blocks``).
    """
    if pcluster_blocks == 1 and not inline_tail:
        compiled = compiled_segment(codec, level, data)  # LZ4/LZMA: the loop below, in C (zcodec.py, zloop.c)
        if compiled is not None:
            return Segment(compiled[0], compiled[1])
    comp = make_compressor(codec, level, data, _BLKSZ * pcluster_blocks)
    out = bytearray()
    extents: list[tuple[int, int, int]] = []
    pos = 0
    n = len(data)
    view = memoryview(data)
    while pos < n:
        # Less than a block plus a byte is worth compressing only as an inline tail.
        consumed, stream = comp.compress(pos, floor=min(_BLKSZ + 1, n - pos) if inline_tail else _BLKSZ + 1)
        # A stream starting with 0 would lose that byte to zero-stripping (§5.4.4): DEFLATE does
        # when it begins with a stored block; such input hardly compresses, so store it raw.
        nblocks = -(-len(stream) // _BLKSZ)
        if inline_tail:
            tail = _inline_tail(data, pos, consumed, stream)
            if tail is None and pos + consumed == n and nblocks > 1 and len(stream) % _BLKSZ and stream[0] != 0:
                fewer = _trailing_fewer_blocks(data, pos, consumed, nblocks, codec=codec, level=level,
                                               pcluster_blocks=pcluster_blocks)
                if fewer is not None:
                    head_len, head, tail = fewer
                    out += bytes(-len(head) % _BLKSZ)
                    out += head
                    extents.append((fmt.Z_LCLUSTER_HEAD1, head_len, -(-len(head) // _BLKSZ)))
            if tail is not None:
                kind, length, stored = tail
                extents.append((kind, length, 0))
                return Segment(bytes(out), tuple(extents), stored)
        if consumed > nblocks * _BLKSZ and stream[0] != 0:
            out += bytes(nblocks * _BLKSZ - len(stream))
            out += stream
            extents.append((fmt.Z_LCLUSTER_HEAD1, consumed, nblocks))
            pos += consumed
        else:
            # The input this attempt covered does not shrink into fewer blocks: store its whole
            # blocks raw (at least one) rather than compress nearly the same input again from
            # the next block (with 16-block pclusters that re-encoded random data 16 times).
            span = max(1, consumed // _BLKSZ) if consumed <= nblocks * _BLKSZ else 1
            for _ in range(span):
                take = min(_BLKSZ, n - pos)
                out += view[pos:pos + take]
                out += bytes(_BLKSZ - take)
                extents.append((fmt.Z_LCLUSTER_PLAIN, take, 1))
                pos += take
    return Segment(bytes(out), tuple(extents))


_Tail = tuple[int, int, bytes]  # (lcluster type, input length, inline bytes)


def _inline_tail(data: bytes, pos: int, consumed: int, stream: bytes) -> _Tail | None:
    """How ``data[pos:]``, the rest of a file, goes inline after its inode (ztailpacking), given
    one compression attempt from ``pos`` (``consumed`` bytes into ``stream``): compressed if the
    attempt reached the end, shrank and fits; else uncompressed if it is less than a block (a
    PLAIN extent in the inline pcluster, as mkfs.erofs -Eztailpacking stores such a tail); else
    None, the rest goes into blocks."""
    if pos + consumed == len(data) and consumed > len(stream) and len(stream) <= MAX_INLINE and stream[0] != 0:
        return fmt.Z_LCLUSTER_HEAD1, consumed, stream
    if len(data) - pos <= _INLINE_PLAIN_MAX:
        return fmt.Z_LCLUSTER_PLAIN, len(data) - pos, data[pos:]
    return None


def _trailing_fewer_blocks(data: bytes, pos: int, consumed: int, nblocks: int, *, codec: Codec,
                           level: int | None, pcluster_blocks: int) -> tuple[int, bytes, _Tail] | None:
    """ztailpacking, a file's last extent (``consumed`` bytes from ``pos``) in a big pcluster of
    ``nblocks`` blocks whose last block is partly empty: compress it again into one block fewer,
    so that the input left over becomes an inline tail. mkfs.erofs -Eztailpacking does the same
    (erofs-utils lib/compress.c). Returns the shorter extent's input length and stream and the
    inline tail, or None when the rest would not go inline: stored in a block of its own, it
    would take the block saved."""
    fewer = make_compressor(codec, level, data, (nblocks - 1) * _BLKSZ, pcluster=pcluster_blocks * _BLKSZ)
    got, head = fewer.compress(pos, floor=_BLKSZ + 1)
    if not (0 < got < consumed and got > -(-len(head) // _BLKSZ) * _BLKSZ and head[0] != 0):
        return None
    rest_at = pos + got
    rest, stream = make_compressor(codec, level, data, pcluster_blocks * _BLKSZ).compress(
        rest_at, floor=min(_BLKSZ + 1, len(data) - rest_at))
    tail = _inline_tail(data, rest_at, rest, stream)
    return None if tail is None else (got, head, tail)


class _Bytes:
    """In-memory file contents as a FileData."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, n: int = -1) -> bytes:
        data, self._data = (self._data, b"") if n < 0 else (self._data[:n], self._data[n:])
        return data

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        data, self._data = self._data, b""
        for i in range(0, len(data), size):
            yield data[i:i + size]


class PendingRef:
    """What ``CompressedDataArea.add`` returns for a file still being compressed; ``resolve``
    replaces it in the tree by the file's BlockRef once the data is written."""

    __slots__ = ("ref", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ref: BlockRef | None = None


@dataclass(slots=True)
class _BigFile:
    """A file of more than one segment, while its segments wait to be written."""

    pending: PendingRef
    indexes: FullIndexes
    #: Its first block, set when its first segment is written.
    start: int | None = None


@dataclass(slots=True)
class _Queued:
    """One unit waiting to be written, in file order: a file of one segment (``big`` None), or one
    segment of a bigger file (``pending`` only on its last).

    ``data`` is the input kept for storing it plain instead (a small file, or a big file's last
    segment); ``nbytes`` is the input this unit counts against the queue's byte budget.
    """

    pending: PendingRef | None
    data: bytes
    nbytes: int
    segment: Future[Segment] | Segment | None
    big: _BigFile | None = None


class CompressedDataArea(ImageDataArea):
    """An ``ImageDataArea`` whose regular files are LZ4/LZ4HC-compressed where that saves space.

    Each file is read in segments; segments are compressed by worker threads (the compressors
    release the GIL), queued with those of the files before and after, and their pclusters
    written in file order at the next free blocks, so the image stays data-first and a pure
    function of the input. The map header and full index array
    go to the tail store and are placed after the inode by the planner. A file none of whose
    extents compresses, or whose compressed form would not be smaller, is stored exactly as
    the raw writer stores it.
    """

    def __init__(self, out: BinaryIO, *, codec: Codec, level: int | None = None, pcluster: int = _BLKSZ,
                 compact: bool = True, ztailpacking: bool = False, workers: int | None = None,
                 tail_memory: int = TAIL_MEMORY) -> None:
        check_available(codec)
        if pcluster % _BLKSZ or not _BLKSZ <= pcluster <= fmt.Z_MAX_PCLUSTER:
            raise ValueError(f"pcluster must be a multiple of {_BLKSZ} up to {fmt.Z_MAX_PCLUSTER}, not {pcluster}")
        super().__init__(out, tail_memory=tail_memory)
        self._codec = codec
        self._level = level
        self._pcluster_blocks = pcluster // _BLKSZ
        self._big = pcluster > _BLKSZ
        self._compact = compact
        self._tailpacking = ztailpacking
        self._workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._budget = max(QUEUE_BYTES, (self._workers + 1) * SEGMENT)
        self._inline_below = max(_BLKSZ + 1, _INLINE_BELOW.get(codec, 0))

    @property
    def feature_incompat(self) -> int:
        """Superblock incompat bits for this area's images (as mkfs.erofs sets them); the config
        records' bit is also the big-pcluster bit."""
        bits = fmt.INCOMPAT_LZ4_0PADDING | (fmt.INCOMPAT_ZTAILPACKING if self._tailpacking else 0)
        if self._codec.algorithm == 0 and not self._big:
            return bits
        return bits | fmt.INCOMPAT_COMPR_CFGS

    @property
    def u1(self) -> int:
        """``lz4_max_distance`` for LZ4 without config records, else the ``available_compr_algs`` bitmap (§5.4.7)."""
        if self._codec.algorithm == 0 and not self._big:
            return fmt.LZ4_MAX_DISTANCE
        return 1 << self._codec.algorithm

    @property
    def compr_cfgs(self) -> bytes:
        """The per-algorithm config records stored after the superblock (§5.4.7), or b""."""
        if self._codec.algorithm == 0:  # max distance, largest pcluster in blocks
            if not self._big:
                return b""
            return struct.pack("<HHH10x", 14, fmt.LZ4_MAX_DISTANCE, self._pcluster_blocks)
        if self._codec is Codec.ZSTD:  # format 0, window log - 10
            return fmt.U16.pack(6) + bytes([0, ZSTD_WINDOW_LOG - 10]) + bytes(4)
        if self._codec is Codec.DEFLATE:  # window bits 15
            return fmt.U16.pack(6) + bytes([15]) + bytes(5)
        if self._codec is Codec.LZMA:  # dictionary size, format 0
            return fmt.U16.pack(14) + fmt.U32.pack(microlzma.dict_size_for(self._pcluster_blocks * _BLKSZ)) + bytes(10)
        return b""  # pragma: no cover - every Codec is handled above

    def add(self, data: FileData, size: int) -> BlockRef | PendingRef:  # type: ignore[override]
        if self._sealed:
            raise ErofsFormatError("adding file data: the image was already written")
        if size < 0:
            raise LayerError(f"file size {size} is negative")
        if size <= SEGMENT:
            small = self._read_small(data, size)
            if size < self._inline_below:
                # One block or less can only shrink inline (ztailpacking).
                worth = size > _BLKSZ or (self._tailpacking and size >= _INLINE_MIN)
                seg = self._compress(small, last=True) if worth else None
                if not self._queue:
                    return self._write_small(small, seg)
                return self._enqueue(small, seg)
            return self._enqueue(small, self._submit(small, last=True))
        # Bigger: each segment is compressed by a worker and queued like a small file, so the
        # workers keep busy across files (the files before it and after it included).
        big = _BigFile(PendingRef(size), FullIndexes(size, self._codec.algorithm, big=self._big))
        try:
            buf = bytearray()
            got = 0
            for chunk in data.chunks(COPY_CHUNK):
                got += len(chunk)
                if got > size:
                    raise LayerError("file data longer than its header says")
                buf += chunk
                while len(buf) > SEGMENT:  # keep the last segment back: its handling differs
                    with memoryview(buf) as view:  # one copy, where bytes(buf[:SEGMENT]) made two
                        part = bytes(view[:SEGMENT])
                    del buf[:SEGMENT]
                    self._push(_Queued(None, b"", SEGMENT, self._submit(part), big))
            if got != size:
                raise LayerError("file data shorter than its header says")
            last = bytes(buf)
            del buf
            self._push(_Queued(big.pending, last, len(last), self._submit(last, last=True), big))
            return big.pending
        except BaseException:
            self._abandon(big)
            raise

    def resolve(self, root: Inode) -> None:
        """Write every queued file, then replace each PendingRef in the tree by its BlockRef."""
        self._drain(0)
        stack = [root]
        while stack:
            node = stack.pop()
            if isinstance(node.data, PendingRef):
                assert node.data.ref is not None, "a queued file was never written"
                node.data = node.data.ref
            if node.children:
                stack.extend(node.children.values())

    def close(self) -> None:
        for queued in self._queue:
            if isinstance(queued.segment, Future):
                queued.segment.cancel()
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        super().close()

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _read_small(data: FileData, size: int) -> bytes:
        parts = []
        got = 0
        for chunk in data.chunks(COPY_CHUNK):
            got += len(chunk)
            if got > size:
                raise LayerError("file data longer than its header says")
            parts.append(chunk)
        if got != size:
            raise LayerError("file data shorter than its header says")
        return b"".join(parts)

    def _enqueue(self, data: bytes, segment: Future[Segment] | Segment | None) -> PendingRef:
        """Queue a file of at most one segment, with its compression (running, done, or none)."""
        pending = PendingRef(len(data))
        self._push(_Queued(pending, data, len(data), segment))
        return pending

    def _push(self, queued: _Queued) -> None:
        self._queue.append(queued)
        self._queued_bytes += queued.nbytes
        self._drain(QUEUE_FILES, self._budget)

    def _drain(self, units: int, data_bytes: int = 0) -> None:
        """Write queued units, oldest first, until at most ``units`` and ``data_bytes`` of input
        wait, and then those whose compression is done: once the queue is empty, the next small
        files are written directly, without a placeholder (on the small-files layer most are)."""
        while self._queue:
            queued = self._queue[0]
            if len(self._queue) <= units and self._queued_bytes <= data_bytes and \
                    isinstance(queued.segment, Future) and not queued.segment.done():
                return
            seg = queued.segment.result() if isinstance(queued.segment, Future) else queued.segment
            self._queue.popleft()
            self._queued_bytes -= queued.nbytes
            if queued.big is None:
                assert queued.pending is not None
                queued.pending.ref = self._write_small(queued.data, seg)
            else:
                assert seg is not None
                self._write_part(queued, seg, queued.big)

    def _write_part(self, queued: _Queued, seg: Segment, big: _BigFile) -> None:
        """Write one segment of a big file; after its last, the file's reference."""
        if big.start is None:
            big.start = self._next_block
        if queued.pending is None:
            self._write_segment(seg, big.indexes)
            return
        size = queued.pending.size
        if not (big.indexes.compressed or seg.compressed):
            # Every extent is raw: the blocks written so far are the file's plain blocks.
            piece = self._plain(_Bytes(queued.data), len(queued.data))
            queued.pending.ref = BlockRef(size=size, start_block=big.start, full_blocks=size // _BLKSZ,
                                          tail_offset=piece.tail_offset, tail_len=piece.tail_len,
                                          tail_in_block=piece.tail_in_block, area_token=self._token)
            return
        self._write_segment(seg, big.indexes)
        queued.pending.ref = self._finish_compressed(big.start, size, big.indexes)

    def _abandon(self, big: _BigFile) -> None:
        """Drop the queued segments of ``big``, whose data could not be read; if some were already
        written, later files overwrite them. (Units of earlier files stay queued.)"""
        keep: deque[_Queued] = deque()
        for queued in self._queue:
            if queued.big is big:
                if isinstance(queued.segment, Future):
                    queued.segment.cancel()
                self._queued_bytes -= queued.nbytes
            else:
                keep.append(queued)
        self._queue = keep
        if big.start is not None:
            self._next_block = big.start
            self._out_pos = None

    def _plain(self, data: FileData, size: int) -> BlockRef:
        """Store ``data`` as the raw writer does (FLAT blocks: this area never makes holes)."""
        ref = super().add(data, size)
        assert isinstance(ref, BlockRef), "a compressed area is built without holes"
        return ref

    def _submit(self, segment: bytes, *, last: bool = False) -> Future[Segment]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="erofs-z")
        return self._pool.submit(self._compress, segment, last=last)

    def _compress(self, data: bytes, *, last: bool = False) -> Segment:
        """Compress one segment; ``last``: the file's last, whose last extent may go inline."""
        return compress_segment(data, codec=self._codec, level=self._level, pcluster_blocks=self._pcluster_blocks,
                                inline_tail=last and self._tailpacking)

    def _write_small(self, data: bytes, seg: Segment | None) -> BlockRef:
        """A file of one segment: compressed (``seg``) if that takes less room than storing it plain."""
        size = len(data)
        # mkfs's rule: keep the compressed form only if its blocks and indexes take less than
        # the file's size (otherwise the plain layout is no bigger and reads faster).
        if seg is None or not seg.compressed or \
                len(seg.blocks) + meta_size_bound(size, compact=self._compact) + len(seg.inline) >= size:
            return self._plain(_Bytes(data), size)
        start = self._next_block
        indexes = FullIndexes(size, self._codec.algorithm, big=self._big)
        self._write_segment(seg, indexes)
        return self._finish_compressed(start, size, indexes)

    def _write_segment(self, seg: Segment, indexes: FullIndexes) -> None:
        self._seek_out(self._next_block * _BLKSZ)
        self._write_out(seg.blocks)
        for kind, llen, nblocks in seg.extents:
            if not nblocks:  # the inline tail: no block (the kernel ignores its address)
                indexes.add(kind, llen, 0, 1)
                indexes.inline = seg.inline
                continue
            indexes.add(kind, llen, self._next_block, nblocks)
            self._next_block += nblocks
        if self._next_block >= fmt.MAX_BLOCKS:
            raise ErofsFormatError("file data exceeds the 16 TiB that 32-bit block addresses reach")

    def _finish_compressed(self, start: int, size: int, indexes: FullIndexes) -> BlockRef:
        meta = indexes.finish() + indexes.inline
        self._tail_sink(len(meta), False)(meta)
        ref = BlockRef(size=size, start_block=start, full_blocks=0, tail_offset=self._tail_end,
                       tail_len=len(meta), tail_in_block=False, area_token=self._token,
                       z_layout=fmt.LAYOUT_COMPRESSED_COMPACT if self._compact else fmt.LAYOUT_COMPRESSED_FULL,
                       z_blocks=self._next_block - start, z_inline=len(indexes.inline))
        self._tail_end += len(meta)
        return ref
