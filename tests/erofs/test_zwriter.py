"""The python builder's own LZ4/LZ4HC compression, checked by fsck.erofs, the kernel and mkfs.erofs.

Every image must pass fsck.erofs with no ``<E>`` line, loop-mount showing exactly the source
files, be byte-identical when built twice, and show the same content as mkfs.erofs's image of
the same layer.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lz4.block
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converter.convert import layer as layer_module
from converter.convert.layer import Builder, LayerOptions, convert_layer
from converter.erofs import format as fmt
from converter.erofs.reader import ErofsImage
from converter.erofs.target import TargetFormat, parse_format
from converter.erofs.zcodec import Codec, DestSizeCompressor, SearchCompressor
from converter.erofs.zwriter import SEGMENT, CompressedDataArea, compress_segment
from converter.errors import LayerError, UsageError
from tests.support.kernel import fsck, mounted, require_mount

#: Every format the python builder compresses: lz4, lz4hc at its default and every level, and
#: zstd, DEFLATE and lzma (Linux 6.10 / 6.6 / 5.16) at their defaults and low and high levels;
#: then each algorithm with big pclusters (Linux 5.13), from two blocks to the 1 MiB maximum.
BIG = ["erofs+lz4,pcluster=16384", "erofs+lz4,pcluster=1048576", "erofs+lz4hc,level=12,pcluster=65536",
       "erofs+zstd,pcluster=131072", "erofs+deflate,pcluster=8192", "erofs+lzma,pcluster=65536"]
#: Last extents inline after the inode (ztailpacking, Linux 5.17), with and without big pclusters.
ZTAIL = ["erofs+lz4,ztailpacking", "erofs+lz4hc,ztailpacking", "erofs+zstd,ztailpacking", "erofs+deflate,ztailpacking",
         "erofs+lzma,ztailpacking", "erofs+lz4,pcluster=65536,ztailpacking", "erofs+zstd,pcluster=16384,ztailpacking"]
FORMATS = (["erofs+lz4", "erofs+lz4hc"] + [f"erofs+lz4hc,level={n}" for n in range(13)]
           + ["erofs+zstd", "erofs+zstd,level=1", "erofs+zstd,level=19", "erofs+deflate", "erofs+deflate,level=9",
              "erofs+lzma", "erofs+lzma,level=0", "erofs+lzma,level=9", "erofs+lzma,level=109"] + BIG + ZTAIL)
KINDS = ("random", "zeros", "text", "mixed")


def payload(kind: str, size: int, seed: int) -> bytes:
    """Deterministic file contents: incompressible, all zero, text-like, or runs of each."""
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    if kind == "text+random-tail":  # compressible, but its last 2,000 bytes are not
        return payload("text", size - 2000, seed) + rng.randbytes(2000)
    if kind == "text":
        words = [b"erofs", b"layer", b"block", b"cluster", b"\n", b"lz4", b"0123", b"  "]
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words) + b" "
        return bytes(out[:size])
    out = bytearray()
    while len(out) < size:
        out += payload(rng.choice(KINDS[:3]), rng.randint(1, 9000), rng.randrange(1 << 30))
    return bytes(out[:size])


FileSpec = tuple[str, str, int, int, int]  # name, kind, size, seed, xattr length (-1: none)
SIZES = st.one_of(st.sampled_from([0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 12288]), st.integers(0, 70000))
FILES = st.lists(st.tuples(st.sampled_from(["a", "b", "d/c", "d/e/f", "g", "h"]), st.sampled_from(KINDS), SIZES,
                           st.integers(0, 1000), st.integers(-1, 40)),
                 min_size=1, max_size=8, unique_by=lambda f: f[0])


def make_tar(files: list[FileSpec]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i, (name, kind, size, seed, xlen) in enumerate(files):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = size, 0o644, 1700000000 + i % 2  # compact and extended inodes
            if xlen >= 0:  # xattr areas of every length shift the map header's alignment
                ti.pax_headers = {"SCHILY.xattr.user.x": "v" * xlen}
            tf.addfile(ti, io.BytesIO(payload(kind, size, seed)))
    return buf.getvalue()


#: Our writer with COMPRESSED_FULL indexes (8 bytes per lcluster) instead of compact packs.
full_index_area = functools.partial(layer_module._compressed_area, compact=False)


def build(tar: bytes, out: Path, to: str, *, builder: str = "python", full_indexes: bool = False) -> Path:
    opts = LayerOptions(fmt=parse_format(to), builder=builder, bottom=True, build_time=1700000000)
    with pytest.MonkeyPatch.context() as mp:
        if full_indexes:
            mp.setattr(layer_module, "_compressed_area", full_index_area)
        convert_layer(io.BytesIO(tar), out, options=opts, layer="test.tar", workdir=out.parent)
    return out


def tree_of(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its contents (None for directories) and user.x xattr."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            found[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            xattr = os.getxattr(p, "user.x") if "user.x" in os.listxattr(p) else b"-"
            found[os.path.relpath(p, root)] = Path(p).read_bytes() + b"|" + xattr
    return found


def expected_tree(files: list[FileSpec]) -> dict[str, bytes | None]:
    want: dict[str, bytes | None] = {}
    for name, kind, size, seed, xlen in files:
        parts = name.split("/")
        for i in range(1, len(parts)):
            want["/".join(parts[:i])] = None
        want[name] = payload(kind, size, seed) + b"|" + (b"v" * xlen if xlen >= 0 else b"-")
    return want


def check_tree(files: list[FileSpec], to: str, tmp: Path, *, with_mkfs: bool = True,
               full_indexes: bool = False) -> Path:
    """The whole oracle: fsck, kernel contents, reproducibility and agreement with mkfs."""
    tar = make_tar(files)
    img = build(tar, tmp / "a.erofs", to, full_indexes=full_indexes)
    fsck(img)
    with mounted(img) as mnt:
        got = tree_of(mnt)
    assert got == expected_tree(files)
    with ErofsImage.open(img) as image:  # our reader decodes every file as the kernel does
        ours = {path.decode()[1:]: image.read_bytes(path) for path, st_ in image.walk() if stat.S_ISREG(st_.st_mode)}
    assert ours == {name: data.rpartition(b"|")[0] for name, data in got.items() if data is not None}
    again = build(tar, tmp / "b.erofs", to, full_indexes=full_indexes)
    assert img.read_bytes() == again.read_bytes(), "two builds differ"
    if with_mkfs and layer_module.mkfs_writes_wrong_contents(parse_format(to)):
        # mkfs.erofs is no oracle here (test_mkfs_lz4_big_pclusters_with_ztailpacking_is_refused):
        # the mkfs builder refuses the format, and our contents were checked against the source.
        with pytest.raises(UsageError, match="writes wrong contents"):
            build(tar, tmp / "m.erofs", to, builder="mkfs")
    elif with_mkfs:
        ref = build(tar, tmp / "m.erofs", to, builder="mkfs")
        with mounted(ref) as mnt:
            assert tree_of(mnt) == got
    return img


# A file of mixed content that mkfs.erofs 1.9.4 stores wrongly with lz4, pclusters of more than
# a block and ztailpacking (found by test_random_trees): uncompressed, wrong after its first block.
MKFS_LZ4_ZTAIL_BUG: FileSpec = ("a", "mixed", 8191, 204, -1)


@pytest.mark.parametrize("to", ["erofs+lz4,pcluster=16384,ztailpacking", "erofs+lz4hc,pcluster=65536,ztailpacking"])
def test_mkfs_lz4_big_pclusters_with_ztailpacking_is_refused(to: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The mkfs builder refuses lz4/lz4hc with big pclusters and ztailpacking, because mkfs.erofs
    writes such a file wrongly and exits 0, and fsck.erofs does not notice (docs/deviations.md).
    If the second half fails, mkfs.erofs got fixed: the refusal can then depend on its version."""
    tar = make_tar([MKFS_LZ4_ZTAIL_BUG])
    with pytest.raises(UsageError, match=r"--builder mkfs with .*writes wrong contents.*--builder python"):
        build(tar, tmp_path / "refused.erofs", to, builder="mkfs")
    want = payload(*MKFS_LZ4_ZTAIL_BUG[1:4])
    img = build(tar, tmp_path / "ours.erofs", to)
    fsck(img)
    with mounted(img) as mnt:
        assert (mnt / "a").read_bytes() == want
    monkeypatch.setattr(layer_module, "mkfs_writes_wrong_contents", lambda fmt: False)
    ref = build(tar, tmp_path / "mkfs.erofs", to, builder="mkfs")
    fsck(ref)  # exits 0, says nothing
    with mounted(ref) as mnt:
        got = (mnt / "a").read_bytes()
    assert len(got) == len(want) and got[:4096] == want[:4096] and got[4096:] != want[4096:]
    with ErofsImage.open(ref) as image:
        assert image.stat("/a").layout == fmt.LAYOUT_FLAT_PLAIN


@pytest.mark.parametrize("to", FORMATS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(files=FILES)
@example(files=[("a", "random", 4097, 1, -1), ("b", "zeros", 4097, 2, 3), ("d/c", "text", 4095, 3, 0),
                ("g", "zeros", 0, 0, -1), ("h", "text", 1, 0, 5), ("d/e/f", "zeros", 4096, 0, 1)])
def test_random_trees(to: str, files: list[FileSpec], tmp_path_factory: pytest.TempPathFactory) -> None:
    require_mount()
    check_tree(files, to, tmp_path_factory.mktemp("z"))


@pytest.mark.parametrize("to", ["erofs+lz4", "erofs+lz4hc,level=12", "erofs+zstd", "erofs+deflate", "erofs+lzma",
                                "erofs+lz4,pcluster=65536", "erofs+zstd,pcluster=16384", "erofs+lz4,ztailpacking",
                                "erofs+lzma,pcluster=16384,ztailpacking"])
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(files=FILES)
@example(files=[("a", "mixed", 70000, 1, 20), ("b", "zeros", 4097, 2, 28), ("d/c", "text", 60000, 3, 36),
                ("h", "text", 50000, 0, 44)])
def test_random_trees_with_full_indexes(to: str, files: list[FileSpec],
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The other index format, COMPRESSED_FULL (what Linux 5.4-5.12 read without a map header)."""
    require_mount()
    img = check_tree(files, to, tmp_path_factory.mktemp("f"), full_indexes=True)
    with ErofsImage.open(img) as image:
        assert fmt.LAYOUT_COMPRESSED_COMPACT not in {st_.layout for _, st_ in image.walk()}


@pytest.mark.parametrize("to", ["erofs+lz4", "erofs+lz4hc", "erofs+zstd", "erofs+deflate", "erofs+lzma",
                                "erofs+lzma,level=109", "erofs+lz4,pcluster=1048576", "erofs+zstd,pcluster=65536",
                                "erofs+lz4,ztailpacking", "erofs+deflate,pcluster=65536,ztailpacking"])
def test_multi_mib_files_span_segments(to: str, tmp_path: Path) -> None:
    """Files of several segments: compressible, incompressible (stored plain) and mixed."""
    require_mount()
    files: list[FileSpec] = [("a", "mixed", 2 * SEGMENT + 12345, 7, 4), ("b", "random", SEGMENT + 4097, 8, -1),
                             ("g", "zeros", 3 * SEGMENT, 9, -1), ("h", "text", SEGMENT, 10, 1)]
    img = check_tree(files, to, tmp_path)
    with ErofsImage.open(img) as image:
        layouts = {name: image.stat("/" + name).layout for name, *_ in files}
    assert layouts["b"] == fmt.LAYOUT_FLAT_INLINE  # incompressible: stored like the raw writer does
    assert {layouts[n] for n in "agh"} == {fmt.LAYOUT_COMPRESSED_COMPACT}
    assert img.stat().st_size < 2 * SEGMENT + SEGMENT + 4097 + SEGMENT  # zeros and text shrink


def test_sizes_and_layouts(tmp_path: Path) -> None:
    """Files that cannot gain stay plain; ones that can are compressed, with the LZ4 superblock bits."""
    require_mount()
    files: list[FileSpec] = [("a", "zeros", 4096, 0, -1), ("b", "zeros", 4097, 0, -1), ("g", "zeros", 8192, 0, -1),
                             ("h", "random", 20000, 1, -1), ("d/c", "text", 50000, 2, -1)]
    img = check_tree(files, "erofs+lz4", tmp_path, with_mkfs=False)
    with ErofsImage.open(img) as image:
        assert image.superblock.feature_incompat == fmt.INCOMPAT_LZ4_0PADDING
        layouts = {name: image.stat("/" + name).layout for name, *_ in files}
    assert layouts == {"a": fmt.LAYOUT_FLAT_PLAIN, "b": fmt.LAYOUT_FLAT_INLINE, "g": fmt.LAYOUT_COMPRESSED_COMPACT,
                       "h": fmt.LAYOUT_FLAT_INLINE, "d/c": fmt.LAYOUT_COMPRESSED_COMPACT}


@pytest.mark.parametrize("pcluster_blocks", [1, 4, 256])
def test_segments_are_cut_like_mkfs(pcluster_blocks: int) -> None:
    data = payload("mixed", 300000, 5)
    seg = compress_segment(data, codec=Codec.LZ4, level=None, pcluster_blocks=pcluster_blocks)
    assert sum(n for _, n, _ in seg.extents) == len(data)
    assert len(seg.blocks) == sum(nblocks for _, _, nblocks in seg.extents) * fmt.BLOCK_SIZE
    la = at = 0
    for k, (kind, n, nblocks) in enumerate(seg.extents):
        blocks = seg.blocks[at:at + nblocks * fmt.BLOCK_SIZE]
        if kind == fmt.Z_LCLUSTER_HEAD1:  # an LZ4 block right-aligned after zeros (0-padding)
            assert n > nblocks * fmt.BLOCK_SIZE and 1 <= nblocks <= pcluster_blocks
            stream = blocks.lstrip(b"\0")
            assert len(blocks) - len(stream) < fmt.BLOCK_SIZE  # in the fewest blocks that hold it
            assert lz4.block.decompress(stream, uncompressed_size=n) == data[la:la + n]
        else:  # raw: one block of input from the start of the block, zero-filled
            assert kind == fmt.Z_LCLUSTER_PLAIN and nblocks == 1
            assert n == fmt.BLOCK_SIZE or k == len(seg.extents) - 1
            assert blocks == data[la:la + n] + bytes(fmt.BLOCK_SIZE - n)
        la += n
        at += len(blocks)
    kinds = {kind for kind, _, _ in seg.extents}
    # Random runs of up to 9000 bytes are stored raw, unless a 1 MiB pcluster absorbs them.
    assert kinds == {fmt.Z_LCLUSTER_HEAD1} | ({fmt.Z_LCLUSTER_PLAIN} if pcluster_blocks < 256 else set())
    if pcluster_blocks > 1:
        assert max(nblocks for _, _, nblocks in seg.extents) > 1
    zeros = compress_segment(bytes(SEGMENT), codec=Codec.LZ4HC, level=12)
    assert len(zeros.extents) <= 5  # about 1 MB of zeros per 4 KiB LZ4 block


@pytest.mark.parametrize("codec", [Codec.LZ4, Codec.DEFLATE])
def test_worker_count_and_queue_do_not_change_the_image(codec: Codec, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Files, and the segments of bigger ones, are compressed in the background and written in
    file order: neither the number of workers nor how many units wait may change a byte (two big
    files in a row, small files before, between and after them)."""
    from converter.convert.layer import read_layer
    from converter.erofs import zwriter
    from converter.erofs.writer import write_image

    files: list[FileSpec] = [(f"s{i}", KINDS[i % 4], 4096 * (i % 5) + i, i, -1) for i in range(40)]
    tar = make_tar([*files[:20], ("a", "mixed", 3 * SEGMENT + 5, 1, -1), ("c", "random", SEGMENT + 9, 3, -1),
                    *files[20:], ("b", "text", 70000, 2, -1)])
    images = []
    for workers, queue in ((1, 64), (3, 64), (2, 1), (2, 0), (2, 1024)):
        monkeypatch.setattr(zwriter, "QUEUE_FILES", queue)
        path = tmp_path / f"w{workers}-{queue}.erofs"
        with open(path, "w+b") as out, CompressedDataArea(out, codec=codec, workers=workers) as area:
            tree = read_layer(io.BytesIO(tar), sink=area, options=LayerOptions(fmt=TargetFormat(codec.value)),
                              lower=None, media_type=None, layer="w.tar")
            write_image(tree.root, area, feature_incompat=area.feature_incompat, u1=area.u1,
                        compr_cfgs=area.compr_cfgs)
        images.append(path.read_bytes())
        fsck(path)
    assert all(image == images[0] for image in images[1:])
    with mounted(tmp_path / "w1-64.erofs") as mnt:
        assert tree_of(mnt) == expected_tree([*files, ("a", "mixed", 3 * SEGMENT + 5, 1, -1),
                                              ("c", "random", SEGMENT + 9, 3, -1), ("b", "text", 70000, 2, -1)])


@pytest.mark.parametrize(("builder", "to", "resolved"), [
    ("auto", "erofs", "python"), ("auto", "erofs+lz4", "python"), ("auto", "erofs+zstd", "python"),
    ("auto", "erofs+deflate,level=9", "python"), ("auto", "erofs+lzma", "python"),
    ("python", "erofs+lzma,level=109", "python"), ("mkfs", "erofs+lzma", "mkfs"),
    ("python", "erofs", "python"), ("python", "erofs+lz4", "python"), ("python", "erofs+lz4hc,level=3", "python"),
    ("python", "erofs+zstd,level=5", "python"), ("python", "erofs+deflate", "python"),
    ("mkfs", "erofs+lz4", "mkfs"), ("mkfs", "erofs", "mkfs"),
])
def test_builder_selection(builder: str, to: str, resolved: str) -> None:
    options = LayerOptions(fmt=parse_format(to), builder=builder)  # a string is converted to the enum
    assert options.builder is Builder(builder)
    assert options.resolved_builder() is Builder(resolved)


def test_lzma_without_liblzma_is_a_tool_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No usable liblzma: one clear message naming what to install, before any layer is read."""
    import ctypes.util

    from converter.erofs import microlzma
    from converter.errors import ToolError

    microlzma._liblzma.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "liblzma-missing.so.5")
    try:
        with pytest.raises(ToolError, match=r"liblzma .*--builder mkfs"):
            CompressedDataArea(io.BytesIO(), codec=Codec.LZMA)
    finally:
        microlzma._liblzma.cache_clear()


def test_deflate_without_the_deflate_package_is_a_tool_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No libdeflate (the deflate package): one clear message naming what to install, before any
    layer is read; raw and the other formats still work."""
    import sys

    from converter.erofs import zcodec
    from converter.errors import ToolError

    zcodec._deflate.cache_clear()
    monkeypatch.setitem(sys.modules, "deflate", None)  # import deflate -> ImportError
    try:
        with pytest.raises(ToolError, match=r"libdeflate .*pip install deflate.*--builder mkfs"):
            CompressedDataArea(io.BytesIO(), codec=Codec.DEFLATE)
        CompressedDataArea(io.BytesIO(), codec=Codec.ZSTD).close()
        assert compress_segment(payload("text", 9000, 1), codec=Codec.ZSTD, level=None).compressed
    finally:
        zcodec._deflate.cache_clear()


class _Short:
    """File data that ends early (a truncated tar): ``size`` is promised, ``have`` arrives."""

    def __init__(self, have: bytes) -> None:
        self._have = have

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        for i in range(0, len(self._have), size):
            yield self._have[i:i + size]


@pytest.mark.parametrize("queue", [0, 64])
@pytest.mark.parametrize("have", [3 * SEGMENT + 10, 5000, 3 * SEGMENT + 12000])
def test_short_or_long_file_is_refused_and_leaves_nothing_behind(have: int, queue: int, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose data is shorter or longer than announced fails; the image built from the
    files around it is still valid, holds exactly them, and is byte for byte the image built
    without the failed file: its segments already written (a queue of 0 writes each at once)
    are overwritten, those still queued are dropped."""
    from converter.erofs import zwriter
    from converter.erofs.writer import write_image
    from converter.layers.model import Inode, NodeKind

    monkeypatch.setattr(zwriter, "QUEUE_FILES", queue)
    size = 3 * SEGMENT + 11000
    good = payload("mixed", 3 * SEGMENT + 777, 4)
    images = []
    for fail in (True, False):
        path = tmp_path / f"img-{fail}.erofs"
        with open(path, "w+b") as out, CompressedDataArea(out, codec=Codec.LZ4HC, workers=2) as area:
            first = area.add(_Short(payload("text", 9000, 1)), 9000)
            if fail:
                with pytest.raises(LayerError, match=r"shorter|longer"):
                    area.add(_Short(payload("mixed", have, 3)), size)
            second = area.add(_Short(good), len(good))
            root = Inode(kind=NodeKind.DIR, mode=0o755, children={})
            assert root.children is not None
            root.children[b"a"] = Inode(kind=NodeKind.REG, mode=0o644, size=9000, data=first)
            root.children[b"b"] = Inode(kind=NodeKind.REG, mode=0o644, size=len(good), data=second)
            write_image(root, area, feature_incompat=area.feature_incompat, u1=area.u1)
        images.append(path.read_bytes())
        fsck(path)
    assert images[0] == images[1]
    with mounted(tmp_path / "img-True.erofs") as mnt:
        assert (mnt / "a").read_bytes() == payload("text", 9000, 1)
        assert (mnt / "b").read_bytes() == good
        assert sorted(p.name for p in mnt.iterdir()) == ["a", "b"]


@pytest.mark.parametrize(("to", "incompat", "u1", "cfgs"), [
    ("erofs+lz4", 0x1, 0xFFFF, b""),
    ("erofs+zstd", 0x3, 1 << 3, bytes.fromhex("0600 0005 00000000")),
    ("erofs+deflate", 0x3, 1 << 2, bytes.fromhex("0600 0f00 00000000")),
    ("erofs+lzma", 0x3, 1 << 1, bytes.fromhex("0e00 00800000 0000 0000000000000000")),
    # Big pclusters (as mkfs.erofs -C writes them): LZ4 then needs a record with its pcluster
    # size in blocks; lzma's dictionary is 4 pclusters; zstd and DEFLATE records are unchanged.
    ("erofs+lz4,pcluster=65536", 0x3, 1 << 0, bytes.fromhex("0e00 ffff 1000 00000000000000000000")),
    ("erofs+lz4hc,pcluster=1048576", 0x3, 1 << 0, bytes.fromhex("0e00 ffff 0001 00000000000000000000")),
    ("erofs+lzma,pcluster=65536", 0x3, 1 << 1, bytes.fromhex("0e00 00000400 0000 0000000000000000")),
    ("erofs+zstd,pcluster=16384", 0x3, 1 << 3, bytes.fromhex("0600 0005 00000000")),
    ("erofs+lz4,ztailpacking", 0x11, 0xFFFF, b""),  # ZTAILPACKING (Linux 5.17)
    ("erofs+zstd,ztailpacking", 0x13, 1 << 3, bytes.fromhex("0600 0005 00000000")),
])
def test_superblock_declares_the_algorithm(to: str, incompat: int, u1: int, cfgs: bytes, tmp_path: Path) -> None:
    """LZ4 needs only 0-padding; others declare COMPR_CFGS, their bitmap and a config record."""
    img = build(make_tar([("a", "text", 50000, 1, -1)]), tmp_path / "a.erofs", to)
    with ErofsImage.open(img) as image:
        sb = image.superblock
        assert (sb.feature_incompat, sb.u1) == (incompat, u1)
        assert image.stat("/a").layout == fmt.LAYOUT_COMPRESSED_COMPACT
    raw = img.read_bytes()
    at = fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size
    assert raw[at:at + 16] == cfgs.ljust(16, b"\0")


@pytest.mark.parametrize("to", ["erofs+lz4", "erofs+lz4hc,level=12", "erofs+zstd", "erofs+deflate", "erofs+lzma"])
def test_sample_image_layers_through_our_writer(to: str, tmp_path: Path) -> None:
    """Every layer of the sample image: fsck clean, the kernel shows GNU tar's extraction. Its files
    are random data, so all of them must be stored plain (as mkfs.erofs stores them too); the
    compressed paths are covered by the trees above."""
    from tests.test_layer_e2e import assert_matches_gnu_tar, sample_tar_files

    require_mount()
    layouts: set[int] = set()
    for i, tar in enumerate(sample_tar_files(tmp_path)):
        img = tmp_path / f"l{i}.erofs"
        opts = LayerOptions(fmt=parse_format(to), builder="python", bottom=i == 0)
        with open(tar, "rb") as src:
            convert_layer(src, img, options=opts, layer=tar.name, workdir=tmp_path)
        assert_matches_gnu_tar(img, tar, tmp_path / f"x{i}", bottom=i == 0)
        with ErofsImage.open(img) as image:
            layouts |= {st_.layout for _, st_ in image.walk()}
    assert layouts <= {fmt.LAYOUT_FLAT_PLAIN, fmt.LAYOUT_FLAT_INLINE}


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.DEFLATE])
def test_search_gives_up_early_on_incompressible_input(codec: Codec) -> None:
    """Random data is stored raw, so the search must not hunt for its exact fitting length."""
    probes: list[int] = []

    class Counting(SearchCompressor):
        def _probe(self, pos: int, n: int) -> Any:
            probes.append(n)
            return super()._probe(pos, n)

    data = payload("random", 64 * fmt.BLOCK_SIZE, 11)
    comp = Counting(codec, None, data, fmt.BLOCK_SIZE)
    floor = fmt.BLOCK_SIZE + 1
    for pos in range(0, len(data) - floor, fmt.BLOCK_SIZE):
        assert comp.compress(pos, floor=floor) == (0, b"")
    assert len(probes) <= 63 + 1  # one probe per block once the run of raw blocks has started
    # Compressible input is still searched to the longest length that fits.
    text = payload("text", 200000, 3)
    consumed, stream = Counting(codec, None, text, fmt.BLOCK_SIZE).compress(0, floor=floor)
    assert consumed > floor and len(stream) <= fmt.BLOCK_SIZE


@pytest.mark.parametrize("codec", [Codec.LZ4, Codec.LZ4HC])
def test_destsize_offers_little_input_after_a_block_stored_raw(codec: Codec) -> None:
    """After an attempt that did not shrink, LZ4HC is offered 1.25 blocks, not its usual
    window (it searched all 16 KiB it was offered for each raw block of random data; LZ4's
    fast encoder keeps its window); the compressible input after such a run is still
    compressed as a fresh compressor does."""
    offers: list[int] = []

    class Counting(DestSizeCompressor):
        def _call(self, pos: int, offer: int) -> int:
            offers.append(offer)
            return super()._call(pos, offer)

    blk = fmt.BLOCK_SIZE
    text = payload("text", 200000, 3)
    data = payload("random", 64 * blk, 11) + text
    comp = Counting(codec, None, data, blk)
    for pos in range(0, 64 * blk, blk):
        consumed, _ = comp.compress(pos)
        assert consumed <= blk  # stored raw by compress_segment, which moves on one block
    probe = blk + blk // 4 if codec is Codec.LZ4HC else 16 << 10
    assert offers == [16 << 10] + [probe] * 63
    consumed, stream = comp.compress(64 * blk)
    assert (consumed, stream) == DestSizeCompressor(codec, None, text, blk).compress(0)
    assert consumed > blk >= len(stream)
    assert lz4.block.decompress(stream, uncompressed_size=consumed) == text[:consumed]
    if codec is Codec.LZ4HC:
        assert offers[64] == probe and offers[65] >= 4 * probe  # the probe, then the window


def test_search_stops_at_a_stream_that_leaves_no_room_for_more_input() -> None:
    """A fitting stream whose room left would hold at most 64 more bytes of input at its ratio
    ends the search: no overflowing probe is needed to prove it. A codec that halves its input
    exactly: the first search brackets 8,192 bytes (3 probes); the next starts there, fills
    the block and stops at once, and one that starts 300 bytes short (room for 150 more bytes of
    output) searches on."""
    probes: list[int] = []

    class Halving(SearchCompressor):
        def _probe(self, pos: int, n: int) -> Any:
            probes.append(n)
            return b"\x01" * ((n + 1) // 2)

    comp = Halving(Codec.ZSTD, None, bytes(1 << 20), fmt.BLOCK_SIZE)
    assert comp.compress(0) == (8192, b"\x01" * 4096) and len(probes) == 3
    probes.clear()
    assert comp.compress(8192) == (8192, b"\x01" * 4096) and probes == [8192]
    probes.clear()
    short = Halving(Codec.ZSTD, None, bytes(1 << 20), fmt.BLOCK_SIZE)
    short._last = 8192 - 300
    consumed, _ = short.compress(0)
    assert 8192 - 64 <= consumed <= 8192 and len(probes) > 1


@pytest.mark.parametrize("codec", [Codec.LZ4, Codec.ZSTD, Codec.LZMA])
def test_big_pclusters_store_incompressible_input_raw_without_recompressing(codec: Codec,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An attempt that does not shrink covers many blocks with big pclusters: they are all stored
    raw, instead of compressing nearly the same input again from each next block."""
    from converter.erofs import zwriter

    calls: list[int] = []
    real = zwriter.make_compressor

    def counting(*args: Any, **kwargs: Any) -> Any:
        comp = real(*args, **kwargs)
        inner = comp.compress

        def compress(pos: int, *, floor: int = 0) -> tuple[int, bytes]:
            calls.append(pos)
            return inner(pos, floor=floor)

        comp.compress = compress  # type: ignore[method-assign]
        return comp

    monkeypatch.setattr(zwriter, "make_compressor", counting)
    data = payload("random", 64 * fmt.BLOCK_SIZE, 12)
    seg = compress_segment(data, codec=codec, level=None, pcluster_blocks=16)
    assert [kind for kind, _, _ in seg.extents] == [fmt.Z_LCLUSTER_PLAIN] * 64
    assert seg.blocks == data
    assert len(calls) <= 64 // 15 + 2  # one attempt per ~16 blocks, not one per block


@pytest.fixture(scope="module")
def bench_small_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bench's small-files layer (bench/inputs.py) at 3,000 files instead of 50,000."""
    from bench import inputs

    rng = random.Random(inputs.SEED)
    pool = inputs.text_pool(rng, 1 << 20)
    tar = tmp_path_factory.mktemp("bench") / "smallfiles.tar"
    inputs.write_tree_tar(inputs.small_files_tree(3000, pool_len=len(pool)), tar, pool, inputs.SEED)
    return tar


@pytest.mark.parametrize("to", ["erofs+lz4", "erofs+lz4hc", "erofs+zstd", "erofs+deflate", "erofs+lzma",
                                "erofs+lz4,pcluster=65536", "erofs+zstd,pcluster=1048576", "erofs+lz4,ztailpacking",
                                "erofs+zstd,pcluster=65536,ztailpacking"])
def test_bench_small_files_layer_through_our_writer(to: str, bench_small_files: Path, tmp_path: Path) -> None:
    """The bench's node_modules/site-packages shaped layer: fsck clean, the kernel shows GNU tar's
    extraction, our reader agrees with the kernel, and its text files of over a block are compressed
    (the smaller ones, most of the layer, cannot gain with 4 KiB blocks)."""
    from tests.test_layer_e2e import assert_matches_gnu_tar

    require_mount()
    img = tmp_path / "l.erofs"
    with open(bench_small_files, "rb") as src:
        convert_layer(src, img, options=LayerOptions(fmt=parse_format(to), builder="python", bottom=True),
                      layer="smallfiles.tar", workdir=tmp_path)
    assert_matches_gnu_tar(img, bench_small_files, tmp_path / "x", bottom=True)
    with ErofsImage.open(img) as image, mounted(img) as mnt:
        layouts = []
        for path, st_ in image.walk():
            if stat.S_ISREG(st_.st_mode):
                layouts.append(st_.layout)
                assert image.read_bytes(path) == (mnt / path.decode()[1:]).read_bytes()
    assert layouts.count(fmt.LAYOUT_COMPRESSED_COMPACT) > 200


class _HugeTar(io.RawIOBase):
    """A tar stream of one file of ``size`` bytes: text, then zeros, then text; never in memory."""

    HEAD = payload("text", 1 << 20, 21)
    TAIL = payload("text", 5000, 22)

    def __init__(self, size: int) -> None:
        info = tarfile.TarInfo("huge")
        info.size, info.mode, info.mtime = size, 0o644, 1700000000
        self._header = info.tobuf(format=tarfile.PAX_FORMAT)
        self._size = size
        self._total = len(self._header) + size + (-size % 512) + 1024
        self._pos = 0

    def readable(self) -> bool:
        return True

    def byte_at(self, start: int, n: int) -> bytes:
        """File bytes [start, start + n)."""
        out = bytearray(n)
        for base, part in ((0, self.HEAD), (self._size - len(self.TAIL), self.TAIL)):
            lo, hi = max(start, base), min(start + n, base + len(part))
            if lo < hi:
                out[lo - start:hi - start] = part[lo - base:hi - base]
        return bytes(out)

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = min(len(view), self._total - self._pos)
        h = len(self._header)
        done = 0
        while done < n:
            pos = self._pos + done
            if pos < h:
                take = min(n - done, h - pos)
                view[done:done + take] = self._header[pos:pos + take]
            elif pos < h + self._size:
                take = min(n - done, h + self._size - pos)
                view[done:done + take] = self.byte_at(pos - h, take)
            else:
                take = n - done
                view[done:done + take] = bytes(take)
            done += take
        self._pos += n
        return n


@pytest.mark.parametrize("to", ["erofs+lz4", "erofs+zstd,pcluster=65536"])
def test_a_file_over_4_gib(to: str, tmp_path: Path) -> None:
    """A compressed file larger than 32 bits (extended inode, over a million lclusters of compact
    index): fsck clean, and the kernel and our reader read exactly its bytes."""
    require_mount()
    size = (4 << 30) + 12345
    src = _HugeTar(size)
    img = tmp_path / "huge.erofs"
    convert_layer(io.BufferedReader(src, 1 << 20), img, options=LayerOptions(fmt=parse_format(to), bottom=True),
                  layer="huge.tar", workdir=tmp_path)
    assert img.stat().st_size < 64 << 20  # mostly zeros: it compresses
    fsck(img)
    want = hashlib.sha256()
    for start in range(0, size, 64 << 20):
        want.update(src.byte_at(start, min(64 << 20, size - start)))
    with mounted(img) as mnt:
        got = hashlib.sha256()
        with open(mnt / "huge", "rb") as f:
            while chunk := f.read(64 << 20):
                got.update(chunk)
        assert got.hexdigest() == want.hexdigest()
    with ErofsImage.open(img) as image:
        st_ = image.stat("/huge")
        assert (st_.size, st_.layout) == (size, fmt.LAYOUT_COMPRESSED_COMPACT)
        ours = hashlib.sha256()
        for chunk in image.read_file("/huge", chunk_size=64 << 20):
            ours.update(chunk)
        assert ours.hexdigest() == want.hexdigest()


@pytest.mark.parametrize("to", ["erofs+lz4,ztailpacking", "erofs+zstd,pcluster=16384,ztailpacking"])
def test_ztailpacking_puts_last_extents_inline(to: str, tmp_path: Path) -> None:
    """Compressed tails go after the inode: files of a block or less are compressed too, no
    file spends a block on its last extent, and an inode whose index is longer than a block
    still gets its inline pcluster inside one block (the kernel requires it)."""
    require_mount()
    files: list[FileSpec] = [("a", "text", 3000, 1, -1), ("b", "text", 9000, 2, 7), ("g", "text", 9 << 20, 3, 11),
                             ("h", "random", 3000, 4, -1), ("d/c", "text", 600, 5, -1)]
    img = check_tree(files, to, tmp_path)
    (tmp_path / "p").mkdir()
    plain = check_tree(files, to.replace(",ztailpacking", ""), tmp_path / "p", with_mkfs=False)
    with ErofsImage.open(img) as image:
        assert image.superblock.feature_incompat & fmt.INCOMPAT_ZTAILPACKING
        st_ = {name: image.stat("/" + name) for name, *_ in files}
    assert {st_[n].layout for n in ("a", "b", "g", "d/c")} == {fmt.LAYOUT_COMPRESSED_COMPACT}
    assert st_["h"].layout == fmt.LAYOUT_FLAT_INLINE  # random: stays plain
    blocks = {}
    for image_path in (img, plain):  # st_blocks counts pcluster blocks (i_u): not the inline ones
        with mounted(image_path) as mnt:
            blocks[image_path] = [os.stat(mnt / name).st_blocks for name in ("a", "b", "g")]
    assert blocks[img][0] == 0  # 3000 bytes: wholly inline
    assert blocks[img][1] < blocks[plain][1] and blocks[img][2] <= blocks[plain][2]
    if "pcluster" not in to:  # with one-block pclusters the 9 MiB file's last extent always fits inline
        assert blocks[img][2] < blocks[plain][2]


@pytest.mark.parametrize("to", ["erofs+lz4,pcluster=65536,ztailpacking", "erofs+zstd,pcluster=65536,ztailpacking",
                                "erofs+lzma,pcluster=65536,ztailpacking"])
def test_ztailpacking_recompresses_a_long_last_extent(to: str, tmp_path: Path) -> None:
    """A last extent in a big pcluster whose last block is partly empty is compressed again into
    one block fewer, and what that leaves over goes inline (as mkfs.erofs -Eztailpacking does):
    the file takes fewer blocks than without ztailpacking, and the image checks out as always."""
    require_mount()
    files: list[FileSpec] = [("t", "text", 100_000, 1, -1), ("u", "text", 300_000, 2, -1),
                             ("v", "text", 70_000, 3, -1)]
    img = check_tree(files, to, tmp_path)
    (tmp_path / "p").mkdir()
    plain = check_tree(files, to.replace(",ztailpacking", ""), tmp_path / "p", with_mkfs=False)
    blocks = {}
    for image_path in (img, plain):
        with mounted(image_path) as mnt:
            blocks[image_path] = [os.stat(mnt / name).st_blocks for name, *_ in files]
    # (a rest that would not fit inline keeps the longer extent: never more blocks)
    assert all(ours <= without for ours, without in zip(blocks[img], blocks[plain], strict=True)), blocks
    assert sum(blocks[img]) < sum(blocks[plain]), blocks


@pytest.mark.parametrize("level", [1, 6, 9])
def test_deflate_streams_are_one_shot_compressions_of_their_input(level: int) -> None:
    """Every DEFLATE stream is libdeflate's compression of its extent's input at the level asked
    (a pure function of input and level), decodes to it, and fills its block: 64 more bytes of
    input would not have fitted, or the room it leaves holds at most 64 bytes of input at its
    ratio (the search stops within about 64 bytes)."""
    import zlib

    import deflate

    rng = random.Random(level)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randrange(2, 9))) for _ in range(2000)]
    data = b" ".join(rng.choice(words) for _ in range(60_000)) + os.urandom(20_000) + bytes(50_000)
    seg = compress_segment(data, codec=Codec.DEFLATE, level=level)
    pos = block = 0
    for kind, length, nblocks in seg.extents:
        raw = seg.blocks[block * 4096:(block + nblocks) * 4096]
        if kind == fmt.Z_LCLUSTER_HEAD1:
            want = bytes(deflate.deflate_compress(data[pos:pos + length], level))
            assert raw.endswith(want) and not raw[:-len(want)].strip(b"\0"), (pos, length)
            assert zlib.decompressobj(-15).decompress(want) == data[pos:pos + length]
            if pos + length + 64 <= len(data):
                overflows = len(deflate.deflate_compress(data[pos:pos + length + 64], level)) > 4096
                full = (4096 * nblocks - len(want)) * length <= 64 * len(want)
                assert overflows or full, (pos, length, len(want))
        pos += length
        block += nblocks
    assert pos == len(data)


@pytest.mark.parametrize("to", ["erofs+lz4,ztailpacking", "erofs+deflate,ztailpacking",
                                "erofs+zstd,pcluster=16384,ztailpacking"])
def test_ztailpacking_inlines_a_short_tail_that_does_not_compress(to: str, tmp_path: Path) -> None:
    """A last extent of less than a block that does not shrink goes inline uncompressed (a PLAIN
    inline pcluster, as mkfs.erofs -Eztailpacking writes it) instead of taking a block."""
    require_mount()
    files: list[FileSpec] = [("t", "text+random-tail", 30_000, 1, -1), ("u", "text+random-tail", 9_000, 2, 7)]
    img = check_tree(files, to, tmp_path)
    (tmp_path / "p").mkdir()
    plain = check_tree(files, to.replace(",ztailpacking", ""), tmp_path / "p", with_mkfs=False)
    with ErofsImage.open(img) as image:
        assert {image.stat("/" + name).layout for name, *_ in files} == {fmt.LAYOUT_COMPRESSED_COMPACT}
    blocks = {}
    for image_path in (img, plain):
        with mounted(image_path) as mnt:
            blocks[image_path] = [os.stat(mnt / name).st_blocks for name, *_ in files]
    assert all(ours < without for ours, without in zip(blocks[img], blocks[plain], strict=True)), blocks


@pytest.mark.parametrize("codec", list(Codec))
def test_a_short_tail_that_does_not_shrink_is_inlined_as_is(codec: Codec) -> None:
    data = random.Random(3).randbytes(2 * 4096 + 1000)
    seg = compress_segment(data, codec=codec, level=None, inline_tail=True)
    assert seg.extents == ((fmt.Z_LCLUSTER_PLAIN, 4096, 1), (fmt.Z_LCLUSTER_PLAIN, 4096, 1),
                           (fmt.Z_LCLUSTER_PLAIN, 1000, 0))
    assert seg.inline == data[-1000:] and seg.blocks == data[:8192]
    # without ztailpacking the tail takes a block of its own, zero-filled
    seg = compress_segment(data, codec=codec, level=None)
    assert seg.extents[-1] == (fmt.Z_LCLUSTER_PLAIN, 1000, 1) and seg.inline == b""
