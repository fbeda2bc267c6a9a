"""The mkfs.erofs builder with the real mkfs.erofs (>= 1.9.3) and the real kernel.

Trees come from LayerNormaliser; each image is checked by fsck.erofs and then through a loop
mount, entry by entry, against the tree it was built from. Some tests also feed mkfs.erofs a
naive tar to show that the bug being avoided is real on this machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from converter.erofs.mkfs import build_with_mkfs, emit_tar, mkfs_command, mkfs_tools
from converter.erofs.target import TargetFormat, parse_format
from converter.erofs.tools import erofs_utils
from converter.errors import MkfsError, ToolError
from converter.layers.model import OPAQUE_XATTR, ORIGIN_XATTR, EntryKind, Inode, NodeKind, TarEntry
from converter.layers.normalise import LayerNormaliser
from converter.layers.spool import SpoolSink
from tests.support.data import BytesData
from tests.support.kernel import fsck, mounted, overlay, require_mount

T0 = 1_700_000_000
BUILD = 1_650_000_000
UUID = uuid.UUID("0b9d1a2c-3e4f-5061-7283-94a5b6c7d8e9")
FORMATS = ["erofs", "erofs+lz4", "erofs+lz4hc,level=9", "erofs+zstd,level=3", "erofs+deflate,level=6",
           "erofs+lzma,level=3"]
RNG_BLOB = hashlib.shake_256(b"seed").digest(150_000)  # incompressible
TEXT_BLOB = b"".join(b"line %d of a compressible file\n" % i for i in range(4000))


Item = tuple[TarEntry, bytes | None]


def ent(name: str | bytes, kind: EntryKind = EntryKind.REG, *, mode: int = 0o644, uid: int = 0,
        gid: int = 0, mtime: int = T0, nsec: int = 0, data: bytes = b"", link: str | bytes = b"",
        dev: tuple[int, int] = (0, 0), xattrs: dict[str, bytes] | None = None) -> Item:
    e = TarEntry(name=name.encode() if isinstance(name, str) else name, kind=kind, mode=mode, uid=uid,
                 gid=gid, mtime_sec=mtime, mtime_nsec=nsec, size=len(data), devmajor=dev[0], devminor=dev[1],
                 linkname=link.encode() if isinstance(link, str) else link, xattrs=dict(xattrs or {}))
    return e, (data if kind is EntryKind.REG else None)


def dr(name: str, mode: int = 0o755, **kw: object) -> Item:
    return ent(name, EntryKind.DIR, mode=mode, **kw)  # type: ignore[arg-type]


LONG_DIR = "long/" + "d" * 120 + "/" + "e" * 60
LONG_TARGET = "/" + "/".join(["target-component"] * 20)


def rich_layer() -> list[Item]:
    """Every kind of entry and metadata mkfs.erofs must carry through (a non-bottom layer)."""
    return [
        dr("./", 0o755, mtime=T0 - 1, nsec=500_000_000, xattrs={"user.root": b"r"}),
        dr("etc", 0o755, nsec=1),
        ent("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", nsec=999_999_999),
        ent("etc/.wh.old-config", uid=3, gid=4, mtime=T0 + 3, nsec=30),
        dr("etc/ssl", 0o700, uid=70_000, gid=65_536, xattrs={"user.dir": b"d"}),
        ent("etc/ssl/key", mode=0o600, uid=4_000_000_000, gid=3_000_000_000, data=b"secret"),
        ent("usr/bin/su", mode=0o4755, data=RNG_BLOB[:4097], mtime=T0 + 1, nsec=123_456_789),
        ent("usr/bin/wall", mode=0o2755, gid=5, data=TEXT_BLOB, mtime=T0 - 100_000, nsec=5),
        ent("usr/bin/link-fwd", EntryKind.HARDLINK, link="usr/lib/shared"),
        ent("usr/lib/shared", data=RNG_BLOB, mode=0o755,
            xattrs={"security.capability": b"\x01\x00\x00\x02" * 5}),
        ent("usr/lib/shared-2", EntryKind.HARDLINK, link="./usr/lib/shared"),
        ent("usr/sbin/shared-3", EntryKind.HARDLINK, link="/usr/lib/shared"),
        dr("tmp", 0o1777),
        ent("empty", data=b""),
        ent("one", data=b"1", mtime=-2, nsec=750_000_000),  # -1.25 s: before the epoch (becomes 0)
        ent("future", data=b"f", mtime=9_999_999_999, nsec=1),  # does not fit 11 octal digits
        ent("block", data=b"B" * 4096),
        ent("xattrs", data=b"x", xattrs={"user.bin": b"\x00\n\xff=\x00", "user.empty": b"",
                                         "user.text": b"hello", "trusted.overlay.opaque": b"y",
                                         "trusted.md5": b"m" * 300}),
        ent("sym", EntryKind.SYMLINK, mode=0o777, link="etc/passwd"),
        ent("sym-long", EntryKind.SYMLINK, mode=0o777, link=LONG_TARGET),
        ent("sym-link", EntryKind.HARDLINK, link="sym"),
        ent(LONG_DIR + "/file-with-a-long-path", data=b"deep"),
        ent(LONG_DIR + "/hardlink-with-a-long-path", EntryKind.HARDLINK,
            link=LONG_DIR + "/file-with-a-long-path"),
        ent(b"caf\xe9-latin1", data=b"not utf-8"),
        ent("dev/null", EntryKind.CHR, mode=0o666, dev=(1, 3)),
        ent("dev/sda1", EntryKind.BLK, mode=0o660, gid=6, dev=(8, 1)),
        ent("dev/big", EntryKind.CHR, mode=0o600, dev=(4095, 1_048_575)),
        ent("dev/fifo", EntryKind.FIFO, mode=0o620),
        dr("opt", 0o750),
        ent("opt/.wh..wh..opq"),
        ent("opt/kept", data=b"k"),
        ent(".wh.gone"),
        ent(".wh.replaced"),
        dr("replaced", 0o711),
        ent("replaced/new", data=b"n"),
        ent("zzz/after-the-marker", data=b"z"),
        *[ent(f"zzz/many/{i:03d}", data=b"%d" % i) for i in range(40)],
    ]


def normalise(entries: list[Item], spool: SpoolSink, **kw: object) -> Inode:
    n = LayerNormaliser(sink=spool, layer="test", build_time=BUILD, **kw)  # type: ignore[arg-type]
    for e, data in entries:
        n.add(e, BytesData(data) if data is not None else None)
    return n.finish()


# -- expected (from the tree) and actual (from a mount) ----------------------------------------


@dataclass(frozen=True)
class Seen:
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    content: str  # sha256 of a regular file, symlink target, or rdev
    xattrs: tuple[tuple[str, bytes], ...]


def expected(root: Inode, spool: SpoolSink) -> tuple[dict[bytes, Seen], list[list[bytes]]]:
    out: dict[bytes, Seen] = {}
    groups: dict[int, list[bytes]] = {}
    stack: list[tuple[bytes, Inode]] = [(b"/", root)]
    while stack:
        path, node = stack.pop()
        if node.kind is NodeKind.REG:
            h = hashlib.sha256()
            if node.data is not None:
                for chunk in spool.open(node.data).chunks():
                    h.update(chunk)
            content, size = h.hexdigest(), node.size
        elif node.kind is NodeKind.LNK:
            content, size = node.target.decode("utf-8", "surrogateescape"), node.size
        elif node.kind in (NodeKind.CHR, NodeKind.BLK):
            content, size = f"{node.rdev_major}:{node.rdev_minor}", 0
        else:
            content, size = "", 0
        out[path] = Seen(node.st_mode, node.uid, node.gid, node.mtime_sec * 10**9 + node.mtime_nsec,
                         size if node.kind is not NodeKind.DIR else -1, content,
                         tuple(sorted(node.xattrs.items())))
        if node.kind is not NodeKind.DIR:
            groups.setdefault(id(node), []).append(path)
        for name, child in (node.children or {}).items():
            stack.append(((path if path != b"/" else b"") + b"/" + name, child))
    return out, [sorted(g) for g in groups.values()]


def actual(top: Path) -> tuple[dict[bytes, Seen], dict[bytes, os.stat_result]]:
    out: dict[bytes, Seen] = {}
    stats: dict[bytes, os.stat_result] = {}
    base = os.fsencode(top)
    stack = [b"/"]
    while stack:
        rel = stack.pop()
        p = base + (rel if rel != b"/" else b"")
        st = os.lstat(p)
        stats[rel] = st
        xattrs = tuple(sorted((n, os.getxattr(p, n, follow_symlinks=False))
                              for n in os.listxattr(p, follow_symlinks=False)))
        size = st.st_size
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as fh:
                content = hashlib.sha256(fh.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(p).decode("utf-8", "surrogateescape")
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            content, size = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", 0
        else:
            content, size = "", 0
        if stat.S_ISDIR(st.st_mode):
            size = -1
            stack.extend((rel if rel != b"/" else b"") + b"/" + n for n in os.listdir(p))
        out[rel] = Seen(st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, size, content, xattrs)
    return out, stats


def assert_mount_matches(mnt: Path, root: Inode, spool: SpoolSink) -> None:
    want, groups = expected(root, spool)
    got, stats = actual(mnt)
    problems = [f"missing {p!r}" for p in sorted(set(want) - set(got))]
    problems += [f"unexpected {p!r}" for p in sorted(set(got) - set(want))]
    for p in sorted(set(want) & set(got)):
        if want[p] != got[p]:
            problems.append(f"{p!r}: want {want[p]}\n      got  {got[p]}")
    owner: dict[int, int] = {}  # st_ino -> index of the tree inode (hard-link group) using it
    for i, group in enumerate(groups):
        ino = {stats[p].st_ino for p in group if p in stats}
        if len(ino) != 1:
            problems.append(f"hard link group {group} has inode numbers {ino}")
            continue
        if owner.setdefault(next(iter(ino)), i) != i:
            problems.append(f"{group} and {groups[owner[next(iter(ino))]]} share an inode")
        for p in group:
            if p in stats and stats[p].st_nlink != len(group):
                problems.append(f"{p!r}: nlink {stats[p].st_nlink}, want {len(group)}")
    assert not problems, "\n".join(problems)


# -- a minimal tar reader for structural checks ------------------------------------------------


@dataclass
class Member:
    name: bytes
    typeflag: bytes
    linkname: bytes
    size: int
    pax: dict[bytes, bytes]


def read_members(data: bytes) -> list[Member]:
    out: list[Member] = []
    pos, pax = 0, {}
    while True:
        head = data[pos:pos + 512]
        assert len(head) == 512, "truncated tar"
        if head == bytes(512):
            assert data[pos + 512:pos + 1024] == bytes(512) and len(data) == pos + 1024
            return out
        assert head[257:265] == b"ustar\x0000"
        chk = int(head[148:156].split(b"\0")[0], 8)
        assert chk == sum(head[:148]) + 256 + sum(head[156:])
        size = int(head[124:136].rstrip(b"\0") or b"0", 8)
        typeflag = head[156:157]
        body = data[pos + 512:pos + 512 + size]
        pos += 512 + (size + 511) // 512 * 512
        if typeflag == b"x":
            pax = {}
            while body:
                length = int(body.split(b" ", 1)[0])
                rec, body = body[:length], body[length:]
                key, _, value = rec.split(b" ", 1)[1][:-1].partition(b"=")
                pax[key] = value
            continue
        name = pax.get(b"path", head[:100].rstrip(b"\0"))
        link = pax.get(b"linkpath", head[157:257].rstrip(b"\0"))
        out.append(Member(name, typeflag, link, int(pax.get(b"size", b"%d" % size)), pax))
        pax = {}


def rel(name: bytes) -> bytes:
    return b"" if name == b"./" else name.rstrip(b"/")


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Inode, SpoolSink]]:
    spool = SpoolSink(tmp_path_factory.mktemp("spool"))
    root = normalise(rich_layer(), spool)
    yield root, spool
    spool.close()


def build(root: Inode, spool: SpoolSink, path: Path, fmt: str = "erofs", *, bottom: bool = False,
          build_time: int = BUILD) -> Path:
    build_with_mkfs(root, spool, path, fmt=parse_format(fmt), build_time=build_time, uuid=UUID, bottom=bottom)
    return path


# -- emit_tar ----------------------------------------------------------------------------------


def test_emitted_tar_is_normalised(rich: tuple[Inode, SpoolSink]) -> None:
    root, spool = rich
    out1, out2 = io.BytesIO(), io.BytesIO()
    emit_tar(root, spool, out1)
    emit_tar(root, spool, out2)
    assert out1.getvalue() == out2.getvalue(), "emit_tar is not deterministic"
    members = read_members(out1.getvalue())
    names = [m.name for m in members]
    assert names[0] == b"./" and members[0].typeflag == b"5"
    assert members[0].pax[b"mtime"] == b"%d.500000000" % (T0 - 1)
    seen: set[bytes] = {b""}
    dirs = {rel(m.name) for m in members if m.typeflag == b"5"}
    for i, m in enumerate(members):
        assert m.typeflag in (b"0", b"1", b"2", b"3", b"4", b"5", b"6"), m
        path = rel(m.name)
        parent = path.rpartition(b"/")[0]
        assert parent in seen and parent in dirs | {b""}, f"{m.name!r} before its parent"
        if b"mtime" in m.pax:
            assert re.fullmatch(rb"-?[0-9]+\.[0-9]{9}", m.pax[b"mtime"]), m.pax[b"mtime"]
        if m.name.endswith(b"/.wh..wh..opq"):
            assert m.size == 0 and members[i - 1].name == m.name[:-len(b".wh..wh..opq")], "marker placement"
        if m.typeflag == b"1":
            assert m.linkname in seen, f"hard link {m.name!r} before its target {m.linkname!r}"
        if m.typeflag == b"0":
            assert b"GNU.sparse.size" not in m.pax
        seen.add(path)
    want_dirs = {b"", b"etc", b"etc/ssl", b"usr", b"usr/bin", b"usr/lib", b"usr/sbin", b"tmp", b"dev", b"opt",
                 b"replaced", b"zzz", b"zzz/many", b"long", b"long/" + b"d" * 120, LONG_DIR.encode()}
    assert dirs == want_dirs
    by_name = {m.name: m for m in members}
    assert by_name[b"etc/ssl/key"].pax[b"uid"] == b"4000000000"
    assert by_name[b"xattrs"].pax[b"SCHILY.xattr.user.bin"] == b"\x00\n\xff=\x00"
    assert by_name[b"xattrs"].pax[b"SCHILY.xattr.trusted.overlay.overlay.opaque"] == b"y"
    assert by_name[b".wh.gone"].typeflag == b"0" and by_name[b"etc/.wh.old-config"].size == 0
    assert b"SCHILY.xattr." + ORIGIN_XATTR.encode() not in by_name[b"etc/"].pax  # mkfs adds it
    assert by_name[b"replaced/"].typeflag == b"5" and b"replaced/.wh..wh..opq" in by_name
    assert not any(n.endswith(b"/.wh..wh..opq") and n.count(b"/") == 0 for n in names)


# -- mkfs.erofs builds checked through the kernel ----------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_build_matches_tree_and_is_reproducible(rich: tuple[Inode, SpoolSink], tmp_path: Path,
                                                fmt: str) -> None:
    root, spool = rich
    a = build(root, spool, tmp_path / "a.img", fmt)
    b = build(root, spool, tmp_path / "b.img", fmt)
    assert a.read_bytes() == b.read_bytes(), f"{fmt}: two builds differ"
    fsck(a)
    with mounted(a) as mnt:
        assert_mount_matches(mnt, root, spool)
        # Spot checks that the generic comparison covers what matters most.
        st = os.lstat(mnt / "usr/bin/su")
        assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_mtime_ns == (T0 + 1) * 10**9 + 123_456_789
        assert os.lstat(mnt / "one").st_mtime_ns == 0  # before 1970: bounded to the epoch, as containerd does
        wh = os.lstat(mnt / "etc/old-config")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0 and stat.S_IMODE(wh.st_mode) == 0
        assert os.getxattr(mnt / "etc", ORIGIN_XATTR) == b"" and os.getxattr(mnt, ORIGIN_XATTR) == b""
        assert os.getxattr(mnt / "opt", OPAQUE_XATTR) == b"y"
        assert os.getxattr(mnt / "replaced", OPAQUE_XATTR) == b"y"
        assert os.getxattr(mnt / "xattrs", "user.bin") == b"\x00\n\xff=\x00"
        assert os.getxattr(mnt / "xattrs", "user.empty") == b""
        assert len(os.listdir(mnt / "zzz/many")) == 40
        assert os.stat(mnt / "usr/bin/link-fwd").st_ino == os.stat(mnt / "usr/sbin/shared-3").st_ino


def test_zstd_without_a_level_is_zstds_default_level(tmp_path: Path) -> None:
    """``erofs+zstd`` means zstd's default level, 3, with mkfs.erofs as with our writer:
    mkfs.erofs -zzstd alone compresses at zstd's fast level -1 (docs/deviations.md)."""
    text = b" ".join(b"%d erofs layer %x" % (i, i * 7919) for i in range(40_000))
    spool = SpoolSink(tmp_path)
    root = normalise([ent("text", data=text)], spool)
    images = {fmt: build(root, spool, tmp_path / f"{fmt}.img", fmt).read_bytes()
              for fmt in ("erofs+zstd", "erofs+zstd,level=3", "erofs+zstd,level=1")}
    spool.close()
    assert images["erofs+zstd"] == images["erofs+zstd,level=3"]
    assert images["erofs+zstd,level=1"] != images["erofs+zstd,level=3"]
    assert len(images["erofs+zstd"]) < len(text)
    assert parse_format("erofs+zstd").mkfs_args() == ["-zzstd,level=3"]


def test_layer_without_root_entry_comes_out_0755(tmp_path: Path) -> None:
    entries = [ent("usr/bin/tool", mode=0o755, data=b"t"), ent("etc/conf", data=b"c"),
               ent("var/lib/x/y", data=b"y")]
    with SpoolSink(tmp_path) as spool:
        root = normalise(entries, spool)
        img = build(root, spool, tmp_path / "l.img")
        fsck(img)
        with mounted(img) as mnt:
            assert_mount_matches(mnt, root, spool)
            for d in ("", "usr", "usr/bin", "etc", "var", "var/lib", "var/lib/x"):
                st = os.lstat(mnt / d)
                assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0), d
                assert st.st_mtime_ns == BUILD * 10**9, d
    # The bug this avoids: the same files handed straight to mkfs.erofs give a 0777 root.
    naive = tmp_path / "naive.tar"
    with tarfile.open(naive, "w", format=tarfile.PAX_FORMAT) as tf:
        for e, data in entries:
            info = tarfile.TarInfo(e.name.decode())
            info.size, info.mode, info.mtime = len(data or b""), e.mode, e.mtime_sec
            tf.addfile(info, io.BytesIO(data or b""))
    raw = tmp_path / "naive.img"
    subprocess.run([str(mkfs_tools().mkfs), "--tar=f", "--aufs", "--quiet", str(raw), str(naive)], check=True)
    with mounted(raw) as mnt:
        assert stat.S_IMODE(os.lstat(mnt).st_mode) == 0o777


def test_opaque_marker_keeps_every_later_entry(tmp_path: Path) -> None:
    entries = [dr("./"), dr("a"), ent("a/.wh..wh..opq"), ent("a/in", data=b"1"), dr("b/c"),
               ent("a/.wh..wh..opq"), *[ent(f"b/c/f{i}", data=b"x" * i) for i in range(30)],
               ent(".wh..wh..opq"), ent("z", data=b"last")]
    with SpoolSink(tmp_path) as spool:
        root = normalise(entries, spool)
        assert root.xattrs == {OPAQUE_XATTR: b"y"}
        img = build(root, spool, tmp_path / "o.img", "erofs+lz4")
        fsck(img)
        with mounted(img) as mnt:
            assert_mount_matches(mnt, root, spool)
            assert os.getxattr(mnt, OPAQUE_XATTR) == b"y" and os.getxattr(mnt / "a", OPAQUE_XATTR) == b"y"
            assert (mnt / "z").read_bytes() == b"last" and len(os.listdir(mnt / "b/c")) == 30
    # The bug this avoids: a non-empty marker handed straight to mkfs.erofs loses what follows it.
    naive = tmp_path / "naive.tar"
    with tarfile.open(naive, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("a", None), ("a/.wh..wh..opq", b"x"), ("z", b"last")):
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            info.size = len(data or b"")
            tf.addfile(info, io.BytesIO(data or b""))
    raw = tmp_path / "naive.img"
    subprocess.run([str(mkfs_tools().mkfs), "--tar=f", "--aufs", "--quiet", str(raw), str(naive)], check=True)
    with mounted(raw) as mnt:
        assert not (mnt / "z").exists()


def test_bottom_build_has_no_overlay_metadata(rich: tuple[Inode, SpoolSink], tmp_path: Path) -> None:
    root, spool = rich
    img = build(root, spool, tmp_path / "bottom.img", "erofs+zstd", bottom=True)  # --ovlfs-strip=1
    fsck(img)
    with mounted(img) as mnt:
        got, _ = actual(mnt)
    assert b"/etc/old-config" not in got and b"/gone" not in got and b"/etc/passwd" in got
    for path, seen in got.items():
        assert not (stat.S_ISCHR(seen.mode) and seen.content == "0:0"), path
        names = {k for k, _ in seen.xattrs}
        assert OPAQUE_XATTR not in names and ORIGIN_XATTR not in names, path
    assert dict(got[b"/xattrs"].xattrs)["trusted.overlay.overlay.opaque"] == b"y"  # escaped: kept
    # A tree normalised as the bottom layer is exactly what the mount shows.
    with SpoolSink(tmp_path) as spool2:
        root2 = normalise(rich_layer(), spool2, bottom=True)
        img2 = build(root2, spool2, tmp_path / "bottom2.img", bottom=True)
        fsck(img2)
        with mounted(img2) as mnt:
            assert_mount_matches(mnt, root2, spool2)


def test_overlay_of_mkfs_layers(tmp_path: Path) -> None:
    require_mount()
    lower_entries = [dr("./"), dr("etc"), ent("etc/passwd", data=b"p"), ent("etc/old", data=b"o"),
                     dr("opt"), ent("opt/lower-only", data=b"l"), dr("var"), ent("var/keep", data=b"k"),
                     ent("esc", data=b"e", xattrs={"trusted.overlay.opaque": b"y"})]
    upper_entries = [ent("etc/.wh.old"), dr("opt"), ent("opt/.wh..wh..opq"), ent("opt/upper", data=b"u"),
                     ent(".wh.var")]
    with SpoolSink(tmp_path) as spool:
        lower = normalise(lower_entries, spool, bottom=True)
        upper = normalise(upper_entries, spool)
        imgs = [build(lower, spool, tmp_path / "0.img", "erofs+lz4hc", bottom=True),
                build(upper, spool, tmp_path / "1.img", "erofs+zstd")]
        with overlay(imgs) as mnt:
            assert sorted(os.listdir(mnt)) == ["esc", "etc", "opt"]
            assert sorted(os.listdir(mnt / "etc")) == ["passwd"]
            assert sorted(os.listdir(mnt / "opt")) == ["upper"]
            assert stat.S_IMODE(os.lstat(mnt).st_mode) == 0o755
            # overlayfs (6.7+) shows an escaped xattr under its original name.
            assert os.getxattr(mnt / "esc", "trusted.overlay.opaque") == b"y"


def test_mkfs_failure_is_reported_with_stderr(rich: tuple[Inode, SpoolSink], tmp_path: Path) -> None:
    root, spool = rich
    target = tmp_path / "no-such-dir" / "x.img"
    with pytest.raises(MkfsError) as info:
        build(root, spool, target)
    assert info.value.returncode not in (0, None) and "<E>" in info.value.stderr
    assert "x.img" in str(info.value) and not target.exists()


def test_tree_errors_become_mkfs_errors(tmp_path: Path) -> None:
    bad = Inode(NodeKind.DIR, 0o755, children={b".wh.sneaky": Inode(NodeKind.REG, 0o644)})
    with SpoolSink(tmp_path) as spool, pytest.raises(MkfsError, match="writing the tar failed"):
        build(bad, spool, tmp_path / "bad.img")
    assert not (tmp_path / "bad.img").exists()


def test_command_line_and_version_check() -> None:
    tools = mkfs_tools()
    assert tools.version >= (1, 9, 3)
    cmd = mkfs_command("mkfs.erofs", "o.img", fmt=TargetFormat("lz4hc", 12), build_time=7, uuid=UUID, bottom=True)
    assert cmd == ["mkfs.erofs", "--tar=f", "--aufs", "-b4096", "-T7", "--mkfs-time", f"-U{UUID}", "--quiet",
                   "-zlz4hc,level=12", "--ovlfs-strip=1", "o.img"]
    with pytest.raises(ToolError, match=r"needs mkfs\.erofs >= 99\.0, but .* is 1\.9"):
        erofs_utils(need=(99, 0))
