"""EROFS on-disk format: constants, struct layouts and pack/unpack helpers (no I/O, no policy).

Comments cite the sections (§) of docs/erofs-format.md, our notes on the kernel's fs/erofs/erofs_fs.h.
All integers are little-endian. The writer (``writer.py``/``layout.py``) and the verifying
reader (``reader.py``) share these definitions so both sides agree on every byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from converter.errors import ErofsFormatError

# --- §1 geometry -------------------------------------------------------------------------------

EROFS_MAGIC = 0xE0F5E1E2
SUPERBLOCK_OFFSET = 1024  # §1: the superblock starts at byte 1024 whatever the block size
BLOCK_SIZE_BITS = 12  # §1: the writer's only block size; mounts everywhere from 5.4 on
BLOCK_SIZE = 1 << BLOCK_SIZE_BITS
MIN_BLOCK_SIZE_BITS = 9  # §1: readers accept 512 B .. 64 KiB (go-erofs' range)
MAX_BLOCK_SIZE_BITS = 16
NULL_ADDR = 0xFFFFFFFF  # §4.4/§5.3: "no block" / hole marker in u32 block fields
MAX_BLOCKS = 1 << 32  # §10: 32-bit block addresses without 48BIT
SLOT_SIZE = 32  # §3: NID unit ("inode slot")
SLOT_BITS = 5

# --- §2.2 feature bits -------------------------------------------------------------------------

COMPAT_SB_CHKSUM = 0x01
COMPAT_MTIME = 0x02
COMPAT_XATTR_FILTER = 0x04
COMPAT_SHARED_EA_IN_METABOX = 0x08
COMPAT_PLAIN_XATTR_PFX = 0x10
COMPAT_ISHARE_XATTRS = 0x20

INCOMPAT_LZ4_0PADDING = 0x001
INCOMPAT_COMPR_CFGS = 0x002  # also BIG_PCLUSTER
INCOMPAT_BIG_PCLUSTER = 0x002
INCOMPAT_CHUNKED_FILE = 0x004
INCOMPAT_DEVICE_TABLE = 0x008  # also COMPR_HEAD2
INCOMPAT_ZTAILPACKING = 0x010
INCOMPAT_FRAGMENTS = 0x020  # also DEDUPE
INCOMPAT_XATTR_PREFIXES = 0x040
INCOMPAT_48BIT = 0x080
INCOMPAT_METABOX = 0x100

#: What the writer sets (§2.2 "writer profile for maximum compatibility").
WRITER_COMPAT = COMPAT_SB_CHKSUM | COMPAT_MTIME
#: Incompat bits whose images the reader understands well enough to read metadata.
READER_INCOMPAT = (
    INCOMPAT_LZ4_0PADDING
    | INCOMPAT_COMPR_CFGS
    | INCOMPAT_CHUNKED_FILE
    | INCOMPAT_DEVICE_TABLE
    | INCOMPAT_ZTAILPACKING
    | INCOMPAT_FRAGMENTS
    | INCOMPAT_XATTR_PREFIXES
)

# --- §4.1 inode format and §5 layouts ----------------------------------------------------------

INODE_VERSION_COMPACT = 0
INODE_VERSION_EXTENDED = 1
LAYOUT_FLAT_PLAIN = 0
LAYOUT_COMPRESSED_FULL = 1
LAYOUT_FLAT_INLINE = 2
LAYOUT_COMPRESSED_COMPACT = 3
LAYOUT_CHUNK_BASED = 4
COMPRESSED_LAYOUTS = frozenset({LAYOUT_COMPRESSED_FULL, LAYOUT_COMPRESSED_COMPACT})
COMPACT_INODE_SIZE = 32
EXTENDED_INODE_SIZE = 64

# §5.3.1 chunk format (low u16 of i_u)
CHUNK_FORMAT_BLKBITS_MASK = 0x1F
CHUNK_FORMAT_INDEXES = 0x20
CHUNK_FORMAT_48BIT = 0x40

# --- §6 directories ----------------------------------------------------------------------------

FT_UNKNOWN = 0
FT_REG = 1
FT_DIR = 2
FT_CHRDEV = 3
FT_BLKDEV = 4
FT_FIFO = 5
FT_SOCK = 6
FT_SYMLINK = 7
FT_MAX = 8
MAX_NAME_LEN = 255

S_IFMT = 0o170000
S_IFSOCK = 0o140000
S_IFLNK = 0o120000
S_IFREG = 0o100000
S_IFBLK = 0o060000
S_IFDIR = 0o040000
S_IFCHR = 0o020000
S_IFIFO = 0o010000
#: st_mode type bits -> dirent file_type (§6.1); anything else is a "bogus i_mode" (§4.5).
FILE_TYPE_BY_IFMT = {
    S_IFREG: FT_REG,
    S_IFDIR: FT_DIR,
    S_IFCHR: FT_CHRDEV,
    S_IFBLK: FT_BLKDEV,
    S_IFIFO: FT_FIFO,
    S_IFSOCK: FT_SOCK,
    S_IFLNK: FT_SYMLINK,
}

# --- §8 xattrs ---------------------------------------------------------------------------------

XATTR_INDEX_USER = 1
XATTR_INDEX_POSIX_ACL_ACCESS = 2
XATTR_INDEX_POSIX_ACL_DEFAULT = 3
XATTR_INDEX_TRUSTED = 4
XATTR_INDEX_LUSTRE = 5  # §8.3: no kernel handler; never written, skipped when read
XATTR_INDEX_SECURITY = 6
XATTR_LONG_PREFIX = 0x80  # §8.5: e_name_index bit 7 = long prefix table index
XATTR_LONG_PREFIX_MASK = 0x7F
#: §8.3 short prefixes, in mkfs's matching order.
XATTR_PREFIXES: dict[int, bytes] = {
    XATTR_INDEX_USER: b"user.",
    XATTR_INDEX_POSIX_ACL_ACCESS: b"system.posix_acl_access",
    XATTR_INDEX_POSIX_ACL_DEFAULT: b"system.posix_acl_default",
    XATTR_INDEX_TRUSTED: b"trusted.",
    XATTR_INDEX_SECURITY: b"security.",
}
#: Indexes whose prefix is the whole name (§8.3: suffix empty).
XATTR_WHOLE_NAME_INDEXES = frozenset({XATTR_INDEX_POSIX_ACL_ACCESS, XATTR_INDEX_POSIX_ACL_DEFAULT})
XATTR_IBODY_HEADER_SIZE = 12
XATTR_ENTRY_HEADER_SIZE = 4
MAX_XATTR_SUFFIX = 255
MAX_XATTR_VALUE = 65535
#: §8.1/§10: i_xattr_icount is u16, so the ibody is at most 12 + 4*65534 bytes.
MAX_XATTR_IBODY = XATTR_IBODY_HEADER_SIZE + 4 * 65534

# --- struct layouts ----------------------------------------------------------------------------

#: §2.1 superblock, 128 bytes at byte 1024 (epoch read as signed, as new kernels do).
SUPERBLOCK = struct.Struct(
    "<"
    "I"  # 0x00 magic
    "I"  # 0x04 checksum
    "I"  # 0x08 feature_compat
    "B"  # 0x0C blkszbits
    "B"  # 0x0D sb_extslots
    "H"  # 0x0E root_nid
    "Q"  # 0x10 inos
    "q"  # 0x18 epoch (build_time)
    "I"  # 0x20 fixed_nsec
    "I"  # 0x24 blocks
    "I"  # 0x28 meta_blkaddr
    "I"  # 0x2C xattr_blkaddr
    "16s"  # 0x30 uuid
    "16s"  # 0x40 volume_name
    "I"  # 0x50 feature_incompat
    "H"  # 0x54 u1 (available_compr_algs / lz4_max_distance)
    "H"  # 0x56 extra_devices
    "H"  # 0x58 devt_slotoff
    "B"  # 0x5A dirblkbits
    "B"  # 0x5B xattr_prefix_count
    "I"  # 0x5C xattr_prefix_start (4-byte units)
    "Q"  # 0x60 packed_nid
    "B"  # 0x68 xattr_filter_reserved
    "B"  # 0x69 ishare_xattr_prefix_id
    "2x"  # 0x6A reserved
    "I"  # 0x6C build_time (48BIT only)
    "Q"  # 0x70 rootnid_8b (48BIT only)
    "8x"  # 0x78 reserved2
)
assert SUPERBLOCK.size == 128

#: §4.2 compact inode: format, xattr_icount, mode, nlink, size, mtime(0), i_u, ino, uid, gid, reserved.
COMPACT_INODE = struct.Struct("<HHHHIIIIHH4x")
assert COMPACT_INODE.size == COMPACT_INODE_SIZE
#: §4.3 extended inode: format, xattr_icount, mode, i_nb, size, i_u, ino, uid, gid, mtime, nsec, nlink.
EXTENDED_INODE = struct.Struct("<HHHHQIIIIqII16x")
assert EXTENDED_INODE.size == EXTENDED_INODE_SIZE
#: Only the common prefix (i_format, i_xattr_icount, i_mode), to decide which form to read.
INODE_HEAD = struct.Struct("<HHH")
#: §6.1 dirent: nid, nameoff, file_type, reserved.
DIRENT = struct.Struct("<QHBx")
DIRENT_SIZE = DIRENT.size
#: §8.1 xattr ibody header: h_name_filter, h_shared_count, 7 reserved bytes.
XATTR_IBODY_HEADER = struct.Struct("<IB7x")
#: §8.2 xattr entry header: e_name_len, e_name_index, e_value_size.
XATTR_ENTRY = struct.Struct("<BBH")
#: §5.3.3 chunk index: startblk_hi, device_id, startblk_lo.
CHUNK_INDEX = struct.Struct("<HHI")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")


def align(x: int, a: int) -> int:
    """Round ``x`` up to a multiple of ``a`` (a power of two)."""
    return (x + a - 1) & ~(a - 1)


# --- §2.3 CRC32C -------------------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c_raw(data: bytes | bytearray | memoryview, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32C register after ``data`` with no final XOR: EROFS's checksum (§2.3).

    ``crc32c_raw(b"123456789") == 0x1CF96D7C``; the standard CRC-32C is that XOR 0xFFFFFFFF.
    """
    table = _CRC32C_TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def checksum_length(blkszbits: int) -> int:
    """Bytes covered by the superblock checksum, from byte 1024 (§2.3 step 2)."""
    blksz = 1 << blkszbits
    return blksz - SUPERBLOCK_OFFSET if blksz > SUPERBLOCK_OFFSET else blksz


# --- §2 superblock -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Superblock:
    """The 128-byte superblock (§2.1). Field names follow the 6.15+ kernel headers."""

    feature_compat: int = WRITER_COMPAT
    blkszbits: int = BLOCK_SIZE_BITS
    sb_extslots: int = 0
    root_nid: int = 0
    inos: int = 0
    epoch: int = 0
    fixed_nsec: int = 0
    blocks: int = 0
    meta_blkaddr: int = 0
    xattr_blkaddr: int = 0
    uuid: bytes = bytes(16)
    volume_name: bytes = bytes(16)
    feature_incompat: int = 0
    u1: int = 0
    extra_devices: int = 0
    devt_slotoff: int = 0
    dirblkbits: int = 0
    xattr_prefix_count: int = 0
    xattr_prefix_start: int = 0
    packed_nid: int = 0
    xattr_filter_reserved: int = 0
    ishare_xattr_prefix_id: int = 0
    build_time: int = 0
    rootnid_8b: int = 0
    checksum: int = 0
    magic: int = EROFS_MAGIC

    @property
    def block_size(self) -> int:
        return 1 << self.blkszbits

    def pack(self) -> bytes:
        """The 128 on-disk bytes (checksum field as stored here; see ``seal_block0``)."""
        try:
            return SUPERBLOCK.pack(
                self.magic, self.checksum, self.feature_compat, self.blkszbits, self.sb_extslots,
                self.root_nid, self.inos, self.epoch, self.fixed_nsec, self.blocks, self.meta_blkaddr,
                self.xattr_blkaddr, self.uuid, self.volume_name, self.feature_incompat, self.u1,
                self.extra_devices, self.devt_slotoff, self.dirblkbits, self.xattr_prefix_count,
                self.xattr_prefix_start, self.packed_nid, self.xattr_filter_reserved,
                self.ishare_xattr_prefix_id, self.build_time, self.rootnid_8b,
            )
        except struct.error as exc:
            raise ErofsFormatError(f"packing the superblock: a field is out of range: {exc}") from exc

    @classmethod
    def unpack(cls, raw: bytes | bytearray | memoryview) -> Superblock:
        """Decode the 128 bytes at byte 1024 (no validation beyond the length)."""
        if len(raw) < SUPERBLOCK.size:
            raise ErofsFormatError("reading the superblock: image is truncated")
        (magic, checksum, compat, blkszbits, extslots, root_nid, inos, epoch, fixed_nsec, blocks,
         meta_blkaddr, xattr_blkaddr, uuid, volume_name, incompat, u1, extra_devices, devt_slotoff,
         dirblkbits, prefix_count, prefix_start, packed_nid, filter_reserved, ishare, build_time,
         rootnid_8b) = SUPERBLOCK.unpack_from(raw, 0)
        return cls(
            feature_compat=compat, blkszbits=blkszbits, sb_extslots=extslots, root_nid=root_nid,
            inos=inos, epoch=epoch, fixed_nsec=fixed_nsec, blocks=blocks, meta_blkaddr=meta_blkaddr,
            xattr_blkaddr=xattr_blkaddr, uuid=uuid, volume_name=volume_name, feature_incompat=incompat,
            u1=u1, extra_devices=extra_devices, devt_slotoff=devt_slotoff, dirblkbits=dirblkbits,
            xattr_prefix_count=prefix_count, xattr_prefix_start=prefix_start, packed_nid=packed_nid,
            xattr_filter_reserved=filter_reserved, ishare_xattr_prefix_id=ishare, build_time=build_time,
            rootnid_8b=rootnid_8b, checksum=checksum, magic=magic,
        )


def seal_block0(block0: bytearray, sb: Superblock) -> None:
    """Store ``sb`` at byte 1024 of ``block0`` and fill in its CRC32C (§2.3, computed last).

    ``block0`` must hold the image's first ``1024 + checksum_length`` bytes, final except for
    the superblock; the checksum field is zero while the CRC is computed.
    """
    raw = sb.pack()
    end = SUPERBLOCK_OFFSET + len(raw)
    block0[SUPERBLOCK_OFFSET:end] = raw
    block0[SUPERBLOCK_OFFSET + 4:SUPERBLOCK_OFFSET + 8] = bytes(4)
    if sb.feature_compat & COMPAT_SB_CHKSUM:
        length = checksum_length(sb.blkszbits)
        crc = crc32c_raw(block0[SUPERBLOCK_OFFSET:SUPERBLOCK_OFFSET + length])
        U32.pack_into(block0, SUPERBLOCK_OFFSET + 4, crc)


def superblock_crc(region: bytes | bytearray | memoryview) -> int:
    """The checksum over ``region`` (bytes [1024, 1024+L)) with its checksum field taken as 0."""
    buf = bytearray(region)
    buf[4:8] = bytes(4)
    return crc32c_raw(buf)


# --- §4 inodes ---------------------------------------------------------------------------------


def i_format(extended: bool, layout: int) -> int:
    """§4.1: bit 0 = version, bits 1..3 = data layout, everything else 0."""
    return (INODE_VERSION_EXTENDED if extended else INODE_VERSION_COMPACT) | (layout << 1)


def xattr_icount(ibody_size: int) -> int:
    """§8.1: ``icount = (xattr_size - 12) / 4 + 1``, and 0 when there is no area."""
    if ibody_size == 0:
        return 0
    return (ibody_size - XATTR_IBODY_HEADER_SIZE) // 4 + 1


def xattr_ibody_size(icount: int) -> int:
    """§8.1: the inline xattr area size for ``i_xattr_icount``."""
    if icount == 0:
        return 0
    return XATTR_IBODY_HEADER_SIZE + 4 * (icount - 1)


def pack_compact_inode(
    *, layout: int, icount: int, mode: int, nlink: int, size: int, i_u: int, ino: int, uid: int, gid: int,
) -> bytes:
    """§4.2: a 32-byte compact inode (i_mtime at 0x0C is 0: mtime is the superblock's)."""
    return COMPACT_INODE.pack(i_format(False, layout), icount, mode, nlink, size, 0, i_u, ino, uid, gid)


def pack_extended_inode(
    *, layout: int, icount: int, mode: int, nlink: int, size: int, i_u: int, ino: int, uid: int, gid: int,
    mtime: int, mtime_nsec: int,
) -> bytes:
    """§4.3: a 64-byte extended inode."""
    return EXTENDED_INODE.pack(i_format(True, layout), icount, mode, 0, size, i_u, ino, uid, gid, mtime,
                               mtime_nsec, nlink)


# --- §7.2 device numbers -----------------------------------------------------------------------

MAX_MAJOR = 0xFFF
MAX_MINOR = 0xFFFFF


def encode_rdev(major: int, minor: int) -> int:
    """Linux new_encode_dev (§7.2): 12-bit major, 20-bit minor. 259:300 -> 0x0011032C."""
    if not (0 <= major <= MAX_MAJOR and 0 <= minor <= MAX_MINOR):
        raise ErofsFormatError(f"device number {major}:{minor} does not fit 12-bit major / 20-bit minor")
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def decode_rdev(value: int) -> tuple[int, int]:
    """Inverse of ``encode_rdev``: (major, minor)."""
    return (value >> 8) & 0xFFF, (value & 0xFF) | ((value >> 12) & 0xFFF00)


# --- §6 directories ----------------------------------------------------------------------------


def dirent_block_sizes(names: list[bytes], blksz: int = BLOCK_SIZE) -> list[int]:
    """Greedy packing (§6.3): the number of (sorted) entries that go in each directory block."""
    return dirent_blocks(names, blksz)[0]


def dirent_blocks(names: Sequence[bytes], blksz: int = BLOCK_SIZE) -> tuple[list[int], int]:
    """``dirent_block_sizes`` plus the bytes used in the last block, in one pass (§6.3).

    The directory's ``i_size`` is ``(len(counts) - 1) * blksz + last_used``; the planner needs
    both for every directory, so computing them together saves a second walk over the names.
    """
    counts: list[int] = []
    used = 0
    n = 0
    for name in names:
        need = DIRENT_SIZE + len(name)
        if n and used + need > blksz:
            counts.append(n)
            used = 0
            n = 0
        used += need
        n += 1
    if n:
        counts.append(n)
    return counts, used


def pack_dirents(names: Sequence[bytes], nids: Iterable[int], file_types: Iterable[int]) -> bytes:
    """One directory block's bytes (§6.2) from parallel columns, unpadded.

    Same bytes as ``pack_dirent_block`` but without per-entry tuples: the name offsets are a
    running sum and the dirents are packed by ``map`` over the columns, so the loop over the
    entries runs in C (directories hold most of a layer's names).
    """
    nameoffs = accumulate(map(len, names), initial=DIRENT_SIZE * len(names))
    return b"".join(map(DIRENT.pack, nids, nameoffs, file_types)) + b"".join(names)


def pack_dirent_block(entries: list[tuple[bytes, int, int]]) -> bytes:
    """One directory block's bytes (§6.2): all dirents, then all names, no padding.

    ``entries`` are (name, nid, file_type) in sorted order. The caller pads to the block size
    (full blocks) or stores the bytes as they are (the final, possibly inline, block).
    """
    nameoff = DIRENT_SIZE * len(entries)
    heads = []
    for name, nid, ftype in entries:
        heads.append(DIRENT.pack(nid, nameoff, ftype))
        nameoff += len(name)
    return b"".join(heads) + b"".join(e[0] for e in entries)


# --- §8 xattrs ---------------------------------------------------------------------------------


def split_xattr_name(name: str) -> tuple[int, bytes]:
    """(short index, suffix) for a full xattr name (§8.3), or raise ErofsFormatError.

    Names with no known prefix (``system.foo``, ``os2.x``) are refused: mkfs would store them
    with index 0, which no kernel shows, so writing them would silently lose them.
    """
    raw = name.encode("utf-8", "surrogateescape")
    for index, prefix in XATTR_PREFIXES.items():
        if index in XATTR_WHOLE_NAME_INDEXES:
            if raw == prefix:
                return index, b""
        elif raw.startswith(prefix):
            suffix = raw[len(prefix):]
            if not suffix:
                raise ErofsFormatError(f"xattr {name!r} has an empty name after its prefix")
            return index, suffix
    raise ErofsFormatError(
        f"xattr {name!r} has no namespace EROFS can store (user., trusted., security., "
        "system.posix_acl_access, system.posix_acl_default)"
    )


def encode_xattr_ibody(xattrs: Mapping[str, bytes]) -> bytes:
    """The inline xattr area (§8.1/§8.2) for ``xattrs``, or b"" when there are none.

    Entries are sorted by full name bytes, as mkfs 1.9.3+ does (§8.4); ``h_name_filter`` is 0
    ("maybe present" for every bit, §8.7) and nothing is shared.
    """
    if not xattrs:
        return b""
    items = sorted((name.encode("utf-8", "surrogateescape"), name, value) for name, value in xattrs.items())
    parts = [XATTR_IBODY_HEADER.pack(0, 0)]
    size = XATTR_IBODY_HEADER_SIZE
    for _raw, name, value in items:
        index, suffix = split_xattr_name(name)
        if len(suffix) > MAX_XATTR_SUFFIX:
            raise ErofsFormatError(f"xattr {name!r}: name longer than {MAX_XATTR_SUFFIX} bytes after its prefix")
        if len(value) > MAX_XATTR_VALUE:
            raise ErofsFormatError(f"xattr {name!r}: value of {len(value)} bytes exceeds {MAX_XATTR_VALUE}")
        entry_len = XATTR_ENTRY_HEADER_SIZE + len(suffix) + len(value)
        padded = align(entry_len, 4)
        parts.append(XATTR_ENTRY.pack(len(suffix), index, len(value)))
        parts.append(suffix)
        parts.append(bytes(value))
        if padded != entry_len:
            parts.append(bytes(padded - entry_len))
        size += padded
    if size > MAX_XATTR_IBODY:
        raise ErofsFormatError(f"xattrs of {size} bytes exceed the inline limit of {MAX_XATTR_IBODY} bytes")
    return b"".join(parts)


# --- §5.4 compressed files (written by zwriter.py; kept as one block for merging) --------------

#: §5.4.2 lcluster index types (``di_advise`` bits 0-1 of a full index entry).
Z_LCLUSTER_PLAIN = 0
Z_LCLUSTER_HEAD1 = 1
Z_LCLUSTER_NONHEAD = 2
Z_LCLUSTER_HEAD2 = 3
#: §5.4.1 the map header (8 bytes) after the inode and its xattrs, 8-byte aligned.
Z_MAP_HEADER_SIZE = 8
#: §5.4.2 COMPRESSED_FULL: 8 reserved bytes follow the header before the first index entry.
Z_FULL_INDEX_START = 16
#: §5.4.2 full index entry: di_advise, di_clusterofs, then blkaddr (u32) or delta[0], delta[1].
Z_FULL_HEAD = struct.Struct("<HHI")
Z_FULL_NONHEAD = struct.Struct("<HHHH")
Z_FULL_INDEX_SIZE = 8
#: §5.4.2 a NONHEAD delta[0] with this bit set is a CBLKCNT (big pclusters only): stay below it.
Z_DELTA_MAX = 0x7FF
#: §5.4.4 the largest pcluster (Z_EROFS_PCLUSTER_MAX_SIZE in fs/erofs/erofs_fs.h).
Z_MAX_PCLUSTER = 1 << 20
#: §5.4.1 ``u1`` without COMPR_CFGS: the largest LZ4 match distance (mkfs writes 65535).
LZ4_MAX_DISTANCE = 0xFFFF
