"""Best-fit placement of inodes (with xattrs and inline tails) into metadata blocks (erofs-format.md §3, §5.2, §15).

The allocator alone (against a brute-force model), the planner (fewer blocks than the old
sequential layout, dirent order with "." and ".." merged in), and whole images: every item
parsed back from the bytes lies where the placement rules say, fsck and the kernel agree, and
where the writer keeps file tails (memory or spill file) never changes a byte.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.erofs import format as fmt
from converter.erofs.layout import SLOTS_PER_BLOCK, MetaBlockAllocator, Plan, plan_layout
from converter.erofs.reader import ErofsImage
from converter.erofs.writer import TAIL_MEMORY, ImageDataArea, write_image
from converter.layers.model import Inode, NodeKind
from tests.support import kernel
from tests.support.compare import diff, snapshot

from .helpers import T, TreeBuilder, build, expected_snapshot, fsck, pattern, reader_snapshot, tools

BLK = fmt.BLOCK_SIZE


# --- the allocator --------------------------------------------------------------------------


def test_allocator_picks_the_fullest_block_that_fits() -> None:
    a = MetaBlockAllocator(10)
    assert a.place(100) == 10 * BLK  # opens block 10: 4 slots used, 124 free
    assert a.place(4000) == 11 * BLK  # 125 slots: not in block 10, opens block 11 (3 free)
    assert a.place(96) == 11 * BLK + 125 * 32  # 3 slots: block 11 is the best fit, not block 10
    assert a.place(64) == 10 * BLK + 4 * 32  # block 11 is full now
    assert a.open_blocks() == {10: (124 - 2) * 32}
    assert a.end_block == 12


def test_allocator_tie_goes_to_the_lowest_block() -> None:
    a = MetaBlockAllocator(5)
    assert [a.place(4000) for _ in range(3)] == [5 * BLK, 6 * BLK, 7 * BLK]  # 3 free slots each
    assert a.place(32) == 5 * BLK + 125 * 32  # the lowest of three equal candidates
    # Block 5 has 2 free slots now: too few for 3; blocks 6 and 7 tie again.
    assert a.place(96) == 6 * BLK + 125 * 32
    assert a.place(96) == 7 * BLK + 125 * 32
    assert a.open_blocks() == {5: 64}


def test_allocator_items_larger_than_a_block() -> None:
    a = MetaBlockAllocator(1)
    assert a.place(32) == BLK
    assert a.place(5000) == 2 * BLK  # spans blocks 2-3 (157 slots), never starts mid-block
    assert a.open_blocks() == {1: BLK - 32, 3: BLK - 29 * 32}
    assert a.place(BLK - 29 * 32) == 3 * BLK + 29 * 32  # fills the rest of its last block exactly
    assert a.place(2 * BLK) == 4 * BLK  # exactly two blocks: nothing left open
    assert a.end_block == 6
    assert a.place(BLK) == 6 * BLK
    with pytest.raises(ValueError):
        a.place(0)


def _model(first: int, sizes: list[int]) -> list[int]:
    """Best fit by brute force: scan every open block for the least sufficient free space."""
    free: dict[int, int] = {}
    nxt = first
    out = []
    for size in sizes:
        slots = -(-size // 32)
        if slots < SLOTS_PER_BLOCK:
            fits = [(f, b) for b, f in free.items() if f >= slots]
            if fits:
                f, b = min(fits)
                out.append(b * BLK + (SLOTS_PER_BLOCK - f) * 32)
                free[b] = f - slots
                if not free[b]:
                    del free[b]
                continue
        full, rest = divmod(slots, SLOTS_PER_BLOCK)
        out.append(nxt * BLK)
        if rest:
            free[nxt + full] = SLOTS_PER_BLOCK - rest
        nxt += full + (1 if rest else 0)
    return out


_sizes = st.lists(st.one_of(st.integers(1, 300), st.integers(1, BLK), st.integers(BLK - 64, BLK + 64),
                            st.integers(1, 3 * BLK)), max_size=300)


@settings(max_examples=200, deadline=None)
@given(sizes=_sizes, first=st.integers(1, 1000))
def test_allocator_matches_model_and_rules(sizes: list[int], first: int) -> None:
    a = MetaBlockAllocator(first)
    offsets = [a.place(size) for size in sizes]
    assert offsets == _model(first, sizes)
    spans = sorted(zip(offsets, sizes, strict=True))
    for off, size in spans:
        assert off % 32 == 0 and off >= first * BLK  # §3 rule 1
        if size <= BLK:
            assert off // BLK == (off + size - 1) // BLK  # one block: tails never cross (§3 rule 2)
        else:
            assert off % BLK == 0
    for (off, size), (nxt, _) in itertools.pairwise(spans):
        assert off + size <= nxt  # no overlap
    assert a.end_block * BLK >= max((o + s for o, s in spans), default=first * BLK)


# --- the planner ----------------------------------------------------------------------------


def _naive_meta_blocks(plan: Plan) -> int:
    """Metadata blocks the previous, sequential layout used for the same items (§11 step 4)."""
    pos = plan.meta_start_block * BLK
    for i in range(plan.inode_count):
        item = (64 if plan.extended[i] else 32) + len(plan.xattr_body[i]) + plan.inline_len[i]
        pos = fmt.align(pos, 32)
        if pos % BLK and (item > BLK or pos % BLK + item > BLK):
            pos = fmt.align(pos, BLK)
        pos += item
    return fmt.align(pos, BLK) // BLK - plan.meta_start_block


def _item_bytes(plan: Plan) -> int:
    return sum(fmt.align((64 if plan.extended[i] else 32) + len(plan.xattr_body[i]) + plan.inline_len[i], 32)
               for i in range(plan.inode_count))


def _gappy(tb: TreeBuilder) -> None:
    """Tails the sequential layout cannot pack: 2132-byte items (one per block) leave 1952-byte
    gaps, which the later 1932-byte items fill exactly with best fit."""
    for k in range(40):
        tb.file(f"/d/a{k:02d}", pattern(2100, k))
    for k in range(40):
        tb.file(f"/d/b{k:02d}", pattern(1900, 100 + k), step=700)
    tb.file("/d/c-ext", pattern(4096 + 1000, 7), uid=70000)  # extended inode, one full block
    tb.symlink("/d/l", "a00")
    tb.dir("/e")


def _build_with_plan(path: Path, populate: object, *, tail_memory: int | None = None) -> tuple[TreeBuilder, Plan]:
    """Build like ``helpers.build`` and also return the plan (planning is pure, so it is the same)."""
    kw = {} if tail_memory is None else {"tail_memory": tail_memory}
    with open(path, "w+b") as out, ImageDataArea(out, **kw) as area:
        tb = TreeBuilder(area)
        populate(tb)  # type: ignore[operator]
        plan = plan_layout(tb.root, data_end_block=area.next_block, build_time=T, area_token=area.token)
        write_image(tb.root, area, build_time=T)
    return tb, plan


def test_plan_packs_tails_into_fewer_blocks(tmp_path: Path) -> None:
    _, plan = _build_with_plan(tmp_path / "g.erofs", _gappy)
    ours = plan.meta_end_block - plan.meta_start_block
    # Sequential: root, /d, /e and a00 share a block, a01..a39 one block each, b* two per block.
    assert _naive_meta_blocks(plan) == 1 + 39 + 20
    # Best fit: b00..b38 fill the gaps after a01..a39; b39, c-ext and l share one more block.
    assert ours == 1 + 39 + 1
    assert ours <= -(-_item_bytes(plan) // BLK) + 1
    assert plan.root_nid == 128  # root placed first at the start of block D (§3)
    # NIDs follow placement, not inode order: a later inode sits in an earlier block.
    assert any(b < a for a, b in itertools.pairwise(plan.nid))
    assert sorted(plan.nid) == [plan.nid[i] for i in plan.order]


def test_dot_entries_are_merged_in_byte_order() -> None:
    names = [b".-", b".!x", b"-", b"..a", b".a", b"a", b"\x01", b"\xff"]
    root = Inode(NodeKind.DIR, 0o755, children={n: Inode(NodeKind.FIFO, 0o644) for n in names})
    plan = plan_layout(root, data_end_block=1)
    first, counts = plan.dirs[0]
    assert plan.entry_names[first:first + sum(counts)] == sorted([*names, b".", b".."])
    # Names between "." and ".." exist (b"." < b".!x" < b".-" < b".."): both need their own bisection.
    dot = plan.entry_names.index(b".", first)
    assert plan.entry_names[dot:dot + 4] == [b".", b".!x", b".-", b".."]
    assert plan.entry_targets[dot] == plan.entry_targets[dot + 3] == 0  # the root's "." and ".." (§6.2)


# --- whole images -----------------------------------------------------------------------------


def _check_placement(path: Path) -> int:
    """Parse every inode from the bytes and check §3/§5.2 placement; returns the inode count."""
    raw = path.read_bytes()
    sb = fmt.Superblock.unpack(raw[1024:1152])
    base = sb.meta_blkaddr * BLK
    with ErofsImage.open(path) as img:
        nids = {st.nid for _, st in img.walk()}
    assert sb.root_nid == 128 and 0 not in nids
    spans = []
    for nid in nids:
        off = base + nid * 32
        i_format, icount, _ = fmt.INODE_HEAD.unpack_from(raw, off)
        if i_format & 1:
            isize, size = 64, fmt.EXTENDED_INODE.unpack_from(raw, off)[4]
        else:
            isize, size = 32, fmt.COMPACT_INODE.unpack_from(raw, off)[4]
        body_end = off + isize + fmt.xattr_ibody_size(icount)
        layout = (i_format >> 1) & 7
        tail = size % BLK if layout == fmt.LAYOUT_FLAT_INLINE else 0
        if layout == fmt.LAYOUT_FLAT_INLINE:
            assert tail > 0  # §5.2 condition 1
            # The tail lies in one block, the block of its inode (mkfs's stricter rule, §5.2).
            assert off // BLK == (body_end + tail - 1) // BLK, f"NID {nid}: inline tail crosses a block"
        if not i_format & 1:
            assert off // BLK == (off + 31) // BLK  # §3 rule 3
        spans.append((off, body_end + tail))
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "two inodes overlap"
    return len(nids)


def test_packed_image_fsck_mount_and_placement(tmp_path: Path) -> None:
    path = tmp_path / "g.erofs"
    tb, plan = _build_with_plan(path, _gappy)
    assert _check_placement(path) == plan.inode_count
    with ErofsImage.open(path) as img:
        assert diff(expected_snapshot(tb), reader_snapshot(img)) == []
        assert img.stat("/d/a00").layout == fmt.LAYOUT_FLAT_INLINE
        assert img.stat("/d/b39").layout == fmt.LAYOUT_FLAT_INLINE
    fsck(path)
    with kernel.mounted(path) as mnt:
        assert diff(expected_snapshot(tb), snapshot(mnt)) == []
        for name in os.listdir(mnt / "d"):  # every name looked up by path (binary search, §6.3)
            os.stat(mnt / "d" / name, follow_symlinks=False)
        assert os.stat(mnt).st_ino == 128


def _many_small(tb: TreeBuilder) -> None:
    """Shaped like the small-files benchmark layer: sizes 0..9000, nested dirs, some xattrs,
    mixed compact/extended inodes, symlinks and hard links."""
    rnd = random.Random(4)
    dirs = [f"/p{d // 8}/m{d}" for d in range(40)]
    for k in range(1500):
        size = rnd.choice([rnd.randint(0, 9000), rnd.randint(0, 600)])
        xattrs = {"user.k": pattern(rnd.randint(0, 300), k)} if k % 97 == 0 else {}
        node = tb.file(f"{rnd.choice(dirs)}/f{k}-{'x' * rnd.randint(0, 30)}", pattern(size, k),
                       step=rnd.choice([None, 1000]), mtime_sec=T - k if k % 5 == 0 else T, xattrs=xattrs)
        if k % 211 == 0:
            tb.link(f"{rnd.choice(dirs)}/hl{k}", node)
    for d in dirs[::3]:
        tb.symlink(f"{d}/link", "../" + "t" * rnd.randint(1, 200))


def test_many_small_files_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "m.erofs"
    tb, plan = _build_with_plan(path, _many_small)
    assert plan.meta_end_block - plan.meta_start_block <= -(-_item_bytes(plan) // BLK) * 1.02 + 1
    assert plan.meta_end_block - plan.meta_start_block < _naive_meta_blocks(plan)
    _check_placement(path)
    with ErofsImage.open(path) as img:
        assert diff(expected_snapshot(tb), reader_snapshot(img)) == []
    fsck(path)
    with kernel.mounted(path) as mnt:
        assert diff(expected_snapshot(tb), snapshot(mnt)) == []
    # Byte-identical when built again.
    again = tmp_path / "m2.erofs"
    _build_with_plan(again, _many_small)
    assert path.read_bytes() == again.read_bytes()


@pytest.mark.parametrize("tail_memory", [0, 1, 3000, 200_000])
def test_tail_memory_cap_spills_without_changing_bytes(tmp_path: Path, tail_memory: int) -> None:
    """Tails go to a temporary file once the in-memory cap is reached; the image is the same."""
    spilled: list[bool] = []
    in_memory: list[int] = []

    def populate(tb: TreeBuilder) -> None:
        _many_small(tb)
        spilled.append(tb.area.spilled)
        in_memory.append(tb.area.tails_in_memory)

    build(tmp_path / "ref.erofs", populate)
    assert spilled == [False]  # the default cap (TAIL_MEMORY) holds this tree's tails
    total_tails = in_memory[0]
    assert 0 < total_tails <= TAIL_MEMORY
    spilled.clear()
    in_memory.clear()
    build(tmp_path / "cap.erofs", populate, tail_memory=tail_memory)
    assert spilled == [total_tails > tail_memory]
    assert in_memory[0] <= tail_memory
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("ref.erofs", "cap.erofs")]
    assert digest[0] == digest[1]


def test_negative_tail_memory_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "x", "w+b") as out, pytest.raises(ValueError, match="tail_memory"):
        ImageDataArea(out, tail_memory=-1)


def _tar_of(tb: TreeBuilder, path: Path) -> None:
    """The same tree as a tar (all mtimes T, root entry included) for mkfs.erofs --tar=f."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(node: Inode, name: str) -> None:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.mode = node.mtime_sec, node.uid, node.gid, node.mode
            if node.kind is NodeKind.DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                assert node.children is not None
                for child_name, child in sorted(node.children.items()):
                    add(child, f"{name}/{child_name.decode()}")
            elif node.kind is NodeKind.LNK:
                info.type, info.linkname = tarfile.SYMTYPE, node.target.decode()
                tar.addfile(info)
            else:
                data = tb.contents[node]
                info.size = len(data)
                tar.addfile(info, fileobj=io.BytesIO(data))
        add(tb.root, ".")


def test_size_close_to_mkfs(tmp_path: Path) -> None:
    """On a small-files tree, our image is within 2% (+2 blocks) of mkfs.erofs's best-fit image."""
    def populate(tb: TreeBuilder) -> None:
        rnd = random.Random(9)
        for k in range(1200):
            tb.file(f"/d{k % 25}/f{k}", pattern(rnd.randint(0, 9000), k))

    ours = tmp_path / "ours.erofs"
    tb, size = build(ours, populate)
    tar = tmp_path / "t.tar"
    _tar_of(tb, tar)
    theirs = tmp_path / "mkfs.erofs"
    mkfs = tools().mkfs
    subprocess.run([str(mkfs), "--tar=f", "-b4096", f"-T{T}", "--mkfs-time", "-Uclear", str(theirs), str(tar)],
                   check=True, capture_output=True)
    assert size <= theirs.stat().st_size * 1.02 + 2 * BLK, (size, theirs.stat().st_size)


# --- the column helpers in format.py ------------------------------------------------------------

_dir_names = st.lists(st.binary(min_size=1, max_size=255), max_size=400, unique=True).map(sorted)


@settings(max_examples=100, deadline=None)
@given(names=_dir_names, seed=st.integers(0, 2**32))
def test_dirent_columns_match_the_tuple_api(names: list[bytes], seed: int) -> None:
    counts, last = fmt.dirent_blocks(names)
    assert counts == fmt.dirent_block_sizes(names)
    start = 0
    for k, count in enumerate(counts):
        block = names[start:start + count]
        rnd = random.Random(seed + k)
        nids = [rnd.randrange(1 << 40) for _ in block]
        types = [rnd.randrange(fmt.FT_MAX) for _ in block]
        packed = fmt.pack_dirents(block, nids, types)
        assert packed == fmt.pack_dirent_block(list(zip(block, nids, types, strict=True)))
        assert len(packed) <= BLK
        if k == len(counts) - 1:
            assert len(packed) == last  # the directory's i_size is (blocks - 1) * blksz + last (§6.3)
        start += count
    assert bool(counts) == bool(names)
