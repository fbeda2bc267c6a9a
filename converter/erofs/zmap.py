"""The extent map of a compressed EROFS inode: map header, full and compact lcluster indexes.

Layout as in the kernel's fs/erofs/erofs_fs.h (z_erofs_map_header, z_erofs_lcluster_index) and
Documentation/filesystems/erofs.rst ("Data compression"); see docs/verify.md.
The whole index is walked in file order (one entry per logical cluster), which is what a
reader that streams whole files needs, and validated on the way so that a lookup in the
kernel's style (delta[0] look-back) would reach the same extent heads as we do.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from converter.erofs import format as fmt
from converter.erofs.decompress import MAX_EXTENT_SIZE, Algorithm
from converter.errors import ErofsFormatError, ErofsUnsupported

ADVISE_COMPACTED_2B = 0x0001  # compact layout: 2B packs; full layout: encoded extents (48-bit)
ADVISE_BIG_PCLUSTER_1 = 0x0002
ADVISE_BIG_PCLUSTER_2 = 0x0004
ADVISE_INLINE_PCLUSTER = 0x0008
ADVISE_INTERLACED_PCLUSTER = 0x0010
ADVISE_FRAGMENT_PCLUSTER = 0x0020
_KNOWN_ADVISE = 0x003F
CBLKCNT = 0x0800  # Z_EROFS_LI_D0_CBLKCNT
PARTIAL_REF = 0x8000  # Z_EROFS_LI_PARTIAL_REF
WHOLE_FRAGMENT = 1 << 63  # bit 7 of h_clusterbits: the whole file is a fragment
MAP_HEADER = struct.Struct("<IHBB")
MAP_HEADER_SIZE = 8
FULL_INDEX = struct.Struct("<HHI")
FULL_INDEX_SIZE = 8
_BATCH = 4096


class LclusterType(enum.IntEnum):
    PLAIN = 0
    HEAD1 = 1
    NONHEAD = 2
    HEAD2 = 3


class Location(enum.Enum):
    """Where an extent's pcluster is."""

    BLOCKS = "blocks"
    INLINE = "inline"
    FRAGMENT = "fragment"


@dataclass(frozen=True, slots=True)
class MapHeader:
    fragment_offset: int
    idata_size: int
    advise: int
    head1: int  # algorithm of HEAD1 lclusters
    head2: int
    lclusterbits: int
    whole_fragment: bool


@dataclass(frozen=True, slots=True)
class Extent:
    """Decoded bytes ``[la, la + length)`` of the file come from one pcluster."""

    la: int
    length: int
    algorithm: Algorithm | None  # None: stored uncompressed
    location: Location
    offset: int  # byte offset in the image (BLOCKS, INLINE) or in the packed inode (FRAGMENT)
    plen: int  # stored bytes
    partial: bool = False
    interlaced: bool = False


@dataclass(frozen=True, slots=True)
class _Entry:
    type: LclusterType
    lo: int  # HEAD: clusterofs; NONHEAD: delta[0] (or CBLKCNT | blocks), None-like for derived
    pblk: int  # HEAD only
    partial: bool = False
    cblkcnt: int = -1  # NONHEAD with CBLKCNT: the pcluster's size in blocks (0 for fragment tails)
    delta0: int = 0  # NONHEAD without CBLKCNT: the look-back distance


def compact_runs(count: int, ebase: int, *, two_byte: bool = True) -> tuple[int, int, int]:
    """How many of ``count`` compact entries whose packs start at absolute offset ``ebase`` go in
    4B packs first, then in 2B packs, then in 4B packs again (``fs/erofs/zmap.c``): 4B packs until
    the 2B packs would start 32-byte aligned, whole 2B packs (if ``two_byte``), 4B for the rest."""
    c4init = ((32 - ebase % 32) // 4) % 8
    if c4init >= count:
        return count, 0, 0
    c2b = (count - c4init) // 16 * 16 if two_byte else 0
    return c4init, c2b, count - c4init - c2b


def compact_packs_size(runs: tuple[int, int, int]) -> int:
    """Bytes of the packs holding ``compact_runs``' entries (a half-used last 4B pack is whole)."""
    c4init, c2b, c4end = runs
    return 8 * -(-c4init // 2) + 2 * c2b + 8 * -(-c4end // 2)


def big_pcluster_nblk(decoded: Sequence[tuple[int, int]], i: int, *, where: str) -> int:
    """Blocks the kernel adds to a big-pcluster pack's base for the HEAD at position ``i`` of its
    ``(type, lo)`` entries: a CBLKCNT counts its pcluster (and skips its HEAD), a plain NONHEAD
    jumps back to just after its HEAD (the CBLKCNT), any other HEAD counts one block."""
    nblk = 0
    while i > 0:
        i -= 1
        kind, lo = decoded[i]
        if kind == LclusterType.NONHEAD:
            if lo & CBLKCNT:
                i -= 1
                nblk += lo & (CBLKCNT - 1)
                continue
            if lo <= 1:
                raise ErofsFormatError(f"{where}: plain delta[0] {lo} in a big-pcluster pack")
            i -= lo - 2
            continue
        nblk += 1
    return nblk


def header_position(body_end: int) -> int:
    """The map header follows the inode and its xattrs, 8-byte aligned (absolute)."""
    return (body_end + 7) & ~7


def parse_header(raw: bytes, *, blkszbits: int, where: str) -> MapHeader:
    (lo32, advise, algs, clusterbits) = MAP_HEADER.unpack(raw)
    if clusterbits & 0x80:
        value = int.from_bytes(raw, "little") & ~WHOLE_FRAGMENT
        return MapHeader(fragment_offset=value, idata_size=0, advise=ADVISE_FRAGMENT_PCLUSTER, head1=0, head2=0,
                         lclusterbits=blkszbits, whole_fragment=True)
    if advise & ~_KNOWN_ADVISE:
        raise ErofsFormatError(f"{where}: unknown map header advise bits {advise:#06x}")
    head1, head2 = algs & 0xF, algs >> 4
    for alg in (head1, head2):
        if alg >= len(Algorithm):
            raise ErofsFormatError(f"{where}: unknown compression algorithm {alg}")
    if clusterbits & 0x70:
        raise ErofsFormatError(f"{where}: reserved bits set in h_clusterbits {clusterbits:#04x}")
    return MapHeader(fragment_offset=lo32, idata_size=lo32 >> 16, advise=advise, head1=head1, head2=head2,
                     lclusterbits=blkszbits + (clusterbits & 0xF), whole_fragment=False)


class ExtentMap:
    """The extents of one compressed inode, in file order.

    ``read(offset, n)`` reads image bytes (raising ErofsFormatError past the end). Problems
    with the header or layout raise in the constructor; problems in the index as it is walked.
    """

    def __init__(self, read: Callable[[int, int], bytes], *, body_end: int, compact: bool, size: int,
                 blkszbits: int, big_pcluster_ok: bool, where: str) -> None:
        self._read = read
        self._compact = compact
        self._size = size
        self._blkszbits = blkszbits
        self._where = where
        self._hpos = header_position(body_end)
        self.header = parse_header(read(self._hpos, MAP_HEADER_SIZE), blkszbits=blkszbits, where=where)
        h = self.header
        if h.whole_fragment:
            return
        big = h.advise & (ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2)
        if big and not big_pcluster_ok:
            raise ErofsFormatError(f"{where}: big pclusters without the BIG_PCLUSTER feature")
        if not compact and h.advise & ADVISE_COMPACTED_2B:
            raise ErofsUnsupported(f"{where}: encoded extents (48-bit images) are not supported")
        if h.lclusterbits > 30:
            raise ErofsFormatError(f"{where}: logical cluster size 2^{h.lclusterbits} is absurd")
        if compact:
            if h.lclusterbits != blkszbits:
                raise ErofsUnsupported(f"{where}: compact indexes with clusters other than one block")
            if bool(h.advise & ADVISE_BIG_PCLUSTER_1) != bool(h.advise & ADVISE_BIG_PCLUSTER_2):
                raise ErofsFormatError(f"{where}: compact indexes need both BIG_PCLUSTER bits or none")
        self._lcs = 1 << h.lclusterbits
        self._count = (size + self._lcs - 1) >> h.lclusterbits
        self._index_end = self._layout_index()

    @property
    def where(self) -> str:
        return self._where

    @property
    def index_end(self) -> int:
        return self._index_end

    def _layout_index(self) -> int:
        n = self._count
        if not self._compact:
            self._ebase = self._hpos + 16  # the header, then 8 reserved bytes
            return self._ebase + FULL_INDEX_SIZE * n
        self._ebase = self._hpos + MAP_HEADER_SIZE
        runs = compact_runs(n, self._ebase, two_byte=bool(self.header.advise & ADVISE_COMPACTED_2B))
        self._runs = [(runs[0], False), (runs[1], True), (runs[2], False)]
        return self._ebase + compact_packs_size(runs)

    # -- entries ---------------------------------------------------------------------------------

    def _entries(self) -> Iterator[_Entry]:
        return self._compact_entries() if self._compact else self._full_entries()

    def _full_entries(self) -> Iterator[_Entry]:
        big = bool(self.header.advise & (ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2))
        done = 0
        while done < self._count:
            k = min(_BATCH, self._count - done)
            table = self._read(self._ebase + FULL_INDEX_SIZE * done, FULL_INDEX_SIZE * k)
            for i in range(k):
                advise, cofs, u = FULL_INDEX.unpack_from(table, FULL_INDEX_SIZE * i)
                kind = LclusterType(advise & 3)
                if kind == LclusterType.NONHEAD:
                    d0 = u & 0xFFFF
                    if d0 & CBLKCNT:
                        if not big:
                            raise ErofsFormatError(f"{self._where}: CBLKCNT without big pclusters")
                        yield _Entry(kind, d0, 0, cblkcnt=d0 & (CBLKCNT - 1))
                    else:
                        yield _Entry(kind, d0, 0, delta0=d0)
                else:
                    yield _Entry(kind, cofs, u, partial=bool(advise & PARTIAL_REF))
            done += k

    def _compact_entries(self) -> Iterator[_Entry]:
        big = bool(self.header.advise & ADVISE_BIG_PCLUSTER_1)
        lobits = max(self.header.lclusterbits, 12)
        pos = self._ebase
        for count, two_byte in self._runs:
            vcnt, encodebits, packsize = (16, 14, 32) if two_byte else (2, 16, 8)
            left = count
            while left > 0:
                pack = self._read(pos, packsize)
                pos += packsize
                yield from self._unpack(pack, vcnt, encodebits, lobits, big, min(vcnt, left))
                left -= vcnt

    def _unpack(self, pack: bytes, vcnt: int, encodebits: int, lobits: int, big: bool,
                used: int) -> Iterator[_Entry]:
        bits = int.from_bytes(pack[:-4], "little")
        (base,) = struct.unpack_from("<I", pack, len(pack) - 4)
        mask = (1 << encodebits) - 1
        decoded = []
        for j in range(vcnt):
            v = (bits >> (encodebits * j)) & mask
            decoded.append((LclusterType((v >> lobits) & 3), v & ((1 << lobits) - 1)))
        for i in range(used):
            kind, lo = decoded[i]
            if kind == LclusterType.NONHEAD:
                if lo & CBLKCNT:
                    if not big:
                        raise ErofsFormatError(f"{self._where}: CBLKCNT without big pclusters")
                    yield _Entry(kind, lo, 0, cblkcnt=lo & (CBLKCNT - 1))
                elif i + 1 != vcnt:
                    yield _Entry(kind, lo, 0, delta0=lo)
                else:  # the last entry of a pack stores delta[1]; delta[0] comes from its neighbour
                    pkind, plo = decoded[i - 1]
                    d0 = 0 if pkind != LclusterType.NONHEAD else 1 if plo & CBLKCNT else plo
                    yield _Entry(kind, lo, 0, delta0=d0 + 1)
                continue
            yield _Entry(kind, lo, base + self._nblk(decoded, i, big))

    def _nblk(self, decoded: list[tuple[LclusterType, int]], i: int, big: bool) -> int:
        """How many blocks the pclusters before entry ``i`` of a pack take (the kernel's derivation)."""
        if not big:
            nblk = 1
            while i > 0:
                i -= 1
                kind, lo = decoded[i]
                if kind == LclusterType.NONHEAD:
                    i -= lo
                if i >= 0:
                    nblk += 1
            return nblk
        return big_pcluster_nblk(decoded, i, where=self._where)

    # -- extents ---------------------------------------------------------------------------------

    def extents(self) -> Iterator[Extent]:
        """Every extent in file order; the index is read lazily, a batch at a time."""
        h = self.header
        if h.whole_fragment:
            if self._size:
                yield Extent(0, self._size, None, Location.FRAGMENT, h.fragment_offset, self._size)
            return
        lcs = self._lcs
        where = self._where
        head_lcn = -1
        head: _Entry | None = None
        head_la = 0
        nblocks = 1
        for lcn, entry in enumerate(self._entries()):
            if entry.type == LclusterType.NONHEAD:
                if head is None:
                    raise ErofsFormatError(f"{where}: logical cluster 0 is not a HEAD")
                if entry.cblkcnt >= 0:
                    if lcn != head_lcn + 1:
                        raise ErofsFormatError(f"{where}: CBLKCNT in logical cluster {lcn} is not after its HEAD")
                    nblocks = entry.cblkcnt
                elif not 1 <= entry.delta0 <= lcn - head_lcn:
                    raise ErofsFormatError(
                        f"{where}: logical cluster {lcn} looks back {entry.delta0}, its HEAD is {lcn - head_lcn} back"
                    )
                continue
            if entry.lo >= lcs:
                raise ErofsFormatError(f"{where}: cluster offset {entry.lo} in logical cluster {lcn} is too big")
            if lcn == 0 and entry.lo:
                raise ErofsFormatError(f"{where}: logical cluster 0 starts at offset {entry.lo}")
            la = lcn * lcs + entry.lo
            if la >= self._size:  # the EOF marker: a zero-length head past the last byte
                if lcn != self._count - 1:
                    raise ErofsFormatError(f"{where}: a HEAD past the end of the file in logical cluster {lcn}")
                continue
            if head is not None:
                yield self._extent(head, head_la, la - head_la, nblocks, last=False)
            head, head_lcn, head_la, nblocks = entry, lcn, la, 1
        if head is None:
            if self._size:
                raise ErofsFormatError(f"{where}: the index has no HEAD")
            return
        yield self._extent(head, head_la, self._size - head_la, nblocks, last=True)

    def _extent(self, head: _Entry, la: int, length: int, nblocks: int, *, last: bool) -> Extent:
        h = self.header
        where = self._where
        if head.type == LclusterType.PLAIN:
            algorithm: Algorithm | None = None
        else:
            algorithm = Algorithm(h.head1 if head.type == LclusterType.HEAD1 else h.head2)
        if last and h.advise & ADVISE_INLINE_PCLUSTER:
            bs = 1 << self._blkszbits
            if self._index_end % bs + h.idata_size > bs:
                raise ErofsFormatError(f"{where}: the inline pcluster crosses a block boundary")
            if not h.idata_size:
                raise ErofsFormatError(f"{where}: an empty inline pcluster")
            return Extent(la, length, algorithm, Location.INLINE, self._index_end, h.idata_size,
                          partial=head.partial)
        if last and h.advise & ADVISE_FRAGMENT_PCLUSTER:
            offset = h.fragment_offset
            if not self._compact:
                offset |= head.pblk << 32
            return Extent(la, length, None, Location.FRAGMENT, offset, length)
        if nblocks < 1:
            raise ErofsFormatError(f"{where}: a pcluster of {nblocks} blocks")
        plen = nblocks << self._blkszbits
        if plen > fmt.Z_MAX_PCLUSTER:
            raise ErofsFormatError(f"{where}: a pcluster of {nblocks} blocks is bigger than 1 MiB")
        if algorithm is None and length > plen:
            raise ErofsFormatError(f"{where}: an uncompressed extent of {length} bytes in a {plen}-byte pcluster")
        if length > MAX_EXTENT_SIZE:
            raise ErofsFormatError(f"{where}: an extent of {length} bytes (the kernel's limit is {MAX_EXTENT_SIZE})")
        return Extent(la, length, algorithm, Location.BLOCKS, head.pblk << self._blkszbits, plen,
                      partial=head.partial, interlaced=bool(h.advise & ADVISE_INTERLACED_PCLUSTER))
