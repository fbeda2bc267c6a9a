"""A verifying reader of EROFS images: superblock, inodes, directories, xattrs, uncompressed data.

It exists to check what the writers (ours and mkfs.erofs) produce, so it reads everything
linearly and is strict: every structural problem in the image (bad magic or checksum, unknown
incompat features, offsets past the end, broken dirents, mis-sorted directories, directory
cycles) raises ErofsFormatError, never another exception and never a hang. Compressed files
(mkfs.erofs -z...) are decoded extent by extent through ``zmap`` and ``decompress``.

Paths are ``str`` or ``bytes``, "/"-separated, absolute or relative to the root; an ``int``
is taken as a NID. Lookups do not follow symlinks (lstat semantics). A path that does not exist
raises FileNotFoundError (NotADirectoryError for a non-directory in the middle): those are
questions about the tree, not corruption.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, NamedTuple

from converter.erofs import format as fmt
from converter.erofs.decompress import Algorithm, decompress, strip_padding
from converter.erofs.zmap import Extent, ExtentMap, Location
from converter.errors import ErofsFormatError, ErofsUnsupported

PathArg = str | bytes | int

_S64_LIMIT = 1 << 63
_MAX_CACHED_INODES = 1 << 16
_MAX_CACHED_DIRS = 256
_ZEROS = bytes(1 << 20)


@dataclass(frozen=True, slots=True)
class Stat:
    """What the reader knows about one inode (the fields a kernel ``lstat`` shows, plus a few)."""

    nid: int
    st_mode: int
    uid: int
    gid: int
    size: int
    mtime_sec: int
    mtime_nsec: int
    nlink: int
    rdev_major: int = 0
    rdev_minor: int = 0
    ino: int = 0  # the on-disk i_ino (§4.5); the kernel's st_ino is the NID
    layout: int = fmt.LAYOUT_FLAT_PLAIN
    extended: bool = False

    @property
    def file_type(self) -> int:
        """The dirent file_type code (§6.1) of this inode's mode."""
        return fmt.FILE_TYPE_BY_IFMT[self.st_mode & fmt.S_IFMT]

    @property
    def is_dir(self) -> bool:
        return self.st_mode & fmt.S_IFMT == fmt.S_IFDIR


class DirEntry(NamedTuple):
    """One directory entry as stored (§6.1)."""

    name: bytes
    nid: int
    file_type: int


@dataclass(frozen=True, slots=True)
class _RawInode:
    nid: int
    offset: int  # absolute byte offset
    extended: bool
    layout: int
    icount: int
    mode: int
    nlink: int
    size: int
    i_u: int
    ino: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int

    @property
    def inode_size(self) -> int:
        return fmt.EXTENDED_INODE_SIZE if self.extended else fmt.COMPACT_INODE_SIZE

    @property
    def xattr_size(self) -> int:
        return fmt.xattr_ibody_size(self.icount)

    @property
    def body_end(self) -> int:
        """Where inline data / chunk arrays start looking: after the inode and its xattrs."""
        return self.offset + self.inode_size + self.xattr_size

    @property
    def ifmt(self) -> int:
        return self.mode & fmt.S_IFMT


# (absolute byte offset or None for a hole, length)
_Extent = tuple[int | None, int]


class ErofsImage:
    """An EROFS image opened on a seekable binary file.

    ``ErofsImage(f)`` leaves ``f`` open on close; ``ErofsImage.open(path)`` owns its file.
    Both are context managers.
    """

    def __init__(self, f: BinaryIO, *, verify_checksum: bool = True) -> None:
        self._f = f
        self._owned = False
        try:
            f.seek(0, os.SEEK_END)
            self._file_size = f.tell()
        except (OSError, ValueError) as exc:
            raise ErofsFormatError(f"opening the image: the file is not seekable: {exc}") from exc
        self._inodes: dict[int, _RawInode] = {}
        self._dirs: dict[int, list[DirEntry]] = {}
        self._long_prefixes: list[bytes] | None = None
        self._reading_packed: set[int] = set()
        self.superblock = self._read_superblock(verify_checksum)
        sb = self.superblock
        self.block_size = sb.block_size
        self._meta_base = sb.meta_blkaddr * self.block_size
        # §2.1: with DEVICE_TABLE the chunk device_id is masked by the number of devices.
        self._device_id_mask = (1 << sb.extra_devices.bit_length()) - 1 if sb.extra_devices else 0
        root = self._inode(self.root_nid)
        if root.ifmt != fmt.S_IFDIR:
            raise ErofsFormatError(f"the root inode (NID {self.root_nid}) is not a directory")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify_checksum: bool = True) -> ErofsImage:
        """Open the image file at ``path``; use as ``with ErofsImage.open(p) as img:``."""
        f = open(path, "rb")  # noqa: SIM115 - owned by the returned object
        try:
            img = cls(f, verify_checksum=verify_checksum)
        except BaseException:
            f.close()
            raise
        img._owned = True
        return img

    def close(self) -> None:
        if self._owned:
            self._f.close()

    def __enter__(self) -> ErofsImage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def root_nid(self) -> int:
        return self.superblock.root_nid

    # -- public API ---------------------------------------------------------------------------

    def stat(self, path: PathArg) -> Stat:
        """lstat ``path``."""
        return self._stat(self._inode(self._resolve(path)))

    def listdir(self, path: PathArg) -> list[DirEntry]:
        """The entries of a directory in on-disk (sorted) order, without "." and ".."."""
        return [e for e in self.dirents(path) if e.name not in (b".", b"..")]

    def dirents(self, path: PathArg) -> list[DirEntry]:
        """All entries of a directory, "." and ".." included, as stored (§6.2)."""
        return list(self._dirents(self._inode(self._resolve(path))))

    def readlink(self, path: PathArg) -> bytes:
        """The target of a symlink (§7.1)."""
        raw = self._inode(self._resolve(path))
        if raw.ifmt != fmt.S_IFLNK:
            raise OSError(22, "not a symlink", self._show(path))
        if not 0 < raw.size < 4096:
            raise ErofsFormatError(f"symlink NID {raw.nid}: target length {raw.size} is not 1..4095")
        return b"".join(self._iter_data(raw, 4096))

    def xattrs(self, path: PathArg) -> dict[str, bytes]:
        """All xattrs the kernel would list, shared and inline, long prefixes resolved (§8)."""
        return self._xattrs(self._inode(self._resolve(path)))

    def read_file(self, path: PathArg, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The contents of a regular file (or any uncompressed inode) as chunks.

        Checks the layout eagerly (so a compressed file raises here, not on the first chunk);
        bytes are read lazily. Holes read as zeros.
        """
        raw = self._inode(self._resolve(path))
        if raw.ifmt == fmt.S_IFDIR:
            raise IsADirectoryError(21, "is a directory", self._show(path))
        return self._iter_data(raw, chunk_size, self._show(path))

    def read_bytes(self, path: PathArg) -> bytes:
        """The whole contents of a file (for small files)."""
        return b"".join(self.read_file(path))

    def walk(self) -> Iterator[tuple[bytes, Stat]]:
        """Every inode reachable from the root, depth-first in dirent order: (path, Stat).

        Paths are absolute bytes; the root is b"/". Hard links appear under each name. A
        directory reachable twice (cycle or hard-linked directory) raises ErofsFormatError.
        """
        root = self._inode(self.root_nid)
        yield b"/", self._stat(root)
        seen = {root.nid}
        stack: list[tuple[bytes, Iterator[DirEntry]]] = [(b"", iter(self._dirents(root)))]
        while stack:
            prefix, it = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                continue
            if entry.name in (b".", b".."):
                continue
            raw = self._inode(entry.nid)
            st = self._stat(raw)
            if entry.file_type != fmt.FT_UNKNOWN and entry.file_type != st.file_type:
                raise ErofsFormatError(
                    f"dirent {self._decode(prefix + b'/' + entry.name)} says file type {entry.file_type}, "
                    f"but NID {entry.nid} is type {st.file_type}"
                )
            path = prefix + b"/" + entry.name
            yield path, st
            if raw.ifmt == fmt.S_IFDIR:
                if raw.nid in seen:
                    raise ErofsFormatError(f"directory NID {raw.nid} is reachable twice (at {self._decode(path)})")
                seen.add(raw.nid)
                stack.append((path, iter(self._dirents(raw))))

    # -- superblock ---------------------------------------------------------------------------

    def _read_superblock(self, verify_checksum: bool) -> fmt.Superblock:
        if self._file_size < fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size:
            raise ErofsFormatError(f"reading the superblock: the image is only {self._file_size} bytes")
        sb = fmt.Superblock.unpack(self._read(fmt.SUPERBLOCK_OFFSET, fmt.SUPERBLOCK.size))
        if sb.magic != fmt.EROFS_MAGIC:
            raise ErofsFormatError(f"not an EROFS image: magic {sb.magic:#010x} at byte 1024")
        if not fmt.MIN_BLOCK_SIZE_BITS <= sb.blkszbits <= fmt.MAX_BLOCK_SIZE_BITS:
            raise ErofsFormatError(f"unsupported block size 2^{sb.blkszbits}")
        unknown = sb.feature_incompat & ~fmt.READER_INCOMPAT
        if unknown:
            raise ErofsFormatError(f"the image uses incompatible features {unknown:#x} this reader does not know")
        if sb.dirblkbits:
            raise ErofsFormatError(f"unsupported directory block size bits {sb.dirblkbits}")  # §2.1
        if verify_checksum and sb.feature_compat & fmt.COMPAT_SB_CHKSUM:
            length = fmt.checksum_length(sb.blkszbits)
            region = self._read(fmt.SUPERBLOCK_OFFSET, length)
            crc = fmt.superblock_crc(region)
            if crc != sb.checksum:
                raise ErofsFormatError(
                    f"superblock checksum mismatch: stored {sb.checksum:#010x}, computed {crc:#010x}"
                )
        return sb

    # -- low level ----------------------------------------------------------------------------

    def _read(self, off: int, n: int) -> bytes:
        if off < 0 or n < 0 or off + n > self._file_size:
            raise ErofsFormatError(
                f"reading {n} bytes at offset {off}: outside the image ({self._file_size} bytes)"
            )
        self._f.seek(off)
        data = self._f.read(n)
        if len(data) != n:
            raise ErofsFormatError(f"reading {n} bytes at offset {off}: the image is truncated")
        return data

    @staticmethod
    def _decode(path: bytes) -> str:
        return path.decode("utf-8", "backslashreplace")

    def _show(self, path: PathArg) -> str:
        if isinstance(path, int):
            return f"NID {path}"
        return path if isinstance(path, str) else self._decode(path)

    def _inode(self, nid: int) -> _RawInode:
        cached = self._inodes.get(nid)
        if cached is not None:
            return cached
        if nid < 0 or nid >= _S64_LIMIT:
            raise ErofsFormatError(f"NID {nid} is out of range")
        off = self._meta_base + (nid << fmt.SLOT_BITS)
        head = self._read(off, fmt.COMPACT_INODE_SIZE)
        i_format, icount, mode = fmt.INODE_HEAD.unpack_from(head)
        if i_format & ~0xF:
            raise ErofsFormatError(f"inode NID {nid}: unsupported i_format {i_format:#x}")  # §4.1
        layout = (i_format >> 1) & 0x7
        if layout > fmt.LAYOUT_CHUNK_BASED:
            raise ErofsFormatError(f"inode NID {nid}: unknown data layout {layout}")
        if i_format & 1:
            raw = self._read(off, fmt.EXTENDED_INODE_SIZE)
            (_, _, _, _, size, i_u, ino, uid, gid, mtime, nsec, nlink) = fmt.EXTENDED_INODE.unpack(raw)
            extended = True
        else:
            (_, _, _, nlink, size, mtime_off, i_u, ino, uid, gid) = fmt.COMPACT_INODE.unpack(head)
            # §4.5: compact inodes carry the superblock time (mainline adds the u32 at 0x0C).
            mtime = self.superblock.epoch + mtime_off
            nsec = self.superblock.fixed_nsec
            extended = False
        if mode & fmt.S_IFMT not in fmt.FILE_TYPE_BY_IFMT:
            raise ErofsFormatError(f"inode NID {nid}: bogus i_mode {mode:#o}")
        if size >= _S64_LIMIT:
            raise ErofsFormatError(f"inode NID {nid}: negative i_size")
        inode = _RawInode(nid=nid, offset=off, extended=extended, layout=layout, icount=icount, mode=mode,
                          nlink=nlink, size=size, i_u=i_u, ino=ino, uid=uid, gid=gid, mtime=mtime,
                          mtime_nsec=nsec)
        if len(self._inodes) >= _MAX_CACHED_INODES:
            self._inodes.clear()
        self._inodes[nid] = inode
        return inode

    def _stat(self, raw: _RawInode) -> Stat:
        major = minor = 0
        if raw.ifmt in (fmt.S_IFCHR, fmt.S_IFBLK):
            major, minor = fmt.decode_rdev(raw.i_u)
        return Stat(nid=raw.nid, st_mode=raw.mode, uid=raw.uid, gid=raw.gid, size=raw.size,
                    mtime_sec=raw.mtime, mtime_nsec=raw.mtime_nsec, nlink=raw.nlink, rdev_major=major,
                    rdev_minor=minor, ino=raw.ino, layout=raw.layout, extended=raw.extended)

    # -- data (§5) ----------------------------------------------------------------------------

    def _check_blocks(self, where: str, start: int, length: int) -> int:
        off = start * self.block_size
        if off + length > self._file_size:
            raise ErofsFormatError(f"{where}: data at block {start} (+{length} bytes) is past the end of the image")
        return off

    def _extents(self, raw: _RawInode, where: str = "") -> Iterator[_Extent]:
        """Where the bytes of ``raw`` are, in file order; layout problems raise here, eagerly."""
        bs = self.block_size
        size = raw.size
        layout = raw.layout
        where = where or f"inode NID {raw.nid}"
        if layout in fmt.COMPRESSED_LAYOUTS:
            raise ErofsFormatError(f"{where} is compressed; mount it to read its contents")
        if size == 0:
            return iter(())
        if layout == fmt.LAYOUT_FLAT_PLAIN:
            if raw.i_u == fmt.NULL_ADDR:  # §4.4 reader rule: no blocks, reads as zeros
                return iter([(None, size)])
            return iter([(self._check_blocks(where, raw.i_u, size), size)])
        if layout == fmt.LAYOUT_FLAT_INLINE:
            nblocks = (size + bs - 1) // bs
            full = nblocks - 1
            tail = size - full * bs
            pos = raw.body_end
            if pos % bs + tail > bs:  # §5.2 condition 2
                raise ErofsFormatError(f"{where}: inline data crosses a block boundary")
            extents: list[_Extent] = []
            if full:
                extents.append((self._check_blocks(where, raw.i_u, full * bs), full * bs))
            if pos + tail > self._file_size:
                raise ErofsFormatError(f"{where}: inline data is past the end of the image")
            extents.append((pos, tail))
            return iter(extents)
        return self._chunk_extents(raw, where)

    def _chunk_extents(self, raw: _RawInode, where: str) -> Iterator[_Extent]:
        """§5.3: block map (u32) or chunk indexes (8 bytes), validated before the first chunk."""
        chunk_format = raw.i_u & 0xFFFF
        if chunk_format & ~(fmt.CHUNK_FORMAT_BLKBITS_MASK | fmt.CHUNK_FORMAT_INDEXES):
            raise ErofsFormatError(f"{where}: unsupported chunk format {chunk_format:#x}")
        chunkbits = self.superblock.blkszbits + (chunk_format & fmt.CHUNK_FORMAT_BLKBITS_MASK)
        if chunkbits > 48:
            raise ErofsFormatError(f"{where}: chunk size 2^{chunkbits} is absurd")
        chunk = 1 << chunkbits
        nchunks = (raw.size + chunk - 1) >> chunkbits
        indexes = bool(chunk_format & fmt.CHUNK_FORMAT_INDEXES)
        unit = fmt.CHUNK_INDEX.size if indexes else 4
        start = fmt.align(raw.body_end, unit)
        if start + nchunks * unit > self._file_size:
            raise ErofsFormatError(f"{where}: chunk table is past the end of the image")
        return self._iter_chunks(raw, start, nchunks, chunk, indexes, where)

    def _iter_chunks(self, raw: _RawInode, start: int, nchunks: int, chunk: int, indexes: bool,
                     where: str) -> Iterator[_Extent]:
        unit = 8 if indexes else 4
        batch = 4096
        done = 0
        while done < nchunks:
            n = min(batch, nchunks - done)
            table = self._read(start + done * unit, n * unit)
            for k in range(n):
                i = done + k
                length = min(chunk, raw.size - i * chunk)
                if indexes:
                    hi, device_id, blk = fmt.CHUNK_INDEX.unpack_from(table, k * unit)
                    if hi:
                        raise ErofsFormatError(f"{where}: chunk {i} uses 48-bit addresses")
                    device = device_id & self._device_id_mask
                else:
                    (blk,) = fmt.U32.unpack_from(table, k * unit)
                    device = 0
                if blk == fmt.NULL_ADDR:
                    yield None, length
                elif device:
                    raise ErofsUnsupported(
                        f"{where}: chunk {i} is on extra device {device}, which this reader cannot read"
                    )
                else:
                    yield self._check_blocks(where, blk, length), length
            done += n

    def _iter_data(self, raw: _RawInode, chunk_size: int, where: str = "") -> Iterator[bytes]:
        if raw.layout in fmt.COMPRESSED_LAYOUTS:
            zmap = self._extent_map(raw, where or f"inode NID {raw.nid}")  # header problems raise now
            return self._read_compressed(zmap, max(1, chunk_size))
        extents = self._extents(raw, where)  # raises now for broken layouts
        return self._read_extents(extents, max(1, chunk_size))

    def _read_extents(self, extents: Iterator[_Extent], chunk_size: int) -> Iterator[bytes]:
        for off, length in extents:
            done = 0
            while done < length:
                n = min(chunk_size, length - done)
                if off is None:
                    yield _ZEROS[:n] if n <= len(_ZEROS) else bytes(n)
                else:
                    yield self._read(off + done, n)
                done += n

    # -- compressed data (fs/erofs/erofs_fs.h: z_erofs_map_header, lcluster indexes) ---------------

    def _extent_map(self, raw: _RawInode, where: str) -> ExtentMap:
        sb = self.superblock
        return ExtentMap(self._read, body_end=raw.body_end, compact=raw.layout == fmt.LAYOUT_COMPRESSED_COMPACT,
                         size=raw.size, blkszbits=sb.blkszbits,
                         big_pcluster_ok=bool(sb.feature_incompat & fmt.INCOMPAT_BIG_PCLUSTER), where=where)

    def _read_compressed(self, zmap: ExtentMap, chunk_size: int) -> Iterator[bytes]:
        for ext in zmap.extents():
            data = self._decode_extent(ext, zmap)
            for i in range(0, len(data), chunk_size):
                yield data[i:i + chunk_size]

    def _decode_extent(self, ext: Extent, zmap: ExtentMap) -> bytes:
        where = f"{zmap.where}, extent at byte {ext.la}"
        try:
            if ext.location == Location.FRAGMENT:
                return self._read_packed(ext.offset, ext.length, where)
            stored = self._read(ext.offset, ext.plen)
            if ext.algorithm is None:
                if ext.interlaced:
                    shift = ext.la % self.block_size
                    stored = stored[shift:] + stored[:shift]
                return stored[:ext.length]
            if not self.superblock.feature_incompat & fmt.INCOMPAT_LZ4_0PADDING and ext.algorithm == Algorithm.LZ4:
                raise ErofsUnsupported("LZ4 data without 0PADDING (pre-1.0 mkfs.erofs) is not supported")
            return decompress(ext.algorithm, strip_padding(stored), ext.length, partial=ext.partial)
        except ErofsFormatError as exc:
            raise type(exc)(f"{where}: {exc}") from exc

    def _read_packed(self, offset: int, n: int, where: str) -> bytes:
        """``n`` bytes at ``offset`` of the packed inode (fragments), decoded from its start."""
        if not self.superblock.feature_incompat & fmt.INCOMPAT_FRAGMENTS or not self.superblock.packed_nid:
            raise ErofsFormatError("a fragment, but the image has no packed inode")
        packed = self._inode(self.superblock.packed_nid)
        if packed.layout in fmt.COMPRESSED_LAYOUTS and packed.nid in self._reading_packed:
            raise ErofsFormatError("the packed inode refers to itself")
        self._reading_packed.add(packed.nid)
        try:
            return self._read_range(packed, offset, n)
        finally:
            self._reading_packed.discard(packed.nid)

    def _read_range(self, raw: _RawInode, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` of an inode's contents (long-prefix table, fragments)."""
        if offset + n > raw.size:
            raise ErofsFormatError(f"inode NID {raw.nid}: reading past its size")
        if raw.layout in fmt.COMPRESSED_LAYOUTS:
            out = bytearray()
            pos = 0
            for chunk in self._iter_data(raw, 1 << 20):
                if pos + len(chunk) > offset:
                    out += chunk[max(offset - pos, 0):offset + n - pos]
                pos += len(chunk)
                if len(out) >= n:
                    break
            return bytes(out)
        out = bytearray()
        pos = 0
        for off, length in self._extents(raw):
            if pos + length > offset and len(out) < n:
                lo = max(offset - pos, 0)
                take = min(length - lo, n - len(out))
                out += bytes(take) if off is None else self._read(off + lo, take)
            pos += length
            if len(out) >= n:
                break
        return bytes(out)

    # -- directories (§6) ---------------------------------------------------------------------

    def _dirents(self, raw: _RawInode) -> list[DirEntry]:
        if raw.ifmt != fmt.S_IFDIR:
            raise NotADirectoryError(20, "not a directory", f"NID {raw.nid}")
        cached = self._dirs.get(raw.nid)
        if cached is not None:
            return cached
        bs = self.block_size
        entries: list[DirEntry] = []
        pending = bytearray()
        remaining = raw.size
        for chunk in self._iter_data(raw, bs):
            pending += chunk
            while len(pending) >= bs or (pending and len(pending) == remaining):
                n = min(bs, remaining)
                self._parse_dir_block(raw, bytes(pending[:n]), entries)
                del pending[:n]
                remaining -= n
        if remaining or pending:
            raise ErofsFormatError(f"directory NID {raw.nid}: data ends early")
        names = {e.name: e for e in entries}
        if b"." not in names or b".." not in names:
            raise ErofsFormatError(f"directory NID {raw.nid} lacks '.' or '..'")
        if names[b"."].nid != raw.nid:
            raise ErofsFormatError(f"directory NID {raw.nid}: '.' points to NID {names[b'.'].nid}")
        if len(self._dirs) >= _MAX_CACHED_DIRS:
            self._dirs.clear()
        self._dirs[raw.nid] = entries
        return entries

    def _parse_dir_block(self, raw: _RawInode, block: bytes, entries: list[DirEntry]) -> None:
        """§6.2: dirents first, then their names; the last name ends at a NUL or the valid end."""
        valid = len(block)
        where = f"directory NID {raw.nid}"
        if valid < fmt.DIRENT_SIZE:
            raise ErofsFormatError(f"{where}: directory block of {valid} bytes is too short")
        first_nameoff = fmt.U16.unpack_from(block, 8)[0]
        if first_nameoff < fmt.DIRENT_SIZE or first_nameoff >= self.block_size or first_nameoff > valid:
            raise ErofsFormatError(f"{where}: bogus first nameoff {first_nameoff}")
        count = first_nameoff // fmt.DIRENT_SIZE
        heads = [fmt.DIRENT.unpack_from(block, i * fmt.DIRENT_SIZE) for i in range(count)]
        prev = entries[-1].name if entries else None
        for i, (nid, nameoff, ftype) in enumerate(heads):
            if i + 1 < count:
                end = heads[i + 1][1]
            else:
                nul = block.find(b"\0", nameoff, valid)
                end = valid if nul < 0 else nul
            if nameoff < first_nameoff or end > valid or end - nameoff < 1 or end - nameoff > fmt.MAX_NAME_LEN:
                raise ErofsFormatError(f"{where}: bogus dirent {i} (nameoff {nameoff}, end {end})")
            name = block[nameoff:end]
            if b"/" in name or b"\0" in name:
                raise ErofsFormatError(f"{where}: dirent name {name!r} contains '/' or NUL")
            if ftype >= fmt.FT_MAX:
                raise ErofsFormatError(f"{where}: dirent {name!r} has bogus file type {ftype}")
            # §6.3: strictly ascending raw bytes across all blocks, or kernel lookups fail.
            if prev is not None and name <= prev:
                raise ErofsFormatError(f"{where}: dirent {name!r} is out of order after {prev!r}")
            entries.append(DirEntry(name, nid, ftype))
            prev = name

    def _resolve(self, path: PathArg) -> int:
        if isinstance(path, int):
            return path
        raw_path = os.fsencode(path)
        nid = self.root_nid
        for i, comp in enumerate(raw_path.split(b"/")):
            if comp in (b"", b"."):
                continue
            ino = self._inode(nid)
            if ino.ifmt != fmt.S_IFDIR:
                raise NotADirectoryError(20, "not a directory", self._show(path))
            for entry in self._dirents(ino):
                if entry.name == comp:
                    nid = entry.nid
                    break
            else:
                raise FileNotFoundError(2, f"no such entry (component {i})", self._show(path))
        return nid

    # -- xattrs (§8) --------------------------------------------------------------------------

    def _xattrs(self, raw: _RawInode) -> dict[str, bytes]:
        if raw.icount == 0:
            return {}
        size = raw.xattr_size
        where = f"inode NID {raw.nid}"
        if size <= fmt.XATTR_IBODY_HEADER_SIZE:  # §8.1: header-only areas are rejected
            raise ErofsFormatError(f"{where}: xattr area of {size} bytes is not supported")
        body = self._read(raw.offset + raw.inode_size, size)
        _filter, shared_count = fmt.XATTR_IBODY_HEADER.unpack_from(body)
        pos = fmt.XATTR_IBODY_HEADER_SIZE + 4 * shared_count
        if pos > size:
            raise ErofsFormatError(f"{where}: {shared_count} shared xattr ids overflow the xattr area")
        out: dict[str, bytes] = {}
        if shared_count:
            if self.superblock.feature_compat & fmt.COMPAT_SHARED_EA_IN_METABOX:
                raise ErofsFormatError(f"{where}: shared xattrs in a metabox are not supported")
            base = self.superblock.xattr_blkaddr * self.block_size
            for k in range(shared_count):
                (xid,) = fmt.U32.unpack_from(body, fmt.XATTR_IBODY_HEADER_SIZE + 4 * k)
                off = base + 4 * xid
                nlen, index, vlen = fmt.XATTR_ENTRY.unpack(self._read(off, fmt.XATTR_ENTRY_HEADER_SIZE))
                blob = self._read(off + fmt.XATTR_ENTRY_HEADER_SIZE, nlen + vlen)
                self._add_xattr(out, index, blob[:nlen], blob[nlen:], where)
        while pos < size:
            if size - pos < fmt.XATTR_ENTRY_HEADER_SIZE:
                raise ErofsFormatError(f"{where}: truncated xattr entry")
            nlen, index, vlen = fmt.XATTR_ENTRY.unpack_from(body, pos)
            start = pos + fmt.XATTR_ENTRY_HEADER_SIZE
            end = start + nlen + vlen
            if end > size:
                raise ErofsFormatError(f"{where}: xattr entry runs past the xattr area")
            self._add_xattr(out, index, body[start:start + nlen], body[start + nlen:end], where)
            pos = fmt.align(end, 4)
        return out

    def _add_xattr(self, out: dict[str, bytes], index: int, suffix: bytes, value: bytes, where: str) -> None:
        if index & fmt.XATTR_LONG_PREFIX:
            prefixes = self._load_long_prefixes()
            i = index & fmt.XATTR_LONG_PREFIX_MASK
            if i >= len(prefixes):
                raise ErofsFormatError(f"{where}: xattr uses long prefix {i}, but there are {len(prefixes)}")
            prefix = prefixes[i]
            if not prefix:  # base index without a kernel handler
                return
        else:
            short = fmt.XATTR_PREFIXES.get(index)
            if short is None:  # §8.3: index 0 (unknown namespace), 5 (lustre) and unknown: not listed
                return
            prefix = short
        name = (prefix + suffix).decode("utf-8", "surrogateescape")
        out.setdefault(name, value)  # the kernel's getxattr returns the first match

    def _load_long_prefixes(self) -> list[bytes]:
        """§8.5: the long-prefix table, from the image or the packed inode."""
        if self._long_prefixes is not None:
            return self._long_prefixes
        sb = self.superblock
        count = sb.xattr_prefix_count
        prefixes: list[bytes] = []
        if count:
            if not sb.feature_incompat & fmt.INCOMPAT_XATTR_PREFIXES:
                raise ErofsFormatError("xattr prefix table present without the XATTR_PREFIXES feature")
            pos = sb.xattr_prefix_start * 4
            packed: _RawInode | None = None
            if (not sb.feature_compat & fmt.COMPAT_PLAIN_XATTR_PFX
                    and sb.feature_incompat & fmt.INCOMPAT_FRAGMENTS and sb.packed_nid):
                packed = self._inode(sb.packed_nid)

            def read(off: int, n: int) -> bytes:
                return self._read(off, n) if packed is None else self._read_range(packed, off, n)

            for _ in range(count):
                pos = fmt.align(pos, 4)
                (length,) = fmt.U16.unpack(read(pos, 2))
                if length < 1:
                    raise ErofsFormatError("empty long xattr prefix record")
                record = read(pos + 2, length)
                pos += 2 + length
                base = fmt.XATTR_PREFIXES.get(record[0])
                prefixes.append(b"" if base is None else base + record[1:])
        self._long_prefixes = prefixes
        return prefixes
