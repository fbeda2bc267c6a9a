"""Lcluster index arrays of compressed inodes: built FULL extent by extent, packed COMPACT at placement.

See docs/erofs-format.md §5.4.2 (full entries), §5.4.3 (compact packs) and §5.4.6 (this writer).
"""

from __future__ import annotations

import struct

from converter.erofs import format as fmt
from converter.erofs.zmap import (
    ADVISE_BIG_PCLUSTER_1,
    ADVISE_BIG_PCLUSTER_2,
    ADVISE_COMPACTED_2B,
    ADVISE_INLINE_PCLUSTER,
    CBLKCNT,
    big_pcluster_nblk,
    compact_packs_size,
    compact_runs,
)
from converter.errors import ErofsFormatError

__all__ = ["FullIndexes", "compact_meta_size", "meta_size_bound", "to_compact"]

_BLKSZ = fmt.BLOCK_SIZE
_BITS = fmt.BLOCK_SIZE_BITS
_LOBITS = 12  # lcluster = block = 4 KiB: 12 bits of clusterofs / delta, then the 2-bit type
_U32 = struct.Struct("<I")


class FullIndexes:
    """Builds a COMPRESSED_FULL map header and index array extent by extent (§5.4.2).

    With ``big`` (big pclusters, Linux 5.13+), the first NONHEAD of every extent holds its
    pcluster's block count (CBLKCNT) and the header has BIG_PCLUSTER_1, as mkfs.erofs writes them.
    """

    def __init__(self, size: int, algorithm: int = 0, *, big: bool = False) -> None:
        self._size = size
        self._algorithm = algorithm
        self._big = big
        self._la = 0
        self._entries = bytearray()
        self.compressed = False
        #: ztailpacking: the last extent's stream, stored right after the index (§5.4.4)
        self.inline = b""

    def add(self, kind: int, llen: int, blkaddr: int, nblocks: int = 1) -> None:
        """The next extent: ``llen`` bytes of file from a pcluster of ``nblocks`` at ``blkaddr``."""
        la = self._la
        head = la >> _BITS
        cofs = la & (_BLKSZ - 1)
        if len(self._entries) != head * fmt.Z_FULL_INDEX_SIZE:
            raise ErofsFormatError("two extents start in one logical cluster")  # pragma: no cover - invariant
        if nblocks != 1 and not (self._big and kind == fmt.Z_LCLUSTER_HEAD1):
            raise ErofsFormatError(f"a {nblocks}-block pcluster needs big pclusters")  # pragma: no cover
        self._entries += fmt.Z_FULL_HEAD.pack(kind, cofs, blkaddr)
        end = la + llen
        nxt = end >> _BITS
        pack = fmt.Z_FULL_NONHEAD.pack
        for lcn in range(head + 1, nxt):  # lclusters wholly inside the extent
            d0 = CBLKCNT | nblocks if self._big and lcn == head + 1 else min(lcn - head, fmt.Z_DELTA_MAX)
            self._entries += pack(fmt.Z_LCLUSTER_NONHEAD, cofs, d0, nxt - lcn)
        self._la = end
        if kind == fmt.Z_LCLUSTER_HEAD1:
            self.compressed = True

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
        # Map header: advise, the algorithm of HEAD1 lclusters, lcluster = block (h_clusterbits 0).
        header = bytearray(fmt.Z_FULL_INDEX_START)
        advise = (ADVISE_BIG_PCLUSTER_1 if self._big else 0) | (ADVISE_INLINE_PCLUSTER if self.inline else 0)
        struct.pack_into("<HH", header, 2, len(self.inline), advise)
        header[6] = self._algorithm
        return bytes(header) + bytes(self._entries)


def compact_meta_size(size: int, ebase: int) -> int:
    """Bytes of map header and compact index packs for a ``size``-byte file whose packs start at
    absolute offset ``ebase`` (only ``ebase % 32`` matters: it decides the first 4B run)."""
    return fmt.Z_MAP_HEADER_SIZE + compact_packs_size(compact_runs(-(-size // _BLKSZ), ebase))


def meta_size_bound(size: int, *, compact: bool) -> int:
    """The most index metadata a ``size``-byte file can need, wherever its inode lands."""
    if not compact:
        return fmt.Z_FULL_INDEX_START + fmt.Z_FULL_INDEX_SIZE * -(-size // _BLKSZ)
    return max(compact_meta_size(size, ebase) for ebase in (0, 8, 16, 24))


def to_compact(full: bytes | memoryview, *, size: int, ebase: int) -> bytes:
    """Re-encode ``FullIndexes.finish()`` output as a COMPACT header and packs starting at ``ebase``.

    Each 4B pack holds 2 entries of 16 bits and each 2B pack 16 entries of 14 bits (type above a
    12-bit ``lo``), then the u32 block address the pack's HEADs count from (§5.4.3). The packs are
    decoded back to the same extents by the kernel's rules; ``_pack_base`` checks the addresses.
    """
    count = -(-size // _BLKSZ)
    full = bytes(full)
    advise, = struct.unpack_from("<H", full, 4)
    big = bool(advise & ADVISE_BIG_PCLUSTER_1)
    kinds: list[int] = []
    los: list[int] = []  # lo for positions not last in a pack
    lasts: list[int] = []  # lo for positions last in a pack (NONHEAD: delta[1] instead of delta[0])
    blkaddrs: list[int] = []  # HEAD: its pcluster's block (0 for the EOF marker); NONHEAD: 0
    at = fmt.Z_FULL_INDEX_START
    for kind, cofs, u in fmt.Z_FULL_HEAD.iter_unpack(full[at:at + fmt.Z_FULL_INDEX_SIZE * count]):
        kind &= 3
        kinds.append(kind)
        if kind == fmt.Z_LCLUSTER_NONHEAD:
            d0, d1 = u & 0xFFFF, u >> 16
            if d0 & CBLKCNT:
                los.append(d0)
                lasts.append(d0)
            else:
                los.append(min(d0, fmt.Z_DELTA_MAX))
                lasts.append(min(d1, fmt.Z_DELTA_MAX))
            blkaddrs.append(0)
        else:
            los.append(cofs)
            lasts.append(cofs)
            blkaddrs.append(u)
    c4init, c2b, c4end = compact_runs(count, ebase)
    out = bytearray(fmt.Z_MAP_HEADER_SIZE)
    out[:8] = full[:8]
    big_bits = ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2
    struct.pack_into("<H", out, 4, (advise & ~big_bits) | ADVISE_COMPACTED_2B | (big_bits if big else 0))
    base = 0
    start = 0
    for run, (vcnt, bits) in ((c4init, (2, 16)), (c2b, (16, 14)), (c4end, (2, 16))):
        for first in range(start, start + run, vcnt):
            used = min(vcnt, start + run - first)
            packed = 0
            decoded: list[tuple[int, int]] = []
            for j in range(used):
                lcn = first + j
                lo = lasts[lcn] if j == vcnt - 1 else los[lcn]
                decoded.append((kinds[lcn], lo))
                packed |= (kinds[lcn] << _LOBITS | lo) << (bits * j)
            base = _pack_base(decoded, blkaddrs[first:first + used], big, base)
            out += packed.to_bytes(bits * vcnt // 8, "little") + _U32.pack(base)
        start += run
    out += full[at + fmt.Z_FULL_INDEX_SIZE * count:]  # an inline tail follows the packs (ztailpacking)
    return bytes(out)


def _pack_base(decoded: list[tuple[int, int]], blkaddrs: list[int], big: bool, previous: int) -> int:
    """The pack's u32: a base from which every real HEAD's block follows; ``previous`` if none."""
    base: int | None = None
    heads = 0  # without big pclusters a HEAD's block is base + 1 + the HEADs before it in the pack
    for i, (kind, _) in enumerate(decoded):
        if kind == fmt.Z_LCLUSTER_NONHEAD:
            continue
        heads += 1
        if not blkaddrs[i]:  # blkaddr 0: the EOF marker, whose derived block is never used
            continue
        this = blkaddrs[i] - (big_pcluster_nblk(decoded, i, where="packing a compact index") if big else heads)
        if base is None:
            base = this
        elif base != this:
            raise AssertionError(f"pclusters are not consecutive: bases {base} and {this} in one pack")
    if base is None:
        return previous
    if base < 0:
        raise AssertionError(f"negative compact pack base {base}")  # pragma: no cover - block 0 is the superblock
    return base
