"""The pure-Python writer: fsck, real kernel mounts, our reader, determinism and refusals."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converter.erofs import format as fmt
from converter.erofs.layout import plan_layout
from converter.erofs.reader import ErofsImage
from converter.erofs.writer import ImageDataArea, write_image
from converter.errors import ErofsFormatError, LayerError
from converter.layers.model import OPAQUE_XATTR, ORIGIN_XATTR, Inode, NodeKind
from tests.support import kernel
from tests.support.compare import diff, snapshot

from .helpers import BytesData, T, TreeBuilder, build, expected_snapshot, fsck, pattern, reader_snapshot

MiB = 1 << 20
ODD_NAMES = [b"-x", b"!x", b" x", b"#x", b".a", b"..a", b"...", b"\x01ctl", b"\xff\xfe", b"caf\xc3\xa9",
             b"A" * 255, b"z" * 255, b"UPPER", b"lower", b"0digit"]
# A minimal-plus-named-user POSIX ACL in the kernel's xattr format (version 2, sorted entries).
ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in [
    (0x01, 7, 0xFFFFFFFF), (0x02, 6, 1000), (0x04, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)])


def kitchen_sink(tb: TreeBuilder) -> None:
    """Everything the brief lists, in one tree."""
    for size in (0, 1, 4064, 4065, 4095, 4096, 4097, 8192, 12288 + 4090, MiB + 3):
        tb.file(f"/sizes/f{size}", pattern(size, size), step=1000 if size > 8192 else None)
    # Tails that cannot be inline next to their inode: FLAT_PLAIN fallback with copied blocks.
    tb.file("/fallback/ext4040", pattern(8192 + 4040, 1), uid=70000)  # 64 + 4040 > 4096
    tb.file("/fallback/xattr2000", pattern(2 * 4096 + 2000, 2), xattrs={"user.big": b"v" * 3000})
    tb.file("/modes/suid", b"#!/bin/sh\n", mode=0o4755)
    tb.file("/modes/sgid", b"x", mode=0o2711)
    tb.file("/modes/none", b"y", mode=0o000)
    tb.dir("/modes/sticky", mode=0o1777)
    tb.file("/ids/big", b"ids", uid=70000, gid=4_000_000_000)
    tb.file("/ids/edge", b"ids", uid=65535, gid=65535)
    tb.file("/ids/gid-only", b"ids", gid=65536)
    tb.file("/times/ns", b"t", mtime_sec=T + 1, mtime_nsec=123_456_789)
    tb.file("/times/same-second-ns", b"t", mtime_sec=T, mtime_nsec=1)
    tb.file("/times/pre-1970", b"t", mtime_sec=-86400 * 365 + 7, mtime_nsec=5)
    tb.dir("/times/dir", mtime_sec=T + 99, mtime_nsec=999_999_999)
    tb.symlink("/links/short", "../sizes/f1")
    tb.symlink("/links/long4000", "d/" * 1999 + "xx")  # 4000 bytes: still a fast (inline) symlink
    tb.symlink("/links/long4090", "e/" * 2044 + "xx")  # 4090 bytes: one FLAT_PLAIN block
    tb.special("/dev/nvme", NodeKind.BLK, major=259, minor=300)
    tb.special("/dev/null", NodeKind.CHR, mode=0o666, major=1, minor=3)
    tb.special("/dev/fifo", NodeKind.FIFO)
    tb.special("/dev/sock", NodeKind.SOCK, mode=0o755)
    tb.whiteout("/ovl/gone")
    tb.dir("/ovl/opaque", xattrs={OPAQUE_XATTR: b"y"})
    tb.dir("/ovl", xattrs={ORIGIN_XATTR: b""})
    tb.file("/xattrs/mixed", b"x", xattrs={
        "user.bin": bytes(range(256)), "user.empty": b"", "trusted.t": b"\0\1\2", "security.s": b"sec",
        "system.posix_acl_access": ACL,
    })
    tb.file("/xattrs/many", b"m", xattrs={f"user.k{i:03d}": pattern(i % 23, i) for i in range(200)})
    tb.dir("/xattrs/hugedir", xattrs={"user.huge": pattern(5000, 5)})  # ibody > one block
    tb.file("/xattrs/hugefile", pattern(100, 6), xattrs={"user.huge": pattern(6000, 7)})
    shared = tb.file("/hard/a", pattern(5000, 8))
    tb.link("/hard/b", shared)
    tb.link("/hard/sub/c", shared)
    for i in range(3000):
        tb.file(b"/bigdir/e%05d" % i, b"" if i % 3 else b"%d" % i)
    for name in ODD_NAMES:
        tb.file(b"/bigdir/" + name, name)
        tb.file(b"/odd/" + name, name)
    # Exactly one full block of dirents: size 4096, FLAT_PLAIN directory (§6.3).
    used = 12 + 1 + 12 + 2
    k = 0
    while 4096 - used > 12 + 255 + 12 + 1:
        tb.file(b"/aligned/%s" % (b"n%03d" % k).ljust(100, b"_"), b"")
        used += 12 + 100
        k += 1
    tb.file(b"/aligned/" + b"z" * (4096 - used - 12), b"")
    # A directory whose final block is too full to inline: FLAT_PLAIN with 2 blocks.
    used = 12 + 1 + 12 + 2
    k = 0
    while 4096 - used > 12 + 40:
        tb.file(b"/fulltail/%s" % (b"m%03d" % k).ljust(40, b"_"), b"")
        used += 12 + 40
        k += 1


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TreeBuilder]:
    path = tmp_path_factory.mktemp("sink") / "sink.erofs"
    tb, size = build(path, kitchen_sink)
    assert path.stat().st_size == size
    return path, tb


def test_sink_fsck(sink: tuple[Path, TreeBuilder]) -> None:
    fsck(sink[0])


def test_sink_superblock(sink: tuple[Path, TreeBuilder]) -> None:
    path, _ = sink
    raw = path.read_bytes()
    sb = fmt.Superblock.unpack(raw[1024:1152])
    assert sb.root_nid == 128  # data-first: meta_blkaddr = D - 1 (§3)
    assert sb.feature_compat == fmt.COMPAT_SB_CHKSUM | fmt.COMPAT_MTIME
    assert sb.feature_incompat == 0
    assert sb.epoch == T and sb.fixed_nsec == 0
    assert sb.blocks * 4096 == len(raw)
    assert raw[:1024] == bytes(1024) and raw[1152:4096] == bytes(4096 - 1152)
    assert fmt.superblock_crc(raw[1024:4096]) == sb.checksum
    with ErofsImage.open(path) as img:
        assert sb.inos == sum(1 for _ in {st.nid for _, st in img.walk()})


def test_sink_reader_roundtrip(sink: tuple[Path, TreeBuilder]) -> None:
    path, tb = sink
    with ErofsImage.open(path) as img:
        assert diff(expected_snapshot(tb), reader_snapshot(img)) == []


def test_sink_layouts(sink: tuple[Path, TreeBuilder]) -> None:
    path, _ = sink
    plain, inline = fmt.LAYOUT_FLAT_PLAIN, fmt.LAYOUT_FLAT_INLINE
    expect = {
        "/sizes/f0": (plain, False), "/sizes/f1": (inline, False), "/sizes/f4064": (inline, False),
        "/sizes/f4065": (plain, False), "/sizes/f4096": (plain, False), "/sizes/f4097": (inline, False),
        "/sizes/f8192": (plain, False), "/fallback/ext4040": (plain, True), "/fallback/xattr2000": (plain, False),
        "/ids/edge": (inline, False), "/ids/big": (inline, True), "/ids/gid-only": (inline, True),
        "/times/ns": (inline, True), "/times/same-second-ns": (inline, True), "/links/long4000": (inline, False),
        "/links/long4090": (plain, False), "/aligned": (plain, False), "/fulltail": (plain, False),
        "/bigdir": (inline, False), "/dev/nvme": (plain, False), "/ovl/gone": (plain, False),
    }
    with ErofsImage.open(path) as img:
        got = {p: (img.stat(p).layout, img.stat(p).extended) for p in expect}
        assert got == expect
        assert img.stat("/aligned").size == 4096
        assert img.stat("/hard/a").nlink == 3
        assert img.stat("/").nlink == 2 + len(img.listdir("/"))  # every root child here is a directory
        assert img.stat("/ovl").nlink == 3
        assert [e.name for e in img.dirents("/odd")] == sorted([b".", b"..", *ODD_NAMES])


def test_sink_kernel_mount(sink: tuple[Path, TreeBuilder]) -> None:
    path, tb = sink
    with kernel.mounted(path) as mnt:
        assert diff(expected_snapshot(tb), snapshot(mnt)) == []
        # Lookups use binary search across blocks (§6.3): stat every name by path.
        for d in ("bigdir", "odd", "aligned", "fulltail"):
            names = os.listdir(os.fsencode(mnt / d))
            assert len(names) == len(tb.root.children[d.encode()].children)  # type: ignore[union-attr]
            for name in names:
                os.stat(os.fsencode(mnt / d) + b"/" + name, follow_symlinks=False)
        a, b, c = (os.stat(mnt / p) for p in ("hard/a", "hard/b", "hard/sub/c"))
        assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
        assert os.stat(mnt).st_ino == 128
        r = os.stat(mnt / "dev/nvme", follow_symlinks=False)
        assert (os.major(r.st_rdev), os.minor(r.st_rdev)) == (259, 300)
        assert os.stat(mnt / "times/ns").st_mtime_ns == (T + 1) * 10**9 + 123_456_789
        assert stat.S_IMODE(os.stat(mnt / "modes/sticky").st_mode) == 0o1777


def test_deterministic(tmp_path: Path) -> None:
    digests = set()
    for i in range(2):
        path = tmp_path / f"{i}.erofs"
        build(path, kitchen_sink)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_worked_example_data_first(tmp_path: Path) -> None:
    """§12's tree through the data-first writer: different NIDs, same facts."""

    def populate(tb: TreeBuilder) -> None:
        tb.file("/big.bin", bytes((7 * i + 3) % 251 for i in range(10240)))
        tb.dir("/dir")
        tb.symlink("/link", "small.txt")
        tb.file("/small.txt", b"hello\n")

    path = tmp_path / "ex.erofs"
    tb, size = build(path, populate)
    raw = path.read_bytes()
    sb = fmt.Superblock.unpack(raw[1024:1152])
    # big.bin's two full blocks are blocks 1-2; metadata starts at block 3, meta_blkaddr 2.
    assert (sb.meta_blkaddr, sb.root_nid, sb.inos, sb.blocks) == (2, 128, 5, 4)
    assert size == len(raw) == 4 * 4096
    assert raw[4096:3 * 4096] == bytes((7 * i + 3) % 251 for i in range(8192))
    # The root inode at block 3: compact, FLAT_INLINE, 040755, nlink 3, size 98, no full block.
    assert raw[3 * 4096:3 * 4096 + 24].hex() == "0400" "0000" "ed41" "0300" "62000000" "00000000" "ffffffff" "01000000"
    with ErofsImage.open(path) as img:
        assert [(e.name, e.file_type) for e in img.dirents("/")] == [
            (b".", 2), (b"..", 2), (b"big.bin", 1), (b"dir", 2), (b"link", 7), (b"small.txt", 1)]
        big = img.stat("/big.bin")
        assert (big.layout, big.ino, img.stat("/dir").size) == (fmt.LAYOUT_FLAT_INLINE, 2, 27)
        assert diff(expected_snapshot(tb), reader_snapshot(img)) == []
    fsck(path)
    with kernel.mounted(path) as mnt:
        assert diff(expected_snapshot(tb), snapshot(mnt)) == []


def test_empty_root(tmp_path: Path) -> None:
    path = tmp_path / "empty.erofs"
    build(path, lambda tb: None)
    assert path.stat().st_size == 2 * 4096  # superblock block + one metadata block
    fsck(path)
    with ErofsImage.open(path) as img:
        assert img.listdir("/") == [] and img.stat("/").nlink == 2


def test_overlay_whiteouts_and_opaque(tmp_path: Path) -> None:
    def lower(tb: TreeBuilder) -> None:
        tb.file("/a/file", b"lower")
        tb.file("/b/x", b"lower x")
        tb.file("/c/keep", b"keep")

    def upper(tb: TreeBuilder) -> None:
        tb.whiteout("/a/file")
        tb.dir("/a", xattrs={ORIGIN_XATTR: b""})
        tb.dir("/b", xattrs={OPAQUE_XATTR: b"y"})
        tb.file("/b/y", b"upper y")

    lo, up = tmp_path / "lower.erofs", tmp_path / "upper.erofs"
    build(lo, lower)
    build(up, upper)
    fsck(lo)
    fsck(up)
    with kernel.overlay([lo, up]) as merged:
        assert not (merged / "a/file").exists()
        assert sorted(os.listdir(merged / "b")) == ["y"]
        assert (merged / "b/y").read_bytes() == b"upper y"
        assert (merged / "c/keep").read_bytes() == b"keep"


# --- refusals ---------------------------------------------------------------------------------


def _write(tmp_path: Path, populate: object) -> None:
    build(tmp_path / "x.erofs", populate)  # type: ignore[arg-type]


def test_unknown_xattr_namespace_names_path(tmp_path: Path) -> None:
    with pytest.raises(ErofsFormatError, match=r"/d/f: xattr 'system\.foo'"):
        _write(tmp_path, lambda tb: tb.file("/d/f", b"x", xattrs={"system.foo": b"1"}))


@pytest.mark.parametrize("name", [b"a/b", b".", b"..", b"", b"n" * 256, b"nul\0"],
                         ids=["slash", "dot", "dotdot", "empty", "256", "nul"])
def test_invalid_names(tmp_path: Path, name: bytes) -> None:
    def populate(tb: TreeBuilder) -> None:
        assert tb.root.children is not None
        tb.root.children[name] = Inode(NodeKind.FIFO, 0o644, mtime_sec=T)

    with pytest.raises(ErofsFormatError, match="entry name"):
        _write(tmp_path, populate)


def test_directory_hard_link_and_cycle(tmp_path: Path) -> None:
    def linked(tb: TreeBuilder) -> None:
        d = tb.dir("/a")
        tb.link("/b", d)

    with pytest.raises(ErofsFormatError, match="cannot be hard links"):
        _write(tmp_path, linked)

    def cycle(tb: TreeBuilder) -> None:
        tb.link("/a/up", tb.root)

    with pytest.raises(ErofsFormatError, match="cannot be hard links"):
        _write(tmp_path, cycle)


@pytest.mark.parametrize(
    ("populate", "match"),
    [
        (lambda tb: tb.special("/d", NodeKind.CHR, major=4096), "device number"),
        (lambda tb: tb.symlink("/l", b""), "symlink target"),
        (lambda tb: tb.symlink("/l", b"x" * 4096), "symlink target"),
        (lambda tb: tb.file("/f", b"x", uid=1 << 32), "uid/gid"),
        (lambda tb: tb.file("/f", b"x", mtime_nsec=10**9), "mtime"),
        (lambda tb: tb.add("/f", Inode(NodeKind.REG, 0o644, size=3)), "data area"),
        (lambda tb: tb.add("/f", Inode(NodeKind.FIFO, 0o644, children={})), "not a directory"),
        (lambda tb: tb.file("/f", b"x", xattrs={"user.v": b"x" * 65536}), "exceeds 65535"),
    ],
    ids=["rdev", "empty-symlink", "long-symlink", "uid", "nsec", "no-data", "children", "xattr-value"],
)
def test_unrepresentable(tmp_path: Path, populate: object, match: str) -> None:
    with pytest.raises(ErofsFormatError, match=match):
        _write(tmp_path, populate)


def test_size_mismatch_with_data(tmp_path: Path) -> None:
    def populate(tb: TreeBuilder) -> None:
        node = tb.file("/f", b"abc")
        node.size = 4

    with pytest.raises(ErofsFormatError, match="size 4 but its data holds 3"):
        _write(tmp_path, populate)


def test_data_from_another_area(tmp_path: Path) -> None:
    with open(tmp_path / "other", "w+b") as other_out, ImageDataArea(other_out) as other:
        ref = other.add(BytesData(b"abc"), 3)

        def populate(tb: TreeBuilder) -> None:
            tb.add("/f", Inode(NodeKind.REG, 0o644, size=3, data=ref))

        with pytest.raises(ErofsFormatError, match="data area"):
            _write(tmp_path, populate)


@pytest.mark.parametrize("tail_memory", [None, 0, 1000], ids=["memory", "spool", "spill-midway"])
@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 5000])
def test_short_and_long_data(tmp_path: Path, size: int, tail_memory: int | None) -> None:
    """A file whose data is short or long leaves no trace, wherever its tail was being kept."""
    path = tmp_path / "x.erofs"
    kw = {} if tail_memory is None else {"tail_memory": tail_memory}
    with open(path, "w+b") as out, ImageDataArea(out, **kw) as area:
        tb = TreeBuilder(area)
        tb.file("/before", pattern(9000, 1))
        with pytest.raises(LayerError, match="shorter than its header"):
            area.add(BytesData(pattern(size - 1)), size)
        with pytest.raises(LayerError, match="longer than its header"):
            area.add(BytesData(pattern(size + 1), step=size + 1), size)
        tb.file("/after", pattern(size, 2))
        write_image(tb.root, area, build_time=T)
    with ErofsImage.open(path) as img:
        assert img.read_bytes("/before") == pattern(9000, 1)
        assert img.read_bytes("/after") == pattern(size, 2)
    fsck(path)


def test_add_after_write_and_bad_superblock_args(tmp_path: Path) -> None:
    with open(tmp_path / "x", "w+b") as out, ImageDataArea(out) as area:
        root = Inode(NodeKind.DIR, 0o755, children={})
        with pytest.raises(ErofsFormatError, match="UUID"):
            write_image(root, area, uuid=b"short")
        with pytest.raises(ErofsFormatError, match="volume name"):
            write_image(root, area, volume_name=b"sixteen-bytes-xx")
        write_image(root, area, uuid=bytes(range(16)), volume_name=b"label")
        with pytest.raises(ErofsFormatError, match="already written"):
            area.add(BytesData(b"x"), 1)
    fsck(tmp_path / "x")
    with ErofsImage.open(tmp_path / "x") as img:
        assert img.superblock.uuid == bytes(range(16))
        assert img.superblock.volume_name == b"label".ljust(16, b"\0")


def test_compact_needs_exact_build_time() -> None:
    """§4.6 via the planner alone (no I/O): any difference in mtime or a big id -> extended."""
    root = Inode(NodeKind.DIR, 0o755, mtime_sec=T, children={
        b"a": Inode(NodeKind.FIFO, 0o644, mtime_sec=T),
        b"b": Inode(NodeKind.FIFO, 0o644, mtime_sec=T, mtime_nsec=1),
        b"c": Inode(NodeKind.FIFO, 0o644, mtime_sec=T - 1),
        b"d": Inode(NodeKind.FIFO, 0o644, mtime_sec=T, uid=65536),
    })
    plan = plan_layout(root, data_end_block=1, build_time=T)
    assert list(zip(plan.names, plan.extended, strict=True)) == [
        (b"", False), (b"a", False), (b"b", True), (b"c", True), (b"d", True)]
    # The root (32 B) has a 79-byte inline directory tail: the next inode is 4 slots on.
    assert plan.nid == [128, 132, 133, 135, 137]
    assert plan.meta_blkaddr == 0 and plan.total_blocks == 2


def test_breadth_first_order() -> None:
    d = {name: Inode(NodeKind.DIR, 0o755, children={b"x": Inode(NodeKind.FIFO, 0)}) for name in (b"b", b"a")}
    root = Inode(NodeKind.DIR, 0o755, children={b"z": Inode(NodeKind.FIFO, 0), **d})
    plan = plan_layout(root, data_end_block=1)
    # i_ino is the index + 1 (§4.5)
    assert plan.names == [b"", b"a", b"b", b"z", b"x", b"x"]


# --- property test: random trees -> write -> read back ----------------------------------------

_SPECIAL_SIZES = [0, 1, 4063, 4064, 4065, 4095, 4096, 4097, 8191, 8192, 8193]
_names = st.one_of(
    st.sampled_from(ODD_NAMES),
    st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")),
)


def _xattr_dicts(prefixes: list[str]) -> st.SearchStrategy[dict[str, bytes]]:
    names = st.tuples(st.sampled_from(prefixes), st.text("abcxyz.-_09", min_size=1, max_size=12)).map("".join)
    return st.dictionaries(names, st.one_of(st.binary(max_size=40), st.just(b"V" * 3000)), max_size=4)


_xattrs = _xattr_dicts(["user.", "trusted.", "security."])
# The kernel hides user.* xattrs of anything but files and directories (getxattr gives ENODATA).
_special_xattrs = _xattr_dicts(["trusted.", "security."])
_mtimes = st.one_of(st.just((T, 0)), st.tuples(st.integers(-(2**40), 2**40), st.integers(0, 999_999_999)))
# (uid_t)-1 is the kernel's INVALID_UID: stored faithfully, but a mount shows it as 65534.
_ids = st.one_of(st.sampled_from([0, 1000, 65535, 65536, 2**32 - 2]), st.integers(0, 2**32 - 2))


@st.composite
def _leaf(draw: st.DrawFn) -> tuple[object, ...]:
    kind = draw(st.sampled_from(["f", "f", "f", "l", "c", "b", "p", "w"]))
    xattrs = draw(_xattrs if kind == "f" else _special_xattrs)
    meta = (draw(st.integers(0, 0o7777)), draw(_ids), draw(_ids), draw(_mtimes), xattrs)
    if kind == "f":
        size = draw(st.one_of(st.sampled_from(_SPECIAL_SIZES), st.integers(0, 3 * 4096)))
        return ("f", size, draw(st.integers(0, 1000)), *meta)
    if kind == "l":
        return ("l", draw(st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b)), *meta)
    if kind in "cb":
        return (kind, draw(st.integers(0, fmt.MAX_MAJOR)), draw(st.integers(0, fmt.MAX_MINOR)), *meta)
    return (kind, *meta)


_trees = st.recursive(
    _leaf(),
    lambda children: st.tuples(st.just("d"), st.dictionaries(_names, children, max_size=8),
                               st.integers(0, 0o7777), _ids, _ids, _mtimes, _xattrs),
    max_leaves=25,
)


def _populate(spec: tuple[object, ...], links: list[tuple[int, int, bytes]]) -> object:
    def run(tb: TreeBuilder) -> None:
        files: list[Inode] = []
        dirs: list[Inode] = [tb.root]

        def make(node_spec: tuple[object, ...]) -> Inode:
            kind = node_spec[0]
            mode, uid, gid, (msec, nsec), xattrs = node_spec[-5:]  # type: ignore[misc]
            kw = {"uid": uid, "gid": gid, "mtime_sec": msec, "mtime_nsec": nsec, "xattrs": dict(xattrs)}  # type: ignore[call-overload]
            if kind == "d":
                node = Inode(NodeKind.DIR, mode, children={}, **kw)  # type: ignore[arg-type]
                dirs.append(node)
                for name, child in node_spec[1].items():  # type: ignore[attr-defined]
                    node.children[name] = make(child)  # type: ignore[index]
                return node
            if kind == "f":
                size, seed = node_spec[1], node_spec[2]
                data = pattern(size, seed)  # type: ignore[arg-type]
                ref = tb.area.add(BytesData(data, step=3000), len(data)) if data else None
                node = Inode(NodeKind.REG, mode, size=len(data), data=ref, **kw)  # type: ignore[arg-type]
                tb.contents[node] = data
                files.append(node)
                return node
            if kind == "l":
                t = node_spec[1]
                return Inode(NodeKind.LNK, 0o777, size=len(t), target=t, **kw)  # type: ignore[arg-type]
            if kind in ("c", "b"):
                k = NodeKind.CHR if kind == "c" else NodeKind.BLK
                return Inode(k, mode, rdev_major=node_spec[1], rdev_minor=node_spec[2], **kw)  # type: ignore[arg-type]
            if kind == "w":
                return Inode(NodeKind.CHR, 0, **kw)  # type: ignore[arg-type]
            return Inode(NodeKind.FIFO, mode, **kw)  # type: ignore[arg-type]

        root_spec = spec if spec[0] == "d" else ("d", {b"only": spec}, 0o755, 0, 0, (T, 0), {})
        made = make(root_spec)
        tb.root.children = made.children
        tb.root.xattrs = made.xattrs
        tb.root.mode = made.mode
        for src, dst, name in links:
            if files:
                target_dir = dirs[dst % len(dirs)].children
                assert target_dir is not None
                target_dir.setdefault(name, files[src % len(files)])

    return run


def _check_roundtrip(path: Path, spec: tuple[object, ...], links: list[tuple[int, int, bytes]]) -> TreeBuilder:
    tb, _ = build(path, _populate(spec, links))  # type: ignore[arg-type]
    with ErofsImage.open(path) as img:
        assert diff(expected_snapshot(tb), reader_snapshot(img)) == []
    return tb


_links = st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99), _names), max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_trees, links=_links)
@example(spec=("f", 4095, 1, 0o644, 0, 0, (T, 0), {}), links=[])
@example(spec=("f", 4096, 2, 0o644, 0, 0, (T, 0), {}), links=[])
@example(spec=("f", 4097, 3, 0o644, 0, 0, (T, 0), {}), links=[])
@example(spec=("f", 4064, 4, 0o644, 70000, 0, (T, 0), {"user.a": b"V" * 3000}), links=[(0, 0, b"hl")])
def test_roundtrip_property(spec: tuple[object, ...], links: list[tuple[int, int, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.erofs"
        _check_roundtrip(path, spec, links)
        fsck(path)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_trees, links=_links)
def test_roundtrip_property_mounted(spec: tuple[object, ...], links: list[tuple[int, int, bytes]]) -> None:
    kernel.require_mount()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.erofs"
        tb = _check_roundtrip(path, spec, links)
        with kernel.mounted(path) as mnt:
            assert diff(expected_snapshot(tb), snapshot(mnt)) == []


class _RecordingFile(io.FileIO):
    """Records the offset and length of every write that reaches the file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "w+")
        self.writes: list[tuple[int, int]] = []
        self.truncated: list[int] = []

    def write(self, data: Any) -> int:
        pos = self.tell()
        n = super().write(data)
        self.writes.append((pos, n or 0))
        return n or 0

    def truncate(self, size: int | None = None) -> int:
        self.truncated.append(self.tell() if size is None else size)
        return super().truncate(size)


@pytest.mark.parametrize("codec", [None, "lz4", "zstd"])
def test_after_on_planned_the_file_only_grows_by_final_bytes(codec: str | None, tmp_path: Path) -> None:
    """write_image's promise to a streamed upload (convert_layer's on_data_final): once the
    layout is planned, each byte after the data is written once, in increasing order of offset,
    so every byte below the file's size is final, except block 0, written last (and handed over
    in on_planned). The kitchen sink has FLAT_PLAIN fallbacks, whose blocks are read back and
    copied after the metadata."""
    from converter.erofs.zcodec import Codec
    from converter.erofs.zwriter import CompressedDataArea

    raw = _RecordingFile(tmp_path / "img")
    planned: list[tuple[int, int, bytes]] = []
    with io.BufferedRandom(raw, 1 << 20) as out:
        area = ImageDataArea(out) if codec is None else CompressedDataArea(out, codec=Codec(codec))
        with area:
            tb = TreeBuilder(area, mtime=T)
            kitchen_sink(tb)
            z = area if isinstance(area, CompressedDataArea) else None
            size = write_image(tb.root, area, build_time=T,
                               feature_incompat=z.feature_incompat if z else 0, u1=z.u1 if z else 0,
                               compr_cfgs=z.compr_cfgs if z else b"",
                               on_planned=lambda block0, end: planned.append((len(raw.writes), end, block0)))
    assert len(planned) == 1
    first_after, data_end, block0 = planned[0]
    later = raw.writes[first_after:]
    assert later[-1] == (0, 4096)  # block 0, last
    grown = data_end
    assert (tmp_path / "img").stat().st_size == size
    for pos, n in later[:-1]:
        assert pos >= grown, f"a write at {pos} below the {grown} bytes already in the file"
        grown = pos + n
    assert grown == size and raw.truncated in ([], [size])
    image = (tmp_path / "img").read_bytes()
    assert image[:4096] == block0
    if codec is None:
        fsck(tmp_path / "img")
