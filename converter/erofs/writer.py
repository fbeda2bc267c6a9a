"""Pure-Python writer of uncompressed EROFS images, streaming and data-first (docs/erofs-format.md §3, §11).

Usage::

    with open(path, "w+b") as out, ImageDataArea(out) as area:
        ... normalise the layer, passing ``area`` as the DataSink ...
        size = write_image(root, area, build_time=T)

``ImageDataArea`` writes each regular file's full blocks straight into the output from block 1
on while the tar streams, and keeps the sub-block tails (in memory up to a cap, then in a
temporary file). ``write_image`` plans the metadata (``layout.py``, no I/O; inodes are packed
into metadata blocks by best fit), appends it after the data blocks, appends blocks that depend
on NIDs (directory blocks, long symlinks, files whose tail does not fit inline), and writes the
superblock last with its CRC32C. The output depends only on the tree and the
file contents, so equal inputs give byte-identical images. The images use only what Linux 5.4
mounts: 4 KiB blocks, compact/extended inodes, FLAT_PLAIN/FLAT_INLINE, inline xattrs with
short prefixes, incompat 0 (§2.2 "writer profile") — except for files with holes (sparse tar
members), which become CHUNK_BASED files whose holes are null chunks, so the image needs
Linux 5.15 only when a layer has such a file (``docs/holes.md``).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from array import array
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO

from converter.erofs import format as fmt
from converter.erofs.layout import MAX_INLINE_TAIL, BlockRef, ChunkRef, Plan, plan_layout
from converter.erofs.zindex import to_compact
from converter.errors import ErofsFormatError, LayerError
from converter.layers.filedata import FileData, SparseFileData, sparse_data
from converter.layers.model import S_IFMT_BY_KIND, Inode, NodeKind

__all__ = ["BlockRef", "ChunkRef", "ImageDataArea", "choose_chunkbits", "write_image"]

COPY_CHUNK = 1 << 20  # bytes per read/write when streaming file contents
FLUSH_AT = 4 << 20  # metadata is written in buffers of about this size
_BLKSZ = fmt.BLOCK_SIZE
_ZERO_BLOCK = bytes(_BLKSZ)
_ZERO_CHUNK = bytes(COPY_CHUNK)
#: Chunk sizes tried for a file with holes: 4 KiB (one block) up to 2**(12+27) = 512 GiB.
MAX_CHUNKBITS = 27


def choose_chunkbits(size: int, segments: list[tuple[int, int]]) -> tuple[int, int]:
    """The chunk size (as chunkbits) that stores a file with these data segments in the fewest
    bytes, and those bytes: every chunk a segment touches is stored whole (its zeros too), and
    the block map costs 4 bytes per chunk. Small chunks keep holes exact but make the map long
    (a 60e9-byte file in 4 KiB chunks would need a 58 MB map); large ones store more zeros
    around each segment. Ties go to the smaller chunk."""
    best: tuple[int, int] | None = None
    for bits in range(MAX_CHUNKBITS + 1):
        shift = fmt.BLOCK_SIZE_BITS + bits
        chunk = 1 << shift
        nchunks = (size + chunk - 1) >> shift
        touched = 0
        last = -1
        for offset, length in segments:
            if not length:
                continue
            first, end = offset >> shift, (offset + length - 1) >> shift
            touched += end - max(first, last + 1) + 1 if end > last else 0
            last = max(last, end)
        stored = touched * chunk
        if touched and last == nchunks - 1:  # the last chunk stores only up to i_size, in blocks
            stored -= chunk - (-(-(size - (last << shift)) // _BLKSZ) * _BLKSZ)
        cost = stored + 4 * nchunks
        if best is None or cost < best[1]:
            best = (bits, cost)
        if nchunks == 1:
            break
    assert best is not None
    return best


#: Default for ``ImageDataArea(tail_memory=...)``: sub-block tails kept in memory, in bytes;
#: tails beyond it go to a temporary file, which bounds the peak memory however many files a
#: layer has. Measured on a 50,000-small-file layer: 64 MiB saves ~0.1 s over 16 MiB but costs
#: 47 MB more per layer, and an image conversion builds several layers at once. 8 MiB: the
#: bench image's peak in image mode was 175-188 MiB for erofs+lz4 (16 MiB: 184-191 MiB, over
#: the 200 MB target), with no measurable time cost on the small-files layer. 4 MiB since
#: the DiffID's hashing thread and the compiled modules came: that peak was 190-198 MB with
#: 8 MiB, 184-190 MB with 4 MiB (GNU time, 3-4 runs each); the small-files layer took
#: 1.86-2.06 s against 1.86-1.98 s (medians 2.06 / 1.98 of 6 alternating runs, within noise).
TAIL_MEMORY = 4 << 20
#: Write buffer of the tail spool file.
SPOOL_BUFFER = 1 << 20


class ImageDataArea:
    """The DataSink of the pure-Python writer: file blocks go straight into the image.

    Full blocks of each file are written at the next free block of ``out`` (from block 1; block
    0 is the superblock's), consecutively per file (§5.1). The ``size % 4096`` tail is kept so
    it can be inlined after its inode later (§5.2); a tail too long to ever be inline (> 4064
    bytes) is written zero-padded right after the file's blocks instead.

    Tails live in one in-memory buffer until it would exceed ``tail_memory`` bytes, and in a
    temporary file from then on. Why: with tens of thousands of small files, writing every tail
    to a file and reading each back with its own ``pread`` (in placement order, not file order)
    cost about 0.1 s of system time per 50,000 files; the cap keeps memory bounded whatever
    the layer size. Where a tail was kept never changes the image bytes. Memory use does not
    otherwise depend on file sizes.
    """

    def __init__(self, out: BinaryIO, *, tail_memory: int = TAIL_MEMORY, holes: bool = False) -> None:
        if tail_memory < 0:
            raise ValueError(f"tail_memory must be >= 0, not {tail_memory}")
        self._out = out
        self._holes = holes  # all-zero blocks of ordinary files become holes too
        self._tail_memory = tail_memory
        self._tails = bytearray()  # tails [0, len) of the logical tail store
        self._tails_view: memoryview | None = None  # read-only view once sealed
        self._spool: BinaryIO | None = None  # created on the first tail that does not fit
        self._spill_from: int | None = None  # logical offset where the spool starts
        self._tail_end = 0  # logical end of the tail store (memory + spool)
        self._next_block = 1
        self._out_pos: int | None = None  # where ``out`` is positioned, if we know
        self._sealed = False
        self._token = id(self)

    # -- DataSink -----------------------------------------------------------------------------

    def add(self, data: FileData, size: int) -> BlockRef | ChunkRef:
        """Store one regular file of exactly ``size`` bytes; return where it went.

        Raises LayerError if ``data`` yields fewer or more than ``size`` bytes; nothing of that
        file is kept then.
        """
        if self._sealed:
            raise ErofsFormatError("adding file data: the image was already written")
        if size < 0:
            raise LayerError(f"file size {size} is negative")
        sparse = sparse_data(data) if size else None
        if sparse is not None:
            bits, cost = choose_chunkbits(size, sparse.segments)
            if cost < -(-size // _BLKSZ) * _BLKSZ:  # holes save space: keep them as null chunks
                return self._add_chunked(sparse, size, bits)
        if self._holes and size >= _BLKSZ:
            return self._add_finding_zeros(data, size)
        full = size // _BLKSZ
        tail = size - full * _BLKSZ
        tail_in_block = tail > MAX_INLINE_TAIL
        start = self._next_block if (full or tail_in_block) else 0
        block_bytes = full * _BLKSZ
        put_tail = self._tail_sink(tail, tail_in_block)
        got = 0
        try:
            if block_bytes or tail_in_block:
                self._seek_out(start * _BLKSZ)
            for chunk in data.chunks(COPY_CHUNK):
                if not chunk:
                    continue
                n = len(chunk)
                if got + n > size:
                    raise LayerError("file data longer than its header says")
                if got >= block_bytes:
                    put_tail(chunk)
                elif got + n <= block_bytes:
                    self._write_out(chunk)
                else:
                    split = block_bytes - got
                    view = memoryview(chunk)
                    self._write_out(view[:split])
                    put_tail(view[split:])
                got += n
            if got != size:
                raise LayerError("file data shorter than its header says")
        except BaseException:
            self._out_pos = None  # unknown now; the blocks will be overwritten
            self._drop_partial_tail()
            raise
        if tail_in_block:
            self._write_out(bytes(_BLKSZ - tail))  # §5.1: last block zero-padded
        ref = BlockRef(
            size=size, start_block=start, full_blocks=full,
            tail_offset=self._tail_end, tail_len=0 if tail_in_block else tail,
            tail_in_block=tail_in_block, area_token=self._token,
        )
        if not tail_in_block:
            self._tail_end += tail
        self._next_block += full + (1 if tail_in_block else 0)
        if self._next_block >= fmt.MAX_BLOCKS:
            raise ErofsFormatError("file data exceeds the 16 TiB that 32-bit block addresses reach")
        return ref

    def _add_finding_zeros(self, data: FileData, size: int) -> BlockRef | ChunkRef:
        """``--holes``: store a file's non-zero 4 KiB blocks only. If some blocks are all zero
        and leaving them out saves more than the 4-byte-per-block map costs, the file becomes a
        CHUNK_BASED file with one-block chunks whose zero blocks are null chunks; otherwise the
        blocks are spread back out into the usual flat layout (same bytes as without the option)."""
        full = size // _BLKSZ
        tail_len = size - full * _BLKSZ
        start = self._next_block
        addresses = array("I", [fmt.NULL_ADDR]) * (full + (1 if tail_len else 0))
        pending = bytearray()  # bytes of a block not complete yet
        tail = bytearray()
        index = 0  # the next block of the file
        got = 0
        self._seek_out(start * _BLKSZ)
        try:
            for chunk in data.chunks(COPY_CHUNK):
                got += len(chunk)
                if got > size:
                    raise LayerError("file data longer than its header says")
                view = memoryview(chunk)
                if pending:
                    need = _BLKSZ - len(pending)
                    pending += view[:need]
                    view = view[need:]
                    if len(pending) == _BLKSZ and index < full:
                        index = self._put_blocks(memoryview(pending), index, addresses)
                        pending = bytearray()
                n = min(len(view) // _BLKSZ, full - index) * _BLKSZ
                if n:
                    index = self._put_blocks(view[:n], index, addresses)
                view = view[n:]
                if view:
                    if index < full:
                        pending += view
                    else:
                        tail += pending + view
                        pending = bytearray()
            if got != size:
                raise LayerError("file data shorter than its header says")
        except BaseException:
            self._out_pos = None
            self._next_block = start  # the blocks written so far will be overwritten
            raise
        tail += pending
        stored = self._next_block - start
        nulls = full - stored
        tail_block = 1 if tail_len and tail.count(0) != len(tail) else 0
        # Chunk-based files have no inline tail: the tail costs a block there.
        if nulls and (stored + tail_block) * _BLKSZ + 4 * len(addresses) < full * _BLKSZ + tail_len:
            if tail_block:
                addresses[full] = self._next_block
                self._write_out(bytes(tail) + bytes(_BLKSZ - tail_len))
                self._next_block += 1
            if self._next_block >= fmt.MAX_BLOCKS:
                raise ErofsFormatError("file data exceeds the 16 TiB that 32-bit block addresses reach")
            if sys.byteorder != "little":
                addresses.byteswap()
            return ChunkRef(size=size, chunkbits=0, block_map=addresses.tobytes(), area_token=self._token)
        if nulls:
            self._spread(start, full, addresses)
        return self._finish_flat(size, start, full, bytes(tail))

    def _put_blocks(self, view: memoryview, index: int, addresses: array[int]) -> int:
        """Write the non-zero blocks of ``view`` (whole blocks, file blocks ``index``...) in runs,
        noting their addresses; return the next file block."""
        count = len(view) // _BLKSZ
        if len(view) <= COPY_CHUNK and bytes(view) == _ZERO_CHUNK[:len(view)]:
            return index + count  # (bytes comparisons: memoryview == memoryview goes item by item)

        def is_zero(b: int) -> bool:
            return not view[b * _BLKSZ] and not view[b * _BLKSZ + _BLKSZ - 1] and \
                bytes(view[b * _BLKSZ:(b + 1) * _BLKSZ]) == _ZERO_BLOCK

        b = 0
        while b < count:
            if is_zero(b):
                b += 1
                continue
            e = b + 1
            while e < count and not is_zero(e):
                e += 1
            self._write_out(view[b * _BLKSZ:e * _BLKSZ])
            addresses[index + b:index + e] = array("I", range(self._next_block, self._next_block + e - b))
            self._next_block += e - b
            b = e
        return index + count

    def _spread(self, start: int, full: int, addresses: array[int]) -> None:
        """Put the packed blocks of a file back at their own positions, zeros in between
        (from the last block down, so nothing is overwritten before it is moved)."""
        out = self._out
        for index in range(full - 1, -1, -1):
            addr = addresses[index]
            if addr == fmt.NULL_ADDR:
                block = _ZERO_BLOCK
            else:
                out.seek(addr * _BLKSZ)
                block = out.read(_BLKSZ)
            out.seek((start + index) * _BLKSZ)
            out.write(block)
        self._next_block = start + full
        self._out_pos = None

    def _finish_flat(self, size: int, start: int, full: int, tail: bytes) -> BlockRef:
        """The flat BlockRef of a file whose ``full`` blocks sit at ``start``; the tail is kept
        as ``add`` keeps it (inline later, or zero-padded after the blocks)."""
        tail_len = len(tail)
        tail_in_block = tail_len > MAX_INLINE_TAIL
        if tail_in_block:
            self._seek_out(self._next_block * _BLKSZ)
            self._write_out(tail + bytes(_BLKSZ - tail_len))
            self._next_block += 1
        elif tail_len:
            self._tail_sink(tail_len, False)(tail)
        ref = BlockRef(size=size, start_block=start if (full or tail_in_block) else 0, full_blocks=full,
                       tail_offset=self._tail_end, tail_len=0 if tail_in_block else tail_len,
                       tail_in_block=tail_in_block, area_token=self._token)
        if not tail_in_block:
            self._tail_end += tail_len
        if self._next_block >= fmt.MAX_BLOCKS:
            raise ErofsFormatError("file data exceeds the 16 TiB that 32-bit block addresses reach")
        return ref

    def _add_chunked(self, data: SparseFileData, size: int, bits: int) -> ChunkRef:
        """Store the chunks of a file with holes that hold data; the others stay null chunks."""
        shift = fmt.BLOCK_SIZE_BITS + bits
        chunk = 1 << shift
        nchunks = (size + chunk - 1) >> shift
        block_map = bytearray(b"\xff" * (4 * nchunks))  # NULL_ADDR everywhere: all holes
        current = -1  # the chunk being written
        written = 0  # bytes of the current chunk written so far
        zeros = bytes(COPY_CHUNK)

        def pad_to(n: int) -> None:
            nonlocal written
            while written < n:
                k = min(n - written, COPY_CHUNK)
                self._write_out(zeros[:k])
                written += k

        def chunk_bytes(index: int) -> int:  # the last chunk covers only up to i_size, in blocks
            return min(chunk, -(-(size - (index << shift)) // _BLKSZ) * _BLKSZ)

        try:
            for offset, piece in data.extents(COPY_CHUNK):
                view = memoryview(piece)
                while view:
                    index = offset >> shift
                    if index != current:
                        if current >= 0:
                            pad_to(chunk_bytes(current))
                            self._next_block += chunk_bytes(current) // _BLKSZ
                        if self._next_block + chunk_bytes(index) // _BLKSZ >= fmt.MAX_BLOCKS:
                            raise ErofsFormatError("file data exceeds the 16 TiB that 32-bit block addresses reach")
                        fmt.U32.pack_into(block_map, 4 * index, self._next_block)
                        self._seek_out(self._next_block * _BLKSZ)
                        current, written = index, 0
                    within = offset - (index << shift)
                    pad_to(within)
                    n = min(len(view), chunk - within)
                    self._write_out(view[:n])
                    written += n
                    offset += n
                    view = view[n:]
            if current >= 0:
                pad_to(chunk_bytes(current))
                self._next_block += chunk_bytes(current) // _BLKSZ
        except BaseException:
            self._out_pos = None  # unknown now; the blocks will be overwritten
            raise
        return ChunkRef(size=size, chunkbits=bits, block_map=bytes(block_map), area_token=self._token)

    # -- used by write_image ------------------------------------------------------------------

    @property
    def out(self) -> BinaryIO:
        return self._out

    @property
    def token(self) -> int:
        return self._token

    @property
    def next_block(self) -> int:
        """First block not used by file data: the metadata starts here (block D of §3)."""
        return self._next_block

    @property
    def tails_in_memory(self) -> int:
        """Bytes of tails held in memory (the rest, if any, is in the spool file)."""
        return len(self._tails)

    @property
    def spilled(self) -> bool:
        """Whether some tails went to the temporary file because memory was full."""
        return self._spool is not None

    def resolve(self, root: Inode) -> None:
        """No more files: finish any writes still in flight and give every inode under ``root``
        its final reference (a subclass may hand out placeholders from ``add``). Raw: nothing to do."""

    def seal(self) -> None:
        """No more files: make the tails readable."""
        self._sealed = True
        if self._tails_view is None:
            self._tails_view = memoryview(self._tails).toreadonly()
        if self._spool is not None:
            self._spool.flush()

    def read_tail(self, ref: BlockRef) -> bytes | memoryview:
        """The stored tail of ``ref`` (exactly ``ref.tail_len`` bytes); only after ``seal``."""
        off = ref.tail_offset
        n = ref.tail_len
        if self._spill_from is None or off < self._spill_from:
            view = self._tails_view
            if view is None:
                raise ErofsFormatError("reading a file tail before the data area was sealed")
            data: bytes | memoryview = view[off:off + n]
        else:
            assert self._spool is not None
            data = os.pread(self._spool.fileno(), n, off - self._spill_from)
        if len(data) != n:
            raise ErofsFormatError("reading a stored file tail: the tail store is truncated")
        return data

    def close(self) -> None:
        """Drop the tails (the output file stays open: it belongs to the caller)."""
        if self._tails_view is not None:
            self._tails_view.release()
            self._tails_view = None
        self._tails = bytearray()
        if self._spool is not None:
            self._spool.close()

    def __enter__(self) -> ImageDataArea:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _tail_sink(self, tail: int, tail_in_block: bool) -> Callable[[bytes | memoryview], object]:
        """Where this file's tail bytes go: the image, the memory buffer, or the spool.

        Memory is used until a tail would take it past the cap; from then on every tail goes
        to the spool, so each tail is in one place and offsets stay a single running count.
        """
        if tail_in_block:
            return self._write_out
        if self._spool is None:
            if len(self._tails) + tail <= self._tail_memory:
                return self._tails.extend
            # A big buffer: tails are small, and each would otherwise cost a write syscall.
            raw = tempfile.TemporaryFile(buffering=0, prefix="erofs-tails-")  # noqa: SIM115 (closed by close())
            self._spool = io.BufferedRandom(raw, SPOOL_BUFFER)
            self._spill_from = self._tail_end
        return self._spool.write  # positioned at the end of the spool

    def _drop_partial_tail(self) -> None:
        """Forget the tail bytes of a file whose data turned out short or long."""
        if self._spill_from is None:
            del self._tails[self._tail_end:]
        else:
            assert self._spool is not None
            self._spool.seek(self._tail_end - self._spill_from)
            self._spool.truncate()

    def _seek_out(self, pos: int) -> None:
        if self._out_pos != pos:
            self._out.seek(pos)
            self._out_pos = pos

    def _write_out(self, chunk: bytes | bytearray | memoryview) -> None:
        self._out.write(chunk)
        assert self._out_pos is not None
        self._out_pos += len(chunk)


def write_image(
    root: Inode,
    area: ImageDataArea,
    *,
    build_time: int = 0,
    uuid: bytes = bytes(16),
    volume_name: bytes = b"",
    feature_incompat: int = 0,
    u1: int = 0,
    compr_cfgs: bytes = b"",
    on_planned: Callable[[bytes, int], object] | None = None,
) -> int:
    """Append the metadata for ``root`` to ``area``'s output and finish the image.

    ``on_planned(block0, data_end)`` is called once the layout is planned, before the metadata
    is written: ``block0`` is the image's final first block and the output's bytes from 4096 up
    to ``data_end`` are final and flushed (the file data); everything after is written later,
    each byte once and in increasing order of offset, so that from then on every byte below
    the file's size is final, up to block 0, written last. It lets the caller hash (and send)
    the image while its metadata is still being written.

    ``build_time`` becomes the superblock epoch; inodes whose mtime is exactly that second
    (with 0 ns) are compact, the others extended (§4.6). Returns the image size in bytes; the
    output file is truncated to exactly that length. ``feature_incompat`` and ``u1`` are the
    superblock fields a compressed data area needs (zwriter.py; 0 for raw images), and
    ``compr_cfgs`` its config records. Raises
    ErofsFormatError, naming the path, for anything EROFS cannot hold (e.g. an xattr outside
    the user./trusted./security./ACL namespaces, a device number beyond 12:20 bits, a name
    longer than 255 bytes).
    """
    if not -(1 << 63) <= build_time < (1 << 63):
        raise ErofsFormatError(f"build time {build_time} does not fit the signed 64-bit epoch")
    if len(uuid) != 16:
        raise ErofsFormatError(f"the volume UUID must be 16 bytes, not {len(uuid)}")
    if len(volume_name) > 15 or b"\0" in volume_name:
        # §2.1: older kernels want a NUL within the 16 bytes.
        raise ErofsFormatError("the volume name must be at most 15 bytes without NUL")
    area.resolve(root)
    plan = plan_layout(root, data_end_block=area.next_block, build_time=build_time, area_token=area.token)
    area.seal()
    out = area.out
    out.flush()
    sb = fmt.Superblock(
        feature_compat=fmt.WRITER_COMPAT, blkszbits=fmt.BLOCK_SIZE_BITS, root_nid=plan.root_nid,
        inos=plan.inode_count, epoch=build_time, fixed_nsec=0, blocks=plan.total_blocks,
        meta_blkaddr=plan.meta_blkaddr, uuid=bytes(uuid), volume_name=volume_name.ljust(16, b"\0"),
        feature_incompat=feature_incompat | (fmt.INCOMPAT_CHUNKED_FILE if plan.chunked else 0), u1=u1,
    )
    block0 = bytearray(_BLKSZ)  # bytes before 1024 and after the superblock stay zero (§1, §2.1)
    cfgs_at = fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size  # §5.4.7: compression configs follow it
    block0[cfgs_at:cfgs_at + len(compr_cfgs)] = compr_cfgs
    fmt.seal_block0(block0, sb)
    if on_planned is not None:
        on_planned(bytes(block0), area.next_block * _BLKSZ)
    _write_metadata(out, plan, area)
    _write_extra_blocks(out, plan, area)
    out.seek(0)
    out.write(block0)
    size = plan.total_blocks * _BLKSZ
    out.truncate(size)
    out.flush()
    return size


def _write_metadata(out: BinaryIO, plan: Plan, area: ImageDataArea) -> None:
    """Inodes, xattr bodies and inline tails, by increasing offset, in large sequential writes (§11.6).

    This is the writer's per-inode loop, so it avoids per-inode allocations: each item is
    packed (``Struct.pack_into``) and copied straight into a zero-filled chunk of the metadata
    area at its offset, so the padding between items (§3) needs no work at all, and a chunk is
    written once it is complete. Dirents are packed from columns (``fmt.pack_dirents``).
    """
    nodes = plan.nodes
    nid = plan.nid
    offset = plan.offset
    extended = plan.extended
    layout = plan.layout
    size = plan.size
    i_u = plan.i_u
    nlink = plan.nlink
    xattr_col = plan.xattr_body
    inline_len = plan.inline_len
    kinds = [node.kind for node in nodes]  # NodeKind values are the dirent file_types (§6.1)
    ifmt = S_IFMT_BY_KIND
    pack_compact = fmt.COMPACT_INODE.pack_into
    pack_extended = fmt.EXTENDED_INODE.pack_into
    read_tail = area.read_tail
    reg, dir_kind = NodeKind.REG, NodeKind.DIR
    header = fmt.XATTR_IBODY_HEADER_SIZE
    end = plan.meta_end_block * _BLKSZ
    chunk_start = plan.meta_start_block * _BLKSZ  # absolute offset of chunk[0]
    chunk = bytearray(min(FLUSH_AT, end - chunk_start))
    out.seek(chunk_start)
    for i in plan.order:
        pos = offset[i] - chunk_start
        while pos >= len(chunk):  # the item starts after this chunk: write it, start the next
            out.write(chunk)
            chunk_start += len(chunk)
            pos = offset[i] - chunk_start
            chunk = bytearray(min(FLUSH_AT, end - chunk_start))
        node = nodes[i]
        xattr_body = xattr_col[i]
        tail_len = inline_len[i]
        head = (fmt.EXTENDED_INODE_SIZE if extended[i] else fmt.COMPACT_INODE_SIZE) + len(xattr_body)
        if pos + head + tail_len > len(chunk):  # the item runs past the chunk: grow it (zeros)
            chunk += bytes(pos + head + tail_len - len(chunk))
        icount = (len(xattr_body) - header) // 4 + 1 if xattr_body else 0  # §8.1
        mode = ifmt[kinds[i]] | (node.mode & 0o7777)  # node.st_mode without a property call
        if extended[i]:  # §4.3, fields in fmt.EXTENDED_INODE order
            pack_extended(chunk, pos, 1 | layout[i] << 1, icount, mode, 0, size[i], i_u[i], i + 1,
                          node.uid, node.gid, node.mtime_sec, node.mtime_nsec, nlink[i])
        else:  # §4.2; i_mtime (0x0C) is 0: the superblock time applies
            pack_compact(chunk, pos, layout[i] << 1, icount, mode, nlink[i], size[i], 0, i_u[i], i + 1,
                         node.uid, node.gid)
        if xattr_body:
            chunk[pos + head - len(xattr_body):pos + head] = xattr_body
        if tail_len:
            kind = kinds[i]
            tail: bytes | memoryview
            if kind is reg:
                ref = node.data
                if isinstance(ref, ChunkRef):
                    tail = ref.block_map  # the chunk map follows the inode and its xattrs (fs/erofs/data.c)
                else:
                    assert isinstance(ref, BlockRef)
                    tail = read_tail(ref)
                    if ref.z_layout:
                        pad = -len(xattr_body) % 8  # §5.4.1: the map header is 8-byte aligned
                        if ref.z_layout == fmt.LAYOUT_COMPRESSED_COMPACT:  # §5.4.3: packed here, where ebase is known
                            tail = to_compact(tail, size=size[i], ebase=offset[i] + head + pad + fmt.Z_MAP_HEADER_SIZE)
                        if pad:
                            tail = bytes(pad) + bytes(tail)
            elif kind is dir_kind:
                tail = _dir_block(plan, i, len(plan.dirs[i][1]) - 1, nid, kinds)
            else:
                tail = node.target  # §7.1 fast symlink
            if len(tail) != tail_len:
                raise ErofsFormatError(f"{plan.path_of(i)}: inline tail has {len(tail)} bytes, "
                                       f"expected {tail_len}")
            chunk[pos + head:pos + head + tail_len] = tail
    if chunk_start + len(chunk) < end:
        chunk += bytes(end - chunk_start - len(chunk))
    out.write(memoryview(chunk)[:end - chunk_start])


def _dir_block(plan: Plan, index: int, block: int, nid: list[int], kinds: list[NodeKind]) -> bytes:
    """The bytes of directory block ``block`` of directory ``index`` (unpadded), §6.2."""
    names, targets = plan.dir_entries(index, block)
    return fmt.pack_dirents(names, [nid[t] for t in targets], [kinds[t] for t in targets])


def _write_extra_blocks(out: BinaryIO, plan: Plan, area: ImageDataArea) -> None:
    """Blocks allocated after the metadata, in allocation (inode) order (§5.1, §6.2, §7.1)."""
    pos = plan.meta_end_block * _BLKSZ
    out.seek(pos)
    buf = bytearray()
    kinds = [node.kind for node in plan.nodes]
    for i, count in plan.extra_blocks.items():
        assert plan.i_u[i] * _BLKSZ == pos + len(buf), "extra blocks must be written in allocation order"
        node = plan.nodes[i]
        if kinds[i] is NodeKind.DIR:
            for b in range(count):  # FLAT_PLAIN: all blocks; FLAT_INLINE: all but the last
                blk = _dir_block(plan, i, b, plan.nid, kinds)
                buf += blk
                buf += bytes(_BLKSZ - len(blk))
        elif kinds[i] is NodeKind.LNK:
            buf += node.target
            buf += bytes(_BLKSZ - len(node.target))
        else:  # a regular file whose tail could not be inline (§5.2 FLAT_PLAIN fallback)
            ref = node.data
            assert isinstance(ref, BlockRef)
            out.write(buf)
            pos += len(buf)
            buf = bytearray()
            pos = _copy_file_blocks(out, ref, area, pos)
        if len(buf) >= FLUSH_AT:
            out.write(buf)
            pos += len(buf)
            buf = bytearray()
    out.write(buf)


def _copy_file_blocks(out: BinaryIO, ref: BlockRef, area: ImageDataArea, pos: int) -> int:
    """Copy a file's data-area blocks plus its padded tail to ``pos`` (FLAT_PLAIN fallback, §5.2)."""
    src = ref.start_block * _BLKSZ
    remaining = ref.full_blocks * _BLKSZ
    while remaining:
        n = min(COPY_CHUNK, remaining)
        out.seek(src)
        chunk = out.read(n)
        if len(chunk) != n:
            raise ErofsFormatError("copying file blocks: the data area is truncated")
        out.seek(pos)
        out.write(chunk)
        src += n
        pos += n
        remaining -= n
    tail = area.read_tail(ref)
    out.seek(pos)
    out.write(tail)
    out.write(bytes(_BLKSZ - len(tail)))
    return pos + _BLKSZ
