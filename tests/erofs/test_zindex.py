"""Compact lcluster indexes: every extent sequence packs to what our reader (the kernel's rules) maps back."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from converter.erofs import format as fmt
from converter.erofs.zindex import FullIndexes, compact_meta_size, meta_size_bound, to_compact
from converter.erofs.zmap import ExtentMap, Location

BLK = fmt.BLOCK_SIZE
#: One extent: compressed (HEAD1, decoded length > its blocks, up to 4 pclusters' worth) or raw
#: (PLAIN, at most one block), as the writer makes them.
EXTENT = st.one_of(
    st.tuples(st.just(fmt.Z_LCLUSTER_HEAD1), st.integers(1, 16), st.integers(1, 60 * BLK)),
    st.tuples(st.just(fmt.Z_LCLUSTER_PLAIN), st.just(1), st.integers(1, BLK)),
)


def _extents(raw: list[tuple[int, int, int]], big: bool) -> list[tuple[int, int, int]]:
    """Make generated extents valid as the writer makes them: compressed ones decode to more than
    their pcluster holds; a raw one shorter than a block ends at a block boundary (a segment's
    end) unless it is the file's last, so no two extents start in one lcluster."""
    out = []
    la = 0
    for i, (kind, nblocks, llen) in enumerate(raw):
        if kind == fmt.Z_LCLUSTER_HEAD1:
            nblocks = nblocks if big else 1
            llen = max(llen, nblocks * BLK + 1)
        elif llen < BLK and i != len(raw) - 1:
            llen = BLK - la % BLK
        out.append((kind, nblocks, llen))
        la += llen
    return out


def _map(meta: bytes, *, size: int, ebase: int, compact: bool) -> list[tuple[int, int, int | None, int, int]]:
    """(la, length, algorithm, offset, plen) of every extent, read back by our reader."""
    hpos = ebase - fmt.Z_MAP_HEADER_SIZE
    image = bytes(hpos) + meta

    def read(offset: int, n: int) -> bytes:
        assert offset + n <= len(image), "read past the index"
        return image[offset:offset + n]

    zmap = ExtentMap(read, body_end=hpos, compact=compact, size=size, blkszbits=fmt.BLOCK_SIZE_BITS,
                     big_pcluster_ok=True, where="f")
    found = []
    for e in zmap.extents():
        assert e.location is Location.BLOCKS
        found.append((e.la, e.length, None if e.algorithm is None else int(e.algorithm), e.offset, e.plen))
    return found


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(EXTENT, min_size=1, max_size=60), big=st.booleans(), ebase=st.sampled_from([0, 8, 16, 24]),
       start=st.integers(1, 1 << 20))
@example(raw=[(fmt.Z_LCLUSTER_HEAD1, 1, 5000)] * 40, big=False, ebase=8, start=9)  # 2B packs, EOF marker
@example(raw=[(fmt.Z_LCLUSTER_HEAD1, 16, 3 << 20)], big=True, ebase=0, start=3)  # CBLKCNT, deltas > 2047 capped
@example(raw=[(fmt.Z_LCLUSTER_PLAIN, 1, BLK)] * 33, big=True, ebase=24, start=5)  # heads only
def test_compact_packs_map_back_to_the_same_extents(raw: list[tuple[int, int, int]], big: bool, ebase: int,
                                                    start: int) -> None:
    extents = _extents(raw, big)
    size = sum(llen for _, _, llen in extents)
    idx = FullIndexes(size, 0, big=big)
    blk = start
    want = []
    la = 0
    for kind, nblocks, llen in extents:
        idx.add(kind, llen, blk, nblocks)
        want.append((la, llen, 0 if kind == fmt.Z_LCLUSTER_HEAD1 else None, blk * BLK, nblocks * BLK))
        blk += nblocks
        la += llen
    full = idx.finish()
    assert _map(full, size=size, ebase=ebase + 8, compact=False) == want
    base = 4096 * 7 + ebase  # any absolute position with this residue
    compact = to_compact(full, size=size, ebase=base)
    assert len(compact) == compact_meta_size(size, base) <= meta_size_bound(size, compact=True)
    assert len(full) == meta_size_bound(size, compact=False)
    assert _map(compact, size=size, ebase=base, compact=True) == want
    nonheads = _lookahead_full(full, size=size)
    assert _lookahead(compact, size=size, ebase=base) == {lcn: nonheads.get(lcn, -1)
                                                         for lcn in _lookahead(compact, size=size, ebase=base)}
    advise = int.from_bytes(compact[4:6], "little")
    assert advise == (0x7 if big else 0x1)


def _lookahead_full(full: bytes, *, size: int) -> dict[int, int]:
    """delta[1] (capped as compact packs store it) or CBLKCNT of every NONHEAD, from FULL entries."""
    found = {}
    for lcn in range(-(-size // BLK)):
        kind, _, d0, d1 = fmt.Z_FULL_NONHEAD.unpack_from(full, fmt.Z_FULL_INDEX_START + 8 * lcn)
        if kind == fmt.Z_LCLUSTER_NONHEAD:
            found[lcn] = d0 if d0 & 0x800 else min(d1, fmt.Z_DELTA_MAX)
    return found


def _lookahead(compact: bytes, *, size: int, ebase: int) -> dict[int, int]:
    """The same for the NONHEADs that end a pack, which store delta[1] (or CBLKCNT) there; the
    reader derives its extents without them, the kernel's look-ahead reads them."""
    count = -(-size // BLK)
    c4init = min(((32 - ebase % 32) // 4) % 8, count)
    c2b = (count - c4init) // 16 * 16
    found = {}
    pos, lcn = fmt.Z_MAP_HEADER_SIZE, 0
    for run, vcnt, bits in ((c4init, 2, 16), (c2b, 16, 14), (count - c4init - c2b, 2, 16)):
        for first in range(lcn, lcn + run, vcnt):
            size_ = bits * vcnt // 8 + 4
            if first + vcnt - 1 < count:
                value = int.from_bytes(compact[pos:pos + size_ - 4], "little") >> (bits * (vcnt - 1))
                found[first + vcnt - 1] = value & 0xFFF if value >> 12 == fmt.Z_LCLUSTER_NONHEAD else -1
            pos += size_
        lcn += run
    return found


def test_compact_sizes_follow_the_alignment_rule() -> None:
    """4B packs until ebase is 32-byte aligned, then 2B packs of 16, then 4B packs (fs/erofs/zmap.c)."""
    # 40 lclusters from ebase % 32 == 8: 6 in 4B packs (24 bytes), 32 in 2B packs (64), 2 in one 4B pack (8).
    assert compact_meta_size(40 * BLK, 8) == 8 + 24 + 64 + 8
    assert compact_meta_size(40 * BLK, 0) == 8 + 0 + 64 + 32  # 32 in 2B, 8 in four 4B packs
    assert compact_meta_size(3 * BLK, 16) == 8 + 16  # fewer entries than the 4B run: all 4B
    assert compact_meta_size(1, 24) == 8 + 8  # one entry: one 4B pack


def test_non_consecutive_pclusters_are_a_programming_error() -> None:
    """A COMPACT pack cannot express pclusters out of file order; that must never be written."""
    idx = FullIndexes(20 * 5000, 0)
    for k in range(20):  # lclusters 0-15 share one 2B pack; the 6th pcluster jumps ahead
        idx.add(fmt.Z_LCLUSTER_HEAD1, 5000, 10 + k + (30 if k >= 5 else 0))
    with pytest.raises(AssertionError, match="not consecutive"):
        to_compact(idx.finish(), size=20 * 5000, ebase=0)
