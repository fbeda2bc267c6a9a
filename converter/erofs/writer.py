"""Pure-Python writer of uncompressed EROFS images, streaming and data-first (spec §3, §11).

Usage::

    with open(path, "w+b") as out, ImageDataArea(out) as area:
        ... normalise the layer, passing ``area`` as the DataSink ...
        size = write_image(root, area, build_time=T)

``ImageDataArea`` writes each regular file's full blocks straight into the output from block 1
on while the tar streams, and spools the sub-block tails to a temporary file. ``write_image``
plans the metadata (``layout.py``, no I/O), appends it after the data blocks, appends blocks
that depend on NIDs (directory blocks, long symlinks, files whose tail does not fit inline),
and writes the superblock last with its CRC32C. The output depends only on the tree and the
file contents, so equal inputs give byte-identical images. The images use only what Linux 5.4
mounts: 4 KiB blocks, compact/extended inodes, FLAT_PLAIN/FLAT_INLINE, inline xattrs with
short prefixes, incompat 0 (§2.2 "writer profile").
"""

from __future__ import annotations

import os
import tempfile
from types import TracebackType
from typing import BinaryIO

from converter.erofs import format as fmt
from converter.erofs.layout import MAX_INLINE_TAIL, BlockRef, Plan, PlannedInode, path_of, plan_layout
from converter.errors import ErofsFormatError, LayerError
from converter.layers.model import FileData, Inode, NodeKind

__all__ = ["BlockRef", "ImageDataArea", "write_image"]

COPY_CHUNK = 1 << 20  # bytes per read/write when streaming file contents
FLUSH_AT = 4 << 20  # metadata is written in buffers of about this size
_BLKSZ = fmt.BLOCK_SIZE


class ImageDataArea:
    """The DataSink of the pure-Python writer: file blocks go straight into the image.

    Full blocks of each file are written at the next free block of ``out`` (from block 1; block
    0 is the superblock's), consecutively per file (§5.1). The ``size % 4096`` tail goes to a
    temporary spool so it can be inlined after its inode later (§5.2); a tail too long to ever
    be inline (> 4064 bytes) is written zero-padded right after the file's blocks instead.
    Memory use does not depend on file sizes.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._spool: BinaryIO = tempfile.TemporaryFile(prefix="erofs-tails-")  # noqa: SIM115
        self._spool_end = 0
        self._next_block = 1
        self._out_pos: int | None = None  # where ``out`` is positioned, if we know
        self._sealed = False
        self._token = id(self)

    # -- DataSink -----------------------------------------------------------------------------

    def add(self, data: FileData, size: int) -> BlockRef:
        """Store one regular file of exactly ``size`` bytes; return where it went.

        Raises LayerError if ``data`` yields fewer or more than ``size`` bytes; nothing of that
        file is kept then.
        """
        if self._sealed:
            raise ErofsFormatError("adding file data: the image was already written")
        if size < 0:
            raise LayerError(f"file size {size} is negative")
        full = size // _BLKSZ
        tail = size - full * _BLKSZ
        tail_in_block = tail > MAX_INLINE_TAIL
        start = self._next_block if (full or tail_in_block) else 0
        block_bytes = full * _BLKSZ
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
                    self._put_tail(chunk, tail_in_block)
                elif got + n <= block_bytes:
                    self._write_out(chunk)
                else:
                    split = block_bytes - got
                    view = memoryview(chunk)
                    self._write_out(view[:split])
                    self._put_tail(view[split:], tail_in_block)
                got += n
            if got != size:
                raise LayerError("file data shorter than its header says")
        except BaseException:
            self._out_pos = None  # unknown now; the blocks will be overwritten
            self._spool.seek(self._spool_end)
            self._spool.truncate()
            raise
        if tail_in_block:
            self._write_out(bytes(_BLKSZ - tail))  # §5.1: last block zero-padded
        ref = BlockRef(
            size=size, start_block=start, full_blocks=full,
            tail_offset=self._spool_end, tail_len=0 if tail_in_block else tail,
            tail_in_block=tail_in_block, area_token=self._token,
        )
        if not tail_in_block:
            self._spool_end += tail
        self._next_block += full + (1 if tail_in_block else 0)
        if self._next_block >= fmt.MAX_BLOCKS:
            raise ErofsFormatError("file data exceeds the 16 TiB that 32-bit block addresses reach")
        return ref

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

    def seal(self) -> None:
        """No more files: flush the spool so tails can be read back."""
        self._sealed = True
        self._spool.flush()

    def read_tail(self, ref: BlockRef) -> bytes:
        """The spooled tail of ``ref`` (exactly ``ref.tail_len`` bytes)."""
        data = os.pread(self._spool.fileno(), ref.tail_len, ref.tail_offset)
        if len(data) != ref.tail_len:
            raise ErofsFormatError("reading a spooled file tail: the spool is truncated")
        return data

    def close(self) -> None:
        """Drop the tail spool (the output file stays open: it belongs to the caller)."""
        self._spool.close()

    def __enter__(self) -> ImageDataArea:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _seek_out(self, pos: int) -> None:
        if self._out_pos != pos:
            self._out.seek(pos)
            self._out_pos = pos

    def _write_out(self, chunk: bytes | memoryview) -> None:
        self._out.write(chunk)
        assert self._out_pos is not None
        self._out_pos += len(chunk)

    def _put_tail(self, chunk: bytes | memoryview, tail_in_block: bool) -> None:
        if tail_in_block:
            self._write_out(chunk)
        else:
            self._spool.write(chunk)


def write_image(
    root: Inode,
    area: ImageDataArea,
    *,
    build_time: int = 0,
    uuid: bytes = bytes(16),
    volume_name: bytes = b"",
) -> int:
    """Append the metadata for ``root`` to ``area``'s output and finish the image.

    ``build_time`` becomes the superblock epoch; inodes whose mtime is exactly that second
    (with 0 ns) are compact, the others extended (§4.6). Returns the image size in bytes; the
    output file is truncated to exactly that length. Raises ErofsFormatError, naming the path,
    for anything EROFS cannot hold (e.g. an xattr outside the user./trusted./security./ACL
    namespaces, a device number beyond 12:20 bits, a name longer than 255 bytes).
    """
    if not -(1 << 63) <= build_time < (1 << 63):
        raise ErofsFormatError(f"build time {build_time} does not fit the signed 64-bit epoch")
    if len(uuid) != 16:
        raise ErofsFormatError(f"the volume UUID must be 16 bytes, not {len(uuid)}")
    if len(volume_name) > 15 or b"\0" in volume_name:
        # §2.1: older kernels want a NUL within the 16 bytes.
        raise ErofsFormatError("the volume name must be at most 15 bytes without NUL")
    plan = plan_layout(root, data_end_block=area.next_block, build_time=build_time, area_token=area.token)
    area.seal()
    out = area.out
    out.flush()
    _write_metadata(out, plan, area)
    _write_extra_blocks(out, plan, area)

    sb = fmt.Superblock(
        feature_compat=fmt.WRITER_COMPAT, blkszbits=fmt.BLOCK_SIZE_BITS, root_nid=plan.root_nid,
        inos=len(plan.inodes), epoch=build_time, fixed_nsec=0, blocks=plan.total_blocks,
        meta_blkaddr=plan.meta_blkaddr, uuid=bytes(uuid), volume_name=volume_name.ljust(16, b"\0"),
    )
    block0 = bytearray(_BLKSZ)  # bytes before 1024 and after the superblock stay zero (§1, §2.1)
    fmt.seal_block0(block0, sb)
    out.seek(0)
    out.write(block0)
    size = plan.total_blocks * _BLKSZ
    out.truncate(size)
    out.flush()
    return size


def _pack_inode(p: PlannedInode) -> bytes:
    icount = fmt.xattr_icount(len(p.xattr_body))
    node = p.node
    if p.extended:
        return fmt.pack_extended_inode(
            layout=p.layout, icount=icount, mode=p.st_mode, nlink=p.nlink, size=p.size, i_u=p.i_u,
            ino=p.ino, uid=node.uid, gid=node.gid, mtime=node.mtime_sec, mtime_nsec=node.mtime_nsec,
        )
    return fmt.pack_compact_inode(
        layout=p.layout, icount=icount, mode=p.st_mode, nlink=p.nlink, size=p.size, i_u=p.i_u,
        ino=p.ino, uid=node.uid, gid=node.gid,
    )


def _dir_block(plan: Plan, p: PlannedInode, block: int) -> bytes:
    """The bytes of directory block ``block`` of ``p`` (unpadded), §6.2."""
    assert p.entries is not None and p.block_counts is not None
    first = sum(p.block_counts[:block])
    inodes = plan.inodes
    entries = [
        (name, inodes[ci].nid, int(inodes[ci].kind))
        for name, ci in p.entries[first:first + p.block_counts[block]]
    ]
    return fmt.pack_dirent_block(entries)


def _inline_tail(plan: Plan, p: PlannedInode, area: ImageDataArea) -> bytes:
    if p.kind is NodeKind.REG:
        assert p.ref is not None
        return area.read_tail(p.ref)
    if p.kind is NodeKind.DIR:
        assert p.block_counts is not None
        return _dir_block(plan, p, len(p.block_counts) - 1)
    return p.node.target  # §7.1 fast symlink


def _write_metadata(out: BinaryIO, plan: Plan, area: ImageDataArea) -> None:
    """Inodes, xattr bodies and inline tails, in NID order, in large sequential writes (§11.6)."""
    buf_start = plan.meta_start_block * _BLKSZ
    buf = bytearray()
    out.seek(buf_start)
    for i, p in enumerate(plan.inodes):
        gap = p.offset - buf_start - len(buf)
        if gap:
            buf += bytes(gap)  # zero padding between 32-byte slots and at block ends (§3)
        buf += _pack_inode(p)
        buf += p.xattr_body
        if p.inline_len:
            tail = _inline_tail(plan, p, area)
            if len(tail) != p.inline_len:
                raise ErofsFormatError(f"{path_of(plan.inodes, i)}: inline tail has {len(tail)} bytes, "
                                       f"expected {p.inline_len}")
            buf += tail
        if len(buf) >= FLUSH_AT:
            out.write(buf)
            buf_start += len(buf)
            buf = bytearray()
    end = plan.meta_end_block * _BLKSZ
    buf += bytes(end - buf_start - len(buf))
    out.write(buf)


def _write_extra_blocks(out: BinaryIO, plan: Plan, area: ImageDataArea) -> None:
    """Blocks allocated after the metadata, in allocation (inode) order (§5.1, §6.2, §7.1)."""
    pos = plan.meta_end_block * _BLKSZ
    out.seek(pos)
    buf = bytearray()
    for p in plan.inodes:
        if not p.extra_blocks:
            continue
        assert p.i_u * _BLKSZ == pos + len(buf), "extra blocks must be written in allocation order"
        if p.kind is NodeKind.DIR:
            assert p.block_counts is not None
            nblocks = p.extra_blocks  # FLAT_PLAIN: all blocks; FLAT_INLINE: all but the last
            for b in range(nblocks):
                blk = _dir_block(plan, p, b)
                buf += blk
                buf += bytes(_BLKSZ - len(blk))
        elif p.kind is NodeKind.LNK:
            target = p.node.target
            buf += target
            buf += bytes(_BLKSZ - len(target))
        else:
            assert p.copy_blocks and p.ref is not None
            out.write(buf)
            pos += len(buf)
            buf = bytearray()
            pos = _copy_file_blocks(out, p.ref, area, pos)
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
    out.write(tail + bytes(_BLKSZ - len(tail)))
    return pos + _BLKSZ
