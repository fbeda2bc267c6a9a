"""The verifying reader: mkfs.erofs images (checked against the kernel), corruption and fuzzing."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis.strategies as hs
import pytest
from hypothesis import HealthCheck, example, given, settings

from converter.erofs import format as fmt
from converter.erofs.reader import ErofsImage
from converter.errors import ErofsFormatError
from converter.layers.model import OPAQUE_XATTR, NodeKind
from tests.support import kernel
from tests.support.compare import diff, snapshot

from .helpers import T, TreeBuilder, build, expected_snapshot, pattern, reader_snapshot, tools

MKFS_REPRO = ["-T0", "--mkfs-time", "-Uclear", "-b4096"]


def _mkfs(*args: str | Path) -> None:
    res = subprocess.run([str(tools().mkfs), *map(str, args)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def _populate_source(src: Path) -> None:
    """A directory with what mkfs.erofs turns into every structure the reader handles."""
    src.mkdir()
    for size in (0, 1, 4095, 4096, 4097, 8192, 100_003):
        (src / f"f{size}").write_bytes(pattern(size, size))
    (src / "sparse").write_bytes(b"")
    with open(src / "sparse", "r+b") as f:  # holes: null chunks with --chunksize (§5.3)
        f.truncate(5 * 4096 + 17)
        f.seek(2 * 4096 + 5)
        f.write(b"data in the middle")
    (src / "zeros").write_bytes(bytes(3 * 4096))
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "file").write_bytes(b"in d\n")
    os.link(src / "d" / "file", src / "hardlink")
    os.symlink("d/file", src / "sym")
    os.symlink("x" * 3000, src / "longsym")
    os.mknod(src / "chr", 0o620 | stat.S_IFCHR, os.makedev(259, 300))
    os.mknod(src / "blk", 0o600 | stat.S_IFBLK, os.makedev(8, 1))
    os.mkfifo(src / "fifo")
    os.chown(src / "f1", 70000, 80000)
    os.chmod(src / "f4095", 0o4755)
    os.chmod(src / "d" / "sub", 0o1777)
    os.utime(src / "f1", ns=(0, 1_234_567_891_987_654_321))
    os.setxattr(src / "f1", "user.one", b"1")
    os.setxattr(src / "d", OPAQUE_XATTR, b"y")
    os.setxattr(src / "d", "trusted.overlay.origin", b"")
    for i in range(4):  # the same xattr on several inodes: shared with -x1 (§8.6)
        p = src / f"shared{i}"
        p.write_bytes(b"%d" % i)
        os.setxattr(p, "user.common", b"same-value")
        os.setxattr(p, "user.long.prefix.name", b"under a long prefix")
        os.setxattr(p, "user.bin", bytes(range(i * 10)))
    big = src / "big"
    big.mkdir()
    for i in range(700):
        (big / f"entry-{i:04d}").write_bytes(b"")
    for name in ("-x", "!x", ".a", "A" * 255):
        (big / name).write_bytes(name.encode())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "tree"
    _populate_source(src)
    return src


MKFS_VARIANTS = {
    "default": [],
    "noinline": ["-Enoinline_data"],
    "chunked": ["--chunksize=4096"],
    "chunked-8k-shared-longprefix": ["--chunksize=8192", "-x1", "--xattr-prefix=user.long.prefix."],
    "extended": ["-Eforce-inode-extended"],
}


@pytest.fixture(scope="module", params=sorted(MKFS_VARIANTS))
def mkfs_image(request: pytest.FixtureRequest, source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = tmp_path_factory.mktemp("mkfs") / f"{request.param}.erofs"
    _mkfs(*MKFS_REPRO, *MKFS_VARIANTS[request.param], img, source)
    return img


def test_mkfs_image_matches_source(mkfs_image: Path, source: Path) -> None:
    with ErofsImage.open(mkfs_image) as img:
        got = reader_snapshot(img)
    assert diff(snapshot(source), got) == []


def test_mkfs_image_matches_kernel(mkfs_image: Path) -> None:
    with ErofsImage.open(mkfs_image) as img:
        ours = reader_snapshot(img)
    with kernel.mounted(mkfs_image) as mnt:
        assert diff(snapshot(mnt), ours) == []


def test_mkfs_shared_and_long_prefix_xattrs(source: Path, tmp_path: Path) -> None:
    img_path = tmp_path / "x.erofs"
    _mkfs(*MKFS_REPRO, "-x1", "--xattr-prefix=user.long.prefix.", img_path, source)
    with ErofsImage.open(img_path) as img:
        sb = img.superblock
        assert sb.feature_incompat & fmt.INCOMPAT_XATTR_PREFIXES and sb.xattr_prefix_count == 1
        st0 = img.stat("/shared0")
        # The inode's ibody header names at least one shared xattr id (§8.1, §8.6).
        raw = img._read(img._meta_base + 32 * st0.nid, 64 + 16)
        isize = 64 if st0.extended else 32
        assert raw[isize + 4] >= 1
        assert img.xattrs("shared0") == {
            "user.common": b"same-value", "user.long.prefix.name": b"under a long prefix", "user.bin": b""}


def test_mkfs_tar_mode(tmp_path: Path) -> None:
    """mkfs.erofs --tar=f from a tar with PAX xattrs, hard links, devices and an explicit root."""
    tar_path = tmp_path / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, kind: bytes, data: bytes = b"", **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mtime = T
            info.mode = int(kw.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644))  # type: ignore[call-overload]
            for k, v in kw.items():
                setattr(info, k, v)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)

        add("./", tarfile.DIRTYPE)
        add("etc/", tarfile.DIRTYPE, pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"})
        add("etc/passwd", tarfile.REGTYPE, b"root:x:0:0\n" * 500, uid=70000, gid=3)
        add("etc/link", tarfile.LNKTYPE, linkname="etc/passwd")
        add("etc/sym", tarfile.SYMTYPE, linkname="passwd", mode=0o777)
        add("dev/", tarfile.DIRTYPE)
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add("dev/gone", tarfile.CHRTYPE, devmajor=0, devminor=0, mode=0)
        add("bin/", tarfile.DIRTYPE)
        add("bin/su", tarfile.REGTYPE, b"\x7fELF" + bytes(5000), mode=0o4755,
            pax_headers={"SCHILY.xattr.security.test": "sec", "SCHILY.xattr.user.e": ""})
    img_path = tmp_path / "tar.erofs"
    _mkfs("--tar=f", *MKFS_REPRO, img_path, tar_path)
    with ErofsImage.open(img_path) as img:
        ours = reader_snapshot(img)
        assert img.stat("/etc/passwd").nlink == 2 and img.stat("/etc/passwd").uid == 70000
        assert img.xattrs("/etc") == {"trusted.overlay.opaque": b"y"}
        assert img.xattrs("/bin/su") == {"security.test": b"sec", "user.e": b""}
        assert (img.stat("/dev/gone").rdev_major, img.stat("/dev/gone").st_mode) == (0, stat.S_IFCHR)
    with kernel.mounted(img_path) as mnt:
        assert diff(snapshot(mnt), ours) == []


def test_mkfs_lz4_contents(source: Path, tmp_path: Path) -> None:
    img_path = tmp_path / "lz4.erofs"
    _mkfs(*MKFS_REPRO, "-zlz4", img_path, source)
    with ErofsImage.open(img_path) as img:
        compressed = [os.fsdecode(p) for p, st in img.walk()
                      if stat.S_ISREG(st.st_mode) and st.layout in fmt.COMPRESSED_LAYOUTS]
        got = reader_snapshot(img)
    assert "/zeros" in compressed  # the pattern() files do not compress and stay plain
    with kernel.mounted(img_path) as mnt:
        want = snapshot(mnt)
    assert diff(want, got) == []


def test_mkfs_index_mode_small_blocks(source: Path, tmp_path: Path) -> None:
    """--tar=i: 512-byte blocks, chunk indexes on an extra device (§5.3.3, §5.3.4)."""
    tar_path = tmp_path / "src.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(source / "d", arcname="d")
        tf.add(source / "f4097", arcname="f4097")
    img_path = tmp_path / "index.erofs"
    _mkfs("--tar=i", "-T0", "--mkfs-time", "-Uclear", img_path, tar_path)
    with ErofsImage.open(img_path) as img:
        assert img.block_size == 512 and img.superblock.extra_devices == 1
        assert img.stat("f4097").size == 4097
        assert [e.name for e in img.listdir("/d")] == [b"file", b"sub"]
        with pytest.raises(ErofsFormatError, match="f4097: chunk 0 is on extra device 1"):
            b"".join(img.read_file("f4097"))


# --- API behaviour on our own images ----------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def populate(tb: TreeBuilder) -> None:
        tb.file("/a", b"A" * 5000, xattrs={"user.x": b"1"})
        tb.file("/b", b"B")
        tb.dir("/d")
        tb.file("/d/inner", pattern(9000, 3))
        tb.symlink("/l", "d/inner")
        tb.special("/dev0", NodeKind.BLK, major=8, minor=17)

    path = tmp_path_factory.mktemp("small") / "small.erofs"
    build(path, populate)
    return path


def test_api(small: Path) -> None:
    with open(small, "rb") as f:
        _check_api(ErofsImage(f))
        assert not f.closed  # ErofsImage(f) never closes a file it does not own


def _check_api(img: ErofsImage) -> None:
    with img:
        assert [(e.name, e.file_type) for e in img.listdir("/")] == [
            (b"a", 1), (b"b", 1), (b"d", 2), (b"dev0", 4), (b"l", 7)]
        assert img.stat("d/inner") == img.stat(b"/d/./inner") == img.stat("/d/../d/inner")
        assert img.stat(img.stat("/b").nid).size == 1
        assert img.readlink("/l") == b"d/inner"
        assert img.read_bytes("/d/inner") == pattern(9000, 3)
        assert list(img.read_file("/a", chunk_size=4096)) == [b"A" * 4096, b"A" * 904]
        assert img.xattrs("/a") == {"user.x": b"1"} and img.xattrs("/") == {}
        st = img.stat("/dev0")
        assert (st.rdev_major, st.rdev_minor, st.file_type) == (8, 17, fmt.FT_BLKDEV)
        assert [p for p, _ in img.walk()] == [b"/", b"/a", b"/b", b"/d", b"/d/inner", b"/dev0", b"/l"]
        with pytest.raises(FileNotFoundError):
            img.stat("/nope")
        with pytest.raises(NotADirectoryError):
            img.stat("/a/x")
        with pytest.raises(IsADirectoryError):
            img.read_file("/d")
        with pytest.raises(OSError, match="not a symlink"):
            img.readlink("/a")


# --- corruption -------------------------------------------------------------------------------


def _patched(path: Path, patches: dict[int, bytes], *, fix_crc: bool = True, truncate: int | None = None) -> bytes:
    data = bytearray(path.read_bytes())
    for off, b in patches.items():
        data[off:off + len(b)] = b
    if fix_crc:
        data[1028:1032] = bytes(4)
        data[1028:1032] = fmt.crc32c_raw(data[1024:4096]).to_bytes(4, "little")
    if truncate is not None:
        del data[truncate:]
    return bytes(data)


def _open(data: bytes, **kw: bool) -> ErofsImage:
    return ErofsImage(io.BytesIO(data), **kw)


def _meta(path: Path) -> tuple[int, int]:
    """(byte offset of NID 0, root inode offset) of one of our images."""
    sb = fmt.Superblock.unpack(path.read_bytes()[1024:1152])
    base = sb.meta_blkaddr * 4096
    return base, base + 32 * sb.root_nid


@pytest.mark.parametrize(
    ("patches", "match", "fix_crc"),
    [
        ({1024: b"\0\0\0\0"}, "not an EROFS image", True),
        ({2000: b"\1"}, "checksum mismatch", False),
        ({1024 + 0x50: (0x80).to_bytes(4, "little")}, "incompatible features 0x80", True),
        ({1024 + 0x50: (0x1000).to_bytes(4, "little")}, "incompatible features 0x1000", True),
        ({1024 + 0x0C: b"\x14"}, "block size", True),
        ({1024 + 0x5A: b"\x01"}, "directory block size", True),
        ({1024 + 0x28: (10**6).to_bytes(4, "little")}, "outside the image", True),
    ],
    ids=["magic", "crc", "48bit", "unknown-incompat", "blksz", "dirblkbits", "meta-blkaddr"],
)
def test_bad_superblock(small: Path, patches: dict[int, bytes], match: str, fix_crc: bool) -> None:
    with pytest.raises(ErofsFormatError, match=match):
        _open(_patched(small, patches, fix_crc=fix_crc))


def test_checksum_can_be_skipped(small: Path) -> None:
    data = _patched(small, {2000: b"\1"}, fix_crc=False)
    assert _open(data, verify_checksum=False).stat("/b").size == 1


@pytest.mark.parametrize("keep", [0, 1000, 1100, 4096, 8192])
def test_truncated(small: Path, keep: int) -> None:
    with pytest.raises(ErofsFormatError):
        img = _open(small.read_bytes()[:keep])
        for _, st in img.walk():
            if stat.S_ISREG(st.st_mode):
                b"".join(img.read_file(st.nid))


def test_root_not_a_directory(small: Path) -> None:
    _, root = _meta(small)
    with pytest.raises(ErofsFormatError, match="not a directory"):
        _open(_patched(small, {root + 4: (0o100644).to_bytes(2, "little")}))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [(0, 0x10, "unsupported i_format"), (0, 0x0C, "unknown data layout"), (4, 0o170644, "bogus i_mode")],
)
def test_bad_inode(small: Path, field: int, value: int, match: str) -> None:
    with _open(small.read_bytes()) as img:
        off = img._meta_base + 32 * img.stat("/b").nid
    img = _open(_patched(small, {off + field: value.to_bytes(2, "little")}))
    with pytest.raises(ErofsFormatError, match=match):
        img.stat("/b")


def test_layout_flipped_to_compressed(small: Path) -> None:
    """A plain inode relabelled as compressed: whatever follows it is read as an index, strictly."""
    with _open(small.read_bytes()) as img:
        off = img._meta_base + 32 * img.stat("/b").nid
    img = _open(_patched(small, {off: fmt.i_format(False, fmt.LAYOUT_COMPRESSED_FULL).to_bytes(2, "little")}))
    try:
        data = b"".join(img.read_file("/b"))
    except ErofsFormatError as exc:
        assert "/b" in str(exc)
    else:
        assert len(data) == img.stat("/b").size


def _root_tail(path: Path) -> int:
    """Offset of the root directory's inline dirent block (our compact root has no xattrs)."""
    return _meta(path)[1] + 32


def test_missorted_directory(small: Path) -> None:
    names_at = _root_tail(small) + 12 * 7  # ".", "..", a, b, d, dev0, l
    data = small.read_bytes()
    assert data[names_at:names_at + 6] == b"...abd"
    img = _open(_patched(small, {names_at + 3: b"ba"}))
    with pytest.raises(ErofsFormatError, match="out of order"):
        img.listdir("/")


def test_bogus_nameoff(small: Path) -> None:
    img = _open(_patched(small, {_root_tail(small) + 8: (5).to_bytes(2, "little")}))
    with pytest.raises(ErofsFormatError, match="nameoff"):
        img.listdir("/")


def test_directory_cycle(small: Path) -> None:
    with _open(small.read_bytes()) as img:
        d_nid = img.stat("/d").nid
        d_off = img._meta_base + 32 * d_nid
    # /d's own dirents: ".", "..", "inner". Point "inner" at the root (type DIR): a cycle.
    tail = d_off + 32
    patched = _patched(small, {tail + 24: (128).to_bytes(8, "little"), tail + 24 + 10: bytes([fmt.FT_DIR])})
    with pytest.raises(ErofsFormatError, match="reachable twice"):
        list(_open(patched).walk())


def test_inline_tail_across_block(small: Path) -> None:
    with _open(small.read_bytes()) as img:
        off = img._meta_base + 32 * img.stat("/b").nid
    # Claim a 4000-byte inline tail: it would run past the inode's block (§5.2).
    img = _open(_patched(small, {off + 8: (4000).to_bytes(4, "little")}))
    with pytest.raises(ErofsFormatError, match="crosses a block boundary"):
        img.read_file("/b")


# --- fuzzing ----------------------------------------------------------------------------------


def _exercise(data: bytes, *, verify_checksum: bool = False) -> None:
    """Read everything; only ErofsFormatError may escape. Reads are capped to bound the time."""
    budget = 4 << 20
    img = _open(data, verify_checksum=verify_checksum)
    for _, st in img.walk():
        img.xattrs(st.nid)
        kind = st.st_mode & fmt.S_IFMT
        if kind == fmt.S_IFLNK:
            img.readlink(st.nid)
        elif kind == fmt.S_IFREG:
            for chunk in img.read_file(st.nid, chunk_size=1 << 16):
                budget -= len(chunk)
                if budget < 0:
                    return


def _fuzz_source(tb: TreeBuilder) -> None:
    tb.file("/a", pattern(5000, 1), xattrs={"user.x": b"1", "trusted.y": b""})
    tb.file("/b", b"B", uid=70000, mtime_nsec=5)
    for i in range(40):
        tb.file(f"/many/{i:03d}", b"x" * i)
    tb.symlink("/l", "many/001")
    tb.whiteout("/w")
    tb.dir("/o", xattrs={OPAQUE_XATTR: b"y"})
    tb.special("/c", NodeKind.CHR, major=5, minor=1)


@pytest.fixture(scope="module")
def fuzz_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzz")
    build(d / "ours.erofs", _fuzz_source)
    src = d / "src"
    src.mkdir()
    for i in range(30):
        p = src / f"f{i}"
        p.write_bytes(pattern(i * 700, i))
        os.setxattr(p, "user.common", b"shared")
        os.setxattr(p, "user.long.prefix.k", b"%d" % i)
    (src / "sparse").write_bytes(b"")
    os.truncate(src / "sparse", 20000)
    _mkfs(*MKFS_REPRO, "--chunksize=4096", "-x1", "--xattr-prefix=user.long.", d / "mkfs.erofs", src)
    return {"ours": (d / "ours.erofs").read_bytes(), "mkfs": (d / "mkfs.erofs").read_bytes()}


Mutation = tuple[str, list[tuple[float, int]], float | None]


@hs.composite
def _mutations(draw: hs.DrawFn) -> Mutation:
    """Which image, byte flips at relative positions (XOR values), and where to cut it, if at all."""
    which = draw(hs.sampled_from(["ours", "mkfs"]))
    flips = draw(hs.lists(hs.tuples(hs.floats(0, 1, exclude_max=True), hs.integers(1, 255)), min_size=1,
                          max_size=8))
    cut = draw(hs.one_of(hs.none(), hs.floats(0, 1, exclude_max=True)))
    return which, flips, cut


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations())
@example(mutation=("ours", [(0.5, 0xFF)], None))
@example(mutation=("mkfs", [(0.01, 0x80)], 0.5))
def test_fuzz_flips_and_truncation(fuzz_images: dict[str, bytes], mutation: Mutation) -> None:
    which, flips, cut = mutation
    data = bytearray(fuzz_images[which])
    for pos, x in flips:
        data[int(pos * len(data))] ^= x
    if cut is not None:
        del data[int(cut * len(data)):]
    with contextlib.suppress(ErofsFormatError):
        _exercise(bytes(data))


def test_fuzz_unmodified_images_read_cleanly(fuzz_images: dict[str, bytes]) -> None:
    for data in fuzz_images.values():
        _exercise(data, verify_checksum=True)


def _iter_meta_offsets(data: bytes) -> Iterator[int]:
    sb = fmt.Superblock.unpack(data[1024:1152])
    yield from range((sb.meta_blkaddr + 1) * 4096, len(data))  # data-first: metadata from block D


def test_fuzz_every_metadata_byte_of_our_image(fuzz_images: dict[str, bytes]) -> None:
    """Deterministic sweep: each metadata byte of our image set to 0xFF, one at a time."""
    base = fuzz_images["ours"]
    for off in _iter_meta_offsets(base):
        if base[off] == 0xFF:
            continue
        data = bytearray(base)
        data[off] = 0xFF
        with contextlib.suppress(ErofsFormatError):
            _exercise(bytes(data))


def test_snapshot_helpers_agree(small: Path) -> None:
    """The expected-snapshot helper and the reader agree on a trivial image (guards the helpers)."""
    def populate(tb: TreeBuilder) -> None:
        tb.file("/x", b"x")

    path = small.parent / "trivial.erofs"
    tb, _ = build(path, populate)
    with ErofsImage.open(path) as img:
        assert diff(expected_snapshot(tb), reader_snapshot(img)) == []
