"""The pure-Python writer's compressed data area: LZ4/LZ4HC/zstd/DEFLATE pclusters, full indexes.

See docs/erofs-format.md §5.4 for the format and §5.4.6 for this writer's profile and design.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from converter.erofs import format as fmt
from converter.erofs import microlzma
from converter.erofs.layout import BlockRef
from converter.erofs.writer import COPY_CHUNK, TAIL_MEMORY, ImageDataArea
from converter.erofs.zcodec import ZSTD_WINDOW_LOG, Codec, check_available, make_compressor
from converter.errors import ErofsFormatError, LayerError
from converter.layers.model import FileData, Inode

__all__ = ["SEGMENT", "CompressedDataArea", "PendingRef", "Segment", "compress_segment"]

_BLKSZ = fmt.BLOCK_SIZE
_BITS = fmt.BLOCK_SIZE_BITS
#: Files are compressed in independent segments of this many bytes (a multiple of the block
#: size), so a large file's segments compress in parallel and memory stays bounded: at most
#: ``workers + 1`` segments (input and output) are held at once. An extent never crosses a
#: segment boundary, which costs at most one partly filled pcluster per segment (< 0.1 %).
SEGMENT = 4 << 20
#: Files of at most one segment are compressed in the background while the next files are read:
#: at most this many such files (and ``QUEUE_BYTES`` of their data) wait to be written, in file
#: order. Neither bound changes the image (writes happen in file order whatever the timing).
QUEUE_FILES = 64
QUEUE_BYTES = 8 << 20
#: Below this size a file is compressed by the reading thread itself: for LZ4 handing a small
#: file to a worker costs more than compressing it (the small-files bench layer: 5.7-6.1 s against 4.1-5.1 s).
_INLINE_BELOW = {Codec.LZ4: 64 << 10}


@dataclass(frozen=True, slots=True)
class Segment:
    """One compressed segment: its pclusters (one block each, in order) and their extents.

    ``extents[k]`` is (lcluster type, decoded length) of the pcluster in block ``k`` of
    ``blocks``: HEAD1 for an LZ4 stream right-aligned in its block (LZ4_0PADDING), PLAIN for
    raw bytes stored from the start of the block ("shifted") and zero-filled after.
    """

    blocks: bytes
    extents: tuple[tuple[int, int], ...]

    @property
    def compressed(self) -> bool:
        return any(kind == fmt.Z_LCLUSTER_HEAD1 for kind, _ in self.extents)


def compress_segment(data: bytes, *, codec: Codec, level: int | None) -> Segment:
    """Cut ``data`` into extents as mkfs.erofs does and compress each into one block.

    Each extent is as much input as LZ4 fits into one block. If that is not more than one
    block of input, compressing gains nothing and the next ``min(blksz, rest)`` bytes are
    stored raw instead (the kernel requires a raw extent to fit its block).
    """
    comp = make_compressor(codec, level, data, _BLKSZ)
    out = bytearray()
    extents: list[tuple[int, int]] = []
    pos = 0
    n = len(data)
    view = memoryview(data)
    while pos < n:
        consumed, stream = comp.compress(pos, floor=_BLKSZ + 1)
        # A stream starting with 0 would lose that byte to zero-stripping (§5.4.4): DEFLATE does
        # when it begins with a stored block; such input hardly compresses, so store it raw.
        if consumed > _BLKSZ and stream[0] != 0:
            out += bytes(_BLKSZ - len(stream))
            out += stream
            extents.append((fmt.Z_LCLUSTER_HEAD1, consumed))
            pos += consumed
        else:
            take = min(_BLKSZ, n - pos)
            out += view[pos:pos + take]
            out += bytes(_BLKSZ - take)
            extents.append((fmt.Z_LCLUSTER_PLAIN, take))
            pos += take
    return Segment(bytes(out), tuple(extents))


class _FullIndexes:
    """Builds a COMPRESSED_FULL index array extent by extent (docs/erofs-format.md §5.4.2)."""

    def __init__(self, size: int, algorithm: int = 0) -> None:
        self._size = size
        self._algorithm = algorithm
        self._la = 0
        self._entries = bytearray()
        self.compressed = False

    def add(self, kind: int, llen: int, blkaddr: int) -> None:
        la = self._la
        head = la >> _BITS
        cofs = la & (_BLKSZ - 1)
        if len(self._entries) != head * fmt.Z_FULL_INDEX_SIZE:
            raise ErofsFormatError("two extents start in one logical cluster")  # pragma: no cover - invariant
        self._entries += fmt.Z_FULL_HEAD.pack(kind, cofs, blkaddr)
        end = la + llen
        nxt = end >> _BITS
        pack = fmt.Z_FULL_NONHEAD.pack
        for lcn in range(head + 1, nxt):  # lclusters wholly inside the extent
            self._entries += pack(fmt.Z_LCLUSTER_NONHEAD, cofs, min(lcn - head, fmt.Z_DELTA_MAX), nxt - lcn)
        self._la = end
        if kind == fmt.Z_LCLUSTER_HEAD1:
            self.compressed = True

    @staticmethod
    def metadata_size(size: int) -> int:
        """Bytes after the (aligned) map header position: header, reserved bytes, entries."""
        return fmt.Z_FULL_INDEX_START + fmt.Z_FULL_INDEX_SIZE * -(-size // _BLKSZ)

    def finish(self) -> bytes:
        """The map header, its 8 reserved bytes and the entries, ending with the EOF marker."""
        if self._la != self._size:
            raise ErofsFormatError(f"compressed extents cover {self._la} of {self._size} bytes")  # pragma: no cover
        count = -(-self._size // _BLKSZ)
        if len(self._entries) // fmt.Z_FULL_INDEX_SIZE == count - 1:
            # The last extent started in an earlier lcluster and ends inside the last one:
            # that lcluster gets a PLAIN head at i_size that is never mapped (as mkfs writes it).
            self._entries += fmt.Z_FULL_HEAD.pack(fmt.Z_LCLUSTER_PLAIN, self._size & (_BLKSZ - 1), 0)
        if len(self._entries) != count * fmt.Z_FULL_INDEX_SIZE:
            raise ErofsFormatError("the lcluster index array has the wrong length")  # pragma: no cover
        # Map header: no advise flags, the algorithm of HEAD1 lclusters, lcluster = block.
        header = bytearray(fmt.Z_FULL_INDEX_START)
        header[6] = self._algorithm
        return bytes(header) + bytes(self._entries)


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
class _Queued:
    """A small file waiting to be written: its data, and its compression if worth trying."""

    pending: PendingRef
    data: bytes
    segment: Future[Segment] | Segment | None


class CompressedDataArea(ImageDataArea):
    """An ``ImageDataArea`` whose regular files are LZ4/LZ4HC-compressed where that saves space.

    Each file is read in segments; segments are compressed by worker threads (liblz4 releases
    the GIL) and their pclusters written in file order at the next free blocks, so the image
    stays data-first and a pure function of the input. The map header and full index array
    go to the tail store and are placed after the inode by the planner. A file none of whose
    extents compresses, or whose compressed form would not be smaller, is stored exactly as
    the raw writer stores it.
    """

    def __init__(self, out: BinaryIO, *, codec: Codec, level: int | None = None, workers: int | None = None,
                 tail_memory: int = TAIL_MEMORY) -> None:
        check_available(codec)
        super().__init__(out, tail_memory=tail_memory)
        self._codec = codec
        self._level = level
        self._workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._inline_below = max(_BLKSZ + 1, _INLINE_BELOW.get(codec, 0))

    @property
    def feature_incompat(self) -> int:
        """Superblock incompat bits for this area's images (as mkfs.erofs sets them)."""
        if self._codec.algorithm == 0:
            return fmt.INCOMPAT_LZ4_0PADDING
        return fmt.INCOMPAT_LZ4_0PADDING | fmt.INCOMPAT_COMPR_CFGS

    @property
    def u1(self) -> int:
        """``lz4_max_distance`` for LZ4, else the ``available_compr_algs`` bitmap (§5.4.7)."""
        return fmt.LZ4_MAX_DISTANCE if self._codec.algorithm == 0 else 1 << self._codec.algorithm

    @property
    def compr_cfgs(self) -> bytes:
        """The per-algorithm config records stored after the superblock (§5.4.7), or b""."""
        if self._codec is Codec.ZSTD:  # format 0, window log - 10
            return fmt.U16.pack(6) + bytes([0, ZSTD_WINDOW_LOG - 10]) + bytes(4)
        if self._codec is Codec.DEFLATE:  # window bits 15
            return fmt.U16.pack(6) + bytes([15]) + bytes(5)
        if self._codec is Codec.LZMA:  # dictionary size, format 0
            return fmt.U16.pack(14) + fmt.U32.pack(microlzma.dict_size_for(_BLKSZ)) + bytes(10)
        return b""

    def add(self, data: FileData, size: int) -> BlockRef | PendingRef:  # type: ignore[override]
        if self._sealed:
            raise ErofsFormatError("adding file data: the image was already written")
        if size < 0:
            raise LayerError(f"file size {size} is negative")
        if size <= SEGMENT:
            small = self._read_small(data, size)
            if size < self._inline_below:
                seg = compress_segment(small, codec=self._codec, level=self._level) if size > _BLKSZ else None
                if not self._queue:
                    return self._write_small(small, seg)
                return self._enqueue(small, seg)
            return self._enqueue(small, self._submit(small)[1])
        self._drain(0)  # the files before this one are written first: blocks follow file order
        start = self._next_block
        pending: deque[tuple[bytes, Future[Segment]]] = deque()
        indexes = _FullIndexes(size, self._codec.algorithm)
        try:
            buf = bytearray()
            got = 0
            for chunk in data.chunks(COPY_CHUNK):
                got += len(chunk)
                if got > size:
                    raise LayerError("file data longer than its header says")
                buf += chunk
                while len(buf) > SEGMENT:  # keep the last segment back: its handling differs
                    pending.append(self._submit(bytes(buf[:SEGMENT])))
                    del buf[:SEGMENT]
                    while len(pending) > self._workers:
                        self._write_segment(pending.popleft()[1].result(), indexes)
            if got != size:
                raise LayerError("file data shorter than its header says")
            last = bytes(buf)
            del buf
            pending.append(self._submit(last))
            while len(pending) > 1:
                self._write_segment(pending.popleft()[1].result(), indexes)
            seg = pending.popleft()[1].result()
            if not (indexes.compressed or seg.compressed):
                # Every extent is raw: the blocks written so far are the file's plain blocks.
                piece = self._plain(_Bytes(last), len(last))
                return BlockRef(size=size, start_block=start, full_blocks=size // _BLKSZ,
                                tail_offset=piece.tail_offset, tail_len=piece.tail_len,
                                tail_in_block=piece.tail_in_block, area_token=self._token)
            self._write_segment(seg, indexes)
            return self._finish_compressed(start, size, indexes)
        except BaseException:
            for _, future in pending:
                future.cancel()
            self._next_block = start  # later files overwrite whatever this one wrote
            self._out_pos = None
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
        self._queue.append(_Queued(pending, data, segment))
        self._queued_bytes += len(data)
        self._drain(QUEUE_FILES, QUEUE_BYTES)
        return pending

    def _drain(self, files: int, data_bytes: int = 0) -> None:
        """Write queued files, oldest first, until at most ``files`` files and ``data_bytes`` wait."""
        while self._queue and (len(self._queue) > files or self._queued_bytes > data_bytes):
            queued = self._queue.popleft()
            self._queued_bytes -= len(queued.data)
            seg = queued.segment.result() if isinstance(queued.segment, Future) else queued.segment
            queued.pending.ref = self._write_small(queued.data, seg)

    def _plain(self, data: FileData, size: int) -> BlockRef:
        """Store ``data`` as the raw writer does (FLAT blocks: this area never makes holes)."""
        ref = super().add(data, size)
        assert isinstance(ref, BlockRef), "a compressed area is built without holes"
        return ref

    def _submit(self, segment: bytes) -> tuple[bytes, Future[Segment]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="erofs-z")
        return segment, self._pool.submit(compress_segment, segment, codec=self._codec, level=self._level)

    def _write_small(self, data: bytes, seg: Segment | None) -> BlockRef:
        """A file of one segment: compressed (``seg``) if that takes less room than storing it plain."""
        size = len(data)
        # mkfs's rule: keep the compressed form only if its blocks and indexes take less than
        # the file's size (otherwise the plain layout is no bigger and reads faster).
        if seg is None or not seg.compressed or len(seg.extents) * _BLKSZ + _FullIndexes.metadata_size(size) >= size:
            return self._plain(_Bytes(data), size)
        start = self._next_block
        indexes = _FullIndexes(size, self._codec.algorithm)
        self._write_segment(seg, indexes)
        return self._finish_compressed(start, size, indexes)

    def _write_segment(self, seg: Segment, indexes: _FullIndexes) -> None:
        self._seek_out(self._next_block * _BLKSZ)
        self._write_out(seg.blocks)
        for kind, llen in seg.extents:
            indexes.add(kind, llen, self._next_block)
            self._next_block += 1
        if self._next_block >= fmt.MAX_BLOCKS:
            raise ErofsFormatError("file data exceeds the 16 TiB that 32-bit block addresses reach")

    def _finish_compressed(self, start: int, size: int, indexes: _FullIndexes) -> BlockRef:
        meta = indexes.finish()
        self._tail_sink(len(meta), False)(meta)
        ref = BlockRef(size=size, start_block=start, full_blocks=0, tail_offset=self._tail_end,
                       tail_len=len(meta), tail_in_block=False, area_token=self._token,
                       z_layout=fmt.LAYOUT_COMPRESSED_FULL, z_blocks=self._next_block - start)
        self._tail_end += len(meta)
        return ref
