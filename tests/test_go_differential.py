"""Differential test against Go's archive/tar, applied as containerd applies a layer.

Container runtimes read layers with Go's reader (containerd, moby, containers/storage), so what
they extract is the reference: every archive Go accepts must convert to exactly Go's tree (seen
through a kernel mount of our image), every archive Go refuses must be refused by us. The
deliberate differences are listed in ``EXCEPTIONS`` (and in README.md / docs/go-differential.md)
and are checked to still differ, so a list entry cannot go stale.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converter.convert.layer import LayerOptions, convert_layer
from converter.erofs.reader import ErofsImage
from converter.erofs.target import TargetFormat
from converter.errors import ConverterError
from converter.layers.model import ORIGIN_XATTR
from tests.support import tarcraft as tc
from tests.support.compare import Entry, diff, snapshot
from tests.support.gotar import GO_TESTDATA, GoView, go_apply, go_write
from tests.support.kernel import fsck, mounted
from tests.test_layer_property import Spec, content, make_tar, trees

BUILDERS = ["python", "mkfs"]
#: Go's testdata archives that need a dedicated test: their one member is a 60e9-byte sparse file.
BIG_SPARSE = {"gnu-sparse-big.tar", "pax-sparse-big.tar"}
#: Archives on which we deliberately differ from Go + containerd, with the reason (README.md,
#: docs/go-differential.md). Each still has to differ, so the list cannot go stale.
EXCEPTIONS = {
    "gnu-nil-sparse-data.tar": "GNU old-style sparse ('S') members: Go reads them, but containerd and moby refuse "
                               "the typeflag; GNU tar writes them for --sparse, so we convert them",
    "gnu-nil-sparse-hole.tar": "GNU old-style sparse ('S') members (as above)",
    "sparse-formats.tar": "GNU old-style sparse ('S') members (as above)",
}


def _ours(tar: Path, tmp: Path, *, builder: str, overlay: bool) -> tuple[dict[str, Entry] | None, str | None]:
    out = tmp / f"{builder}-{'upper' if overlay else 'bottom'}.erofs"
    try:
        with open(tar, "rb") as src:
            convert_layer(src, out, options=LayerOptions(fmt=TargetFormat(), builder=builder, bottom=not overlay),
                          layer=tar.name, workdir=tmp)
    except ConverterError as exc:
        return None, str(exc)
    fsck(out)
    with mounted(out) as mnt:
        return snapshot(mnt), None


def differences(tar: Path, tmp: Path, *, builder: str, overlay: bool = False) -> list[str]:
    """How our conversion of ``tar`` differs from Go's view (empty: none)."""
    go = go_apply(tar, overlay=overlay)
    ours, error = _ours(tar, tmp, builder=builder, overlay=overlay)
    if go.error is not None or error is not None:
        if go.error is not None and error is not None:
            return []
        if go.error is not None:
            return [f"Go refuses ({go.error}), we convert it"]
        return [f"we refuse ({error}), Go accepts it"]
    assert go.tree is not None and ours is not None
    return compare(go, ours)


def compare(go: GoView, ours: dict[str, Entry]) -> list[str]:
    """Differences between Go's tree and ours, outside what containerd leaves to the moment of
    extraction (the root's metadata, implicit directories' and whiteouts' mtimes) and the empty
    ``trusted.overlay.origin`` we add next to whiteouts (what mkfs.erofs --aufs does)."""
    assert go.tree is not None
    expected = {p: e for p, e in go.tree.items() if p != "/"}
    actual = {p: e for p, e in ours.items() if p != "/"}
    for path, e in actual.items():
        e.xattrs.pop(ORIGIN_XATTR, None)
        if path in expected and (path in go.implicit or path in go.whiteouts):
            e.mtime_ns = expected[path].mtime_ns
    return diff(expected, actual)


def check(tar: Path, tmp: Path, *, builder: str, overlay: bool = False) -> None:
    problems = differences(tar, tmp, builder=builder, overlay=overlay)
    assert not problems, f"{tar.name} ({builder}):\n" + "\n".join(problems)


# --- Go's own testdata ------------------------------------------------------------------------


def go_testdata() -> list[str]:
    if not GO_TESTDATA.is_dir():
        return ["(golang-1.19-src is not installed)"]
    return sorted(p.name for p in GO_TESTDATA.glob("*.tar") if p.name not in BIG_SPARSE)


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("name", go_testdata())
def test_go_testdata(tmp_path: Path, name: str, builder: str) -> None:
    tar = GO_TESTDATA / name
    if not tar.exists():
        pytest.skip(f"Go's archive/tar testdata is missing ({GO_TESTDATA}); run `make setup`")
    problems = differences(tar, tmp_path, builder=builder)
    if name in EXCEPTIONS:
        assert problems, f"{name} no longer differs from Go: drop its entry from EXCEPTIONS (and the docs)"
        return
    assert not problems, f"{name} ({builder}):\n" + "\n".join(problems)


# --- hand-made dialects ---------------------------------------------------------------------


def _ustar_prefixed(magic: bytes) -> bytes:
    return tc.header(b"file.txt", size=3, magic=magic, prefix=b"dir/sub") + tc.pad(b"abc")


CRAFTED: dict[str, bytes] = {
    # containerd and moby skip global headers: their records must not reach any member.
    "pax-global": tc.archive(
        tc.pax(tc.pax_record(b"uid", b"4242") + tc.pax_record(b"SCHILY.xattr.user.g", b"1"), typeflag=b"g"),
        tc.member(b"a.txt", b"hello")),
    # several consecutive 'x' headers: Go keeps the last one only
    "pax-consecutive": tc.archive(
        tc.pax(tc.pax_record(b"uid", b"7") + tc.pax_record(b"path", b"first.txt")),
        tc.pax(tc.pax_record(b"gid", b"9")),
        tc.member(b"plain.txt", b"data")),
    # PAX numbers with leading zeros are valid decimal
    "pax-leading-zeros": tc.archive(
        tc.pax(tc.pax_record(b"uid", b"0001000") + tc.pax_record(b"mtime", b"00001700000000.5")
               + tc.pax_record(b"size", b"005")),
        tc.member(b"z.txt", b"12345")),
    # a GNU-magic header whose prefix field holds a path: Go joins it like ustar
    "gnu-magic-prefix": tc.archive(_ustar_prefixed(b"ustar  \x00")),
    "ustar-prefix": tc.archive(_ustar_prefixed(b"ustar\x0000")),
    # directories over files and back
    "dir-over-file": tc.archive(tc.member(b"x", b"file"), tc.directory(b"x/"), tc.member(b"x/in", b"1")),
    "file-over-dir": tc.archive(tc.directory(b"x/"), tc.member(b"x/in", b"1"), tc.member(b"x", b"now a file")),
    "dir-over-dir": tc.archive(tc.directory(b"d/", mode=0o700), tc.member(b"d/f", b"1"),
                               tc.directory(b"d/", mode=0o755, uid=5)),
    "later-entry-wins": tc.archive(tc.member(b"f", b"one"), tc.member(b"f", b"second", mode=0o600),
                                   tc.symlink(b"l", b"f"), tc.member(b"l", b"not a link")),
    "hardlink-owner": tc.archive(tc.member(b"f", b"x", uid=1), tc.hardlink(b"g", b"f", uid=2)),
    "negative-mtime": tc.archive(tc.header(b"old", fields={136: tc.base256(-100, 12)})),
    "unknown-typeflag": tc.archive(tc.member(b"a", b"1"), tc.header(b"vol", typeflag=b"V")),
    "contiguous-typeflag": tc.archive(tc.header(b"c", typeflag=b"7", size=2) + tc.pad(b"hi")),
    "dotdot-clamped": tc.archive(tc.member(b"../escape", b"1"), tc.member(b"a/../b", b"2")),
    "symlink-parent": tc.archive(tc.directory(b"d/"), tc.symlink(b"l", b"d"), tc.member(b"l/x", b"1")),
    "forward-hardlink": tc.archive(tc.hardlink(b"early", b"later"), tc.member(b"later", b"1")),
    "uid-beyond-32-bits": tc.archive(tc.pax(tc.pax_record(b"uid", b"4294967301")), tc.member(b"u", b"1")),
    "whiteouts-bottom": tc.archive(tc.member(b"a", b"1"), tc.member(b".wh.a"), tc.member(b"d/x", b"2"),
                                   tc.member(b"d/.wh..wh..opq")),
}
CRAFTED_UPPER: dict[str, bytes] = {
    "whiteouts-upper": tc.archive(tc.directory(b"d/"), tc.member(b"d/.wh.gone", uid=3), tc.member(b"d/.wh..wh..opq"),
                                  tc.member(b".wh.top")),
    "whiteout-then-real": tc.archive(tc.member(b".wh.f"), tc.member(b"f", b"real")),
    "real-then-whiteout": tc.archive(tc.member(b"f", b"real"), tc.member(b".wh.f")),
    "recreated-dir": tc.archive(tc.member(b".wh.d"), tc.directory(b"d/"), tc.member(b"d/x", b"1")),
}
#: Hand-made archives on which we deliberately differ (see EXCEPTIONS).
CRAFTED_EXCEPTIONS = {
    "dotdot-clamped": "'..' components: containerd clamps them at the root, we refuse the layer (a '..' in a "
                      "layer is a writer bug or an attack; refusing is the safe answer)",
    "whiteouts-bottom": "whiteouts in the bottom layer: containerd's naive applier deletes what the layer itself "
                        "wrote earlier; we drop whiteouts there (OCI: a whiteout only hides lower layers)",
    "symlink-parent": "a parent that is a symlink of this layer: containerd writes through it, we refuse the layer",
    "forward-hardlink": "a hard link before its target: containerd fails (no such file), we resolve it",
    "uid-beyond-32-bits": "uid/gid beyond 32 bits: the kernel truncates it in containerd's lchown, we refuse "
                          "(a wrapped id can be root)",
    "real-then-whiteout": "a whiteout after a real entry of the same name: containerd's overlay applier fails "
                          "(mknod: file exists), the real entry wins here (OCI: whiteouts hide lower layers)",
    "recreated-dir": "a directory re-created where this layer whited it out: containerd leaves it merged with the "
                     "lower one, we make it opaque (OCI: the lower directory was deleted)",
    "hardlink-owner": "a hard link's own owner and time: containerd chowns and touches the shared inode when it "
                      "creates the link; we keep the target's metadata",
}


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("name", sorted(CRAFTED) + sorted(CRAFTED_UPPER))
def test_crafted(tmp_path: Path, name: str, builder: str) -> None:
    tar = tmp_path / f"{name}.tar"
    tar.write_bytes(CRAFTED.get(name) or CRAFTED_UPPER[name])
    problems = differences(tar, tmp_path, builder=builder, overlay=name in CRAFTED_UPPER)
    if name in CRAFTED_EXCEPTIONS:
        assert problems, f"{name} no longer differs from Go: drop its entry from CRAFTED_EXCEPTIONS (and the docs)"
        return
    assert not problems, f"{name} ({builder}):\n" + "\n".join(problems)


# --- other writers --------------------------------------------------------------------------


def _populate(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"x" * 5000)
    (root / "dir" / "sub" / ("long-" + "n" * 120)).write_bytes(b"long name")
    (root / ("deep/" * 30)).mkdir(parents=True)
    (root / ("deep/" * 30) / "leaf").write_bytes(b"leaf")
    os.symlink("dir/file", root / "link")
    os.link(root / "dir" / "file", root / "hard")
    os.mkfifo(root / "fifo")
    (root / "exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exec", 0o4755)
    os.setxattr(root / "dir" / "file", "user.note", b"kept")
    sparse = root / "sparse"
    with open(sparse, "wb") as f:
        f.seek(1 << 20)
        f.write(b"data in the middle")
        f.truncate(3 << 20)
    for p in [root, *root.rglob("*")]:
        os.utime(p, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789), follow_symlinks=False)


WRITERS = {
    "gnu-tar-gnu": ["tar", "--format=gnu", "--sparse", "--numeric-owner", "-cf", "{out}", "-C", "{src}", "."],
    "gnu-tar-pax": ["tar", "--format=pax", "--sparse", "--xattrs", "--numeric-owner", "-cf", "{out}", "-C", "{src}",
                    "."],
    "gnu-tar-posix-sparse-1.0": ["tar", "--format=pax", "--sparse", "--sparse-version=1.0", "-cf", "{out}", "-C",
                                 "{src}", "."],
    "gnu-tar-posix-sparse-0.1": ["tar", "--format=pax", "--sparse", "--sparse-version=0.1", "-cf", "{out}", "-C",
                                 "{src}", "."],
    "gnu-tar-v7": ["tar", "--format=v7", "-cf", "{out}", "-C", "{src}", "dir/file", "exec", "link", "hard"],
    "bsdtar-pax": ["bsdtar", "--format=pax", "--xattrs", "-cf", "{out}", "-C", "{src}", "."],
    "bsdtar-ustar": ["bsdtar", "--format=ustar", "-cf", "{out}", "-C", "{src}", "dir", "exec", "link", "fifo"],
    "bsdtar-gnutar": ["bsdtar", "--format=gnutar", "-cf", "{out}", "-C", "{src}", "."],
}
WRITER_EXCEPTIONS = {
    "gnu-tar-gnu": "GNU tar --sparse in GNU format writes old-style sparse ('S') members (see EXCEPTIONS)",
}


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_other_writers(tmp_path: Path, writer: str, builder: str) -> None:
    argv = WRITERS[writer]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed; run `make setup`")
    src = tmp_path / "src"
    src.mkdir()
    _populate(src)
    tar = tmp_path / f"{writer}.tar"
    subprocess.run([a.format(out=tar, src=src) for a in argv], check=True, capture_output=True)
    problems = differences(tar, tmp_path, builder=builder)
    if writer in WRITER_EXCEPTIONS:
        assert problems, f"{writer} no longer differs from Go: drop its entry from WRITER_EXCEPTIONS"
        return
    assert not problems, f"{writer} ({builder}):\n" + "\n".join(problems)


# --- generated archives: Python's tarfile and Go's writer -----------------------------------


def _go_specs(fmt: str, specs: list[Spec]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for s in specs:
        item: dict[str, object] = {
            "name": s.path + ("/" if s.kind == "dir" else ""), "type": s.kind, "mode": s.mode, "uid": s.uid,
            "gid": s.gid, "mtime_ns": s.mtime * 1_000_000_000 + (s.nsec if fmt == "pax" else 0),
            "content": base64.b64encode(content(s) if s.kind == "file" else b"").decode(),
            "linkname": s.target, "format": fmt if fmt != "ustar" or s.uid < 0o7777777 else "pax"}
        if s.xattr is not None and fmt == "pax":
            item["xattrs"] = {"user.prop": s.xattr.decode("utf-8", "surrogateescape")}
        out.append(item)
    return out


def _generated(tmp: Path, tar: Path, *, builder: str) -> None:
    go = go_apply(tar)
    assert go.error is None, go.error
    with open(tar, "rb") as src:
        out = tmp / "g.erofs"
        convert_layer(src, out, options=LayerOptions(fmt=TargetFormat(), builder=builder, bottom=True),
                      layer=tar.name, workdir=tmp)
    with mounted(out) as mnt:
        problems = compare(go, snapshot(mnt))
    assert not problems, "\n".join(problems)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(tree=trees(), builder=st.sampled_from(BUILDERS))
def test_generated_by_tarfile(tmp_path: Path, tree: tuple[str, list[Spec]], builder: str) -> None:
    fmt, specs = tree
    tar = tmp_path / "tarfile.tar"
    tar.write_bytes(make_tar(fmt, specs))
    _generated(tmp_path, tar, builder=builder)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(tree=trees(), builder=st.sampled_from(BUILDERS))
def test_generated_by_go_writer(tmp_path: Path, tree: tuple[str, list[Spec]], builder: str) -> None:
    fmt, specs = tree
    tar = tmp_path / "go.tar"
    go_write(_go_specs(fmt, specs), tar)
    _generated(tmp_path, tar, builder=builder)


def test_the_python_and_go_views_of_a_tarfile_archive_agree_on_our_reader(tmp_path: Path) -> None:
    """Sanity check of the harness itself: a plain archive has no differences, and a changed
    byte of content is seen as one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("f")
        info.size, info.mtime = 3, 1_700_000_000
        tf.addfile(info, io.BytesIO(b"abc"))
    tar = tmp_path / "t.tar"
    tar.write_bytes(buf.getvalue())
    go = go_apply(tar)
    assert go.tree is not None
    out = tmp_path / "t.erofs"
    with open(tar, "rb") as src:
        convert_layer(src, out, options=LayerOptions(fmt=TargetFormat(), bottom=True), layer="t")
    with mounted(out) as mnt:
        ours = snapshot(mnt)
    assert compare(go, ours) == []
    with ErofsImage.open(out) as img:
        assert img.read_bytes("/f") == b"abc"
    ours["/f"].sha256 = "0" * 64
    assert compare(go, ours) == ["/f: sha256 expected '" + go.tree["/f"].sha256 + "', got '" + "0" * 64 + "'"]
    assert stat.S_ISREG(go.tree["/f"].mode)
