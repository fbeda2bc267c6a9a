"""LayerNormaliser, MergedDirs and SpoolSink: OCI changeset rules fed as TarEntry lists."""

from __future__ import annotations

import io
import os
import stat
import threading
from typing import Any

import pytest

from converter.errors import LayerError
from converter.layers.filedata import FileData
from converter.layers.model import (
    OPAQUE_XATTR,
    ORIGIN_XATTR,
    DataRef,
    DirMeta,
    EntryKind,
    Inode,
    NodeKind,
    TarEntry,
)
from converter.layers.normalise import LayerNormaliser, MergedDirs, split_path
from converter.layers.spool import SpoolRef, SpoolSink
from tests.support.data import BytesData

T0 = 1_700_000_000
BUILD = 1_600_000_000


def ent(name: str | bytes, kind: EntryKind = EntryKind.REG, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        mtime: int = T0, nsec: int = 0, size: int = 0, link: bytes = b"", dev: tuple[int, int] = (0, 0),
        xattrs: dict[str, bytes] | None = None) -> TarEntry:
    return TarEntry(name=name.encode() if isinstance(name, str) else name, kind=kind, mode=mode, uid=uid,
                    gid=gid, mtime_sec=mtime, mtime_nsec=nsec, size=size, linkname=link, devmajor=dev[0],
                    devminor=dev[1], xattrs=dict(xattrs or {}))


def d(name: str, **kw: object) -> TarEntry:
    kw.setdefault("mode", 0o755)
    return ent(name, EntryKind.DIR, **kw)  # type: ignore[arg-type]


def f(name: str | bytes, content: bytes = b"", **kw: object) -> tuple[TarEntry, bytes]:
    return ent(name, EntryKind.REG, size=len(content), **kw), content  # type: ignore[arg-type]


def hl(name: str, target: str) -> TarEntry:
    return ent(name, EntryKind.HARDLINK, link=target.encode())


def sl(name: str, target: str) -> TarEntry:
    return ent(name, EntryKind.SYMLINK, mode=0o777, link=target.encode())


class RecordingSink:
    """A DataSink that keeps contents in memory and records the sizes it was promised."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.sizes: list[int] = []

    def add(self, data: FileData, size: int) -> DataRef:
        blob = b"".join(data.chunks())
        self.sizes.append(size)
        self.blobs.append(blob)
        return SpoolRef(len(self.blobs) - 1, len(blob))


def build(entries: list[TarEntry | tuple[TarEntry, bytes]], *, sink: RecordingSink | None = None,
          **kw: object) -> Inode:
    n = LayerNormaliser(sink=sink or RecordingSink(), layer="sha256:abc", build_time=BUILD, **kw)  # type: ignore[arg-type]
    for item in entries:
        if isinstance(item, tuple):
            n.add(item[0], BytesData(item[1]))
        else:
            n.add(item, None)
    return n.finish()


def get(root: Inode, path: str) -> Inode:
    node = root
    for comp in path.encode().split(b"/"):
        if comp:
            assert node.children is not None, f"{path}: {comp!r} under a non-directory"
            node = node.children[comp]
    return node


def has(root: Inode, path: str) -> bool:
    try:
        get(root, path)
    except KeyError:
        return False
    return True


def names(root: Inode) -> list[bytes]:
    """Every path in the tree."""
    out: list[bytes] = []
    stack: list[tuple[bytes, Inode]] = [(b"", root)]
    while stack:
        prefix, node = stack.pop()
        for name, child in (node.children or {}).items():
            out.append(prefix + name)
            if child.kind is NodeKind.DIR:
                stack.append((prefix + name + b"/", child))
    return sorted(out)


def error_of(entries: list[TarEntry | tuple[TarEntry, bytes]], **kw: Any) -> LayerError:
    with pytest.raises(LayerError) as info:
        build(entries, **kw)
    return info.value


class FakeLower:
    """A LowerView with fixed directory metadata and regular files."""

    def __init__(self, dirs: dict[bytes, DirMeta] | None = None,
                 files: dict[bytes, tuple[Inode, bytes]] | None = None) -> None:
        self.dirs = dirs or {}
        self.files = files or {}
        self.opened: list[bytes] = []

    def dir_meta(self, path: bytes) -> DirMeta | None:
        return self.dirs.get(path)

    def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
        got = self.files.get(path)
        if got is None:
            return None
        self.opened.append(path)
        return got[0], BytesData(got[1])


# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["", ".", "./", "/", "//", "./.", "/./"])
def test_root_spellings_set_root_metadata(spelling: str) -> None:
    root = build([d(spelling, mode=0o700, uid=5, gid=6, mtime=T0 + 1, nsec=7, xattrs={"user.r": b"1"})])
    assert (root.kind, root.mode, root.uid, root.gid) == (NodeKind.DIR, 0o700, 5, 6)
    assert (root.mtime_sec, root.mtime_nsec, root.xattrs) == (T0 + 1, 7, {"user.r": b"1"})
    assert root.children == {}


def test_path_normalisation() -> None:
    root = build([d("./a/"), f("/a//b/./c/", b"x"), f("a/./d", b"y"), f("./e", b"z")])
    assert names(root) == [b"a", b"a/b", b"a/b/c", b"a/d", b"e"]


def test_split_path() -> None:
    assert split_path(b"./usr//lib/./x/") == [b"usr", b"lib", b"x"]
    assert split_path(b"/") == []
    assert split_path(b"a" * 255) == [b"a" * 255]


def _long_path(length: int, *, lead: bytes = b"") -> bytes:
    """A path of ``length`` bytes (with ``lead`` first) made of 200-byte components."""
    body = length - len(lead)
    parts = [b"c" * 200] * (body // 201) + [b"t" * (body % 201 or 1)]
    name = lead + b"/".join(parts)
    return name[:length] if len(name) > length else name + b"u" * (length - len(name))


@pytest.mark.parametrize(("lead", "length", "fits"), [
    (b"", 4094, True),     # written as "/" + name: 4095 bytes, the most that fits
    (b"", 4095, False),    # 4096 bytes once a leading "/" is added
    (b"/", 4095, True),    # already starts with "/"
    (b"/", 4096, False),
    (b"./", 4096, True),   # "./" is dropped: "/" + 4094 bytes
    (b"", 5000, False),
])
def test_split_path_length_limit_counts_the_leading_slash(lead: bytes, length: int, fits: bool) -> None:
    name = _long_path(length, lead=lead)
    assert len(name) == length and max(len(p) for p in name.split(b"/")) <= 255
    if fits:
        assert b"/".join(split_path(name)) == name.removeprefix(lead)
    else:
        with pytest.raises(ValueError, match="bytes long"):
            split_path(name)


def test_split_path_fast_and_careful_paths_agree() -> None:
    # Names of at most 255 bytes skip the length checks; longer ones take the careful path.
    assert split_path(b"a/b/c") == [b"a", b"b", b"c"]
    assert split_path(b"a//b/./c/") == [b"a", b"b", b"c"]
    assert split_path(b".") == [] and split_path(b"") == [] and split_path(b"./") == []
    assert split_path(b"x/" * 127 + b"y") == [b"x"] * 127 + [b"y"]  # 255 bytes
    assert split_path(b"x/" * 200 + b"y") == [b"x"] * 200 + [b"y"]  # 401 bytes
    for name in (b"a/..", b"../a", b"a/../" + b"b" * 300):
        with pytest.raises(ValueError, match=r"'\.\.' component"):
            split_path(name)
    with pytest.raises(ValueError, match="256 bytes long"):
        split_path(b"c" * 256)


def test_parents_are_found_again_after_many_directories_and_replacements() -> None:
    # More directories than the normaliser remembers, coming back to early ones, and a
    # remembered directory replaced by a file: the tree is what the entries say.
    root = build([f("p/q/x", b"1"), f("p/q/r/y", b"2"), f("p/q/r/s/z", b"3"), f("p/t", b"4")])
    assert names(root) == [b"p", b"p/q", b"p/q/r", b"p/q/r/s", b"p/q/r/s/z", b"p/q/r/y", b"p/q/x", b"p/t"]
    many = [f"top/d{i:04d}/f" for i in range(1500)]
    entries: list[TarEntry | tuple[TarEntry, bytes]] = [f(name, b"x") for name in many]
    entries += [f("top/d0000/g", b"y"), f("top/d0001/sub/deep/h", b"z"), f("top/d0001/i", b"w")]
    root = build(entries)
    assert get(root, "top/d0000/g").size == 1 and get(root, "top/d1499/f").size == 1
    assert get(root, "top/d0001/sub/deep/h").size == 1 and get(root, "top/d0001/i").size == 1
    assert len(get(root, "top").children or {}) == 1500
    # a/b is remembered; then a becomes a file: a/b/x must not land in the old directory
    err = error_of([d("a"), d("a/b"), f("a/b/x", b"1"), f("a", b"file"), f("a/b/y", b"2")])
    assert "parent 'a' is a reg, not a directory" in str(err)
    root = build([d("a"), d("a/b"), f("a/b/x", b"1"), f("a", b"file"), d("a"), f("a/b/y", b"2")])
    assert names(root) == [b"a", b"a/b", b"a/b/y"]


def test_root_entry_must_be_a_directory() -> None:
    err = error_of([f("./", b"")])
    assert "root entry must be a directory" in str(err)
    assert "sha256:abc" in str(err) and err.entry == "./"


@pytest.mark.parametrize(("name", "words"), [
    (b"a/../b", "'..'"),
    (b"../b", "'..'"),
    (b"a/b\0c", "NUL"),
    (b"a/" + b"x" * 256, "256 bytes"),
])
def test_bad_paths_are_errors(name: bytes, words: str) -> None:
    err = error_of([f(name, b"")])
    assert words in str(err)
    assert err.layer == "sha256:abc"
    assert err.entry == name.decode("utf-8", "backslashreplace")
    assert str(err).startswith("reading layer sha256:abc, entry ")


def test_parent_that_is_a_file_is_an_error() -> None:
    err = error_of([f("a", b"1"), f("a/b", b"2")])
    assert "parent 'a' is a reg, not a directory" in str(err)
    err = error_of([sl("s", "/etc"), f("s/b", b"2")])
    assert "parent 's' is a lnk" in str(err)


def test_parent_that_is_a_pending_hard_link_is_an_error() -> None:
    err = error_of([hl("a", "later"), f("a/b", b"2"), f("later", b"x")])
    assert "is a hard link, not a directory" in str(err)


# -- duplicates -------------------------------------------------------------------------------


def test_directory_over_directory_updates_metadata_and_keeps_children() -> None:
    root = build([d("a", mode=0o700, xattrs={"user.old": b"1"}), f("a/f", b"x"),
                  d("a/", mode=0o750, uid=3, gid=4, mtime=T0 + 9, nsec=1, xattrs={"user.new": b"2"})])
    a = get(root, "a")
    assert (a.mode, a.uid, a.gid, a.mtime_sec, a.mtime_nsec) == (0o750, 3, 4, T0 + 9, 1)
    assert a.xattrs == {"user.new": b"2"}
    assert names(root) == [b"a", b"a/f"]


def test_file_replaces_directory_and_its_subtree() -> None:
    root = build([d("a"), f("a/f", b"x"), d("a/sub"), f("a", b"now a file")])
    assert names(root) == [b"a"]
    assert get(root, "a").kind is NodeKind.REG


def test_directory_replaces_file_and_later_file_wins() -> None:
    sink = RecordingSink()
    root = build([f("a", b"1"), d("a"), f("b", b"first"), f("b", b"second", mode=0o600)], sink=sink)
    assert get(root, "a").kind is NodeKind.DIR
    b = get(root, "b")
    assert b.mode == 0o600 and b.size == 6
    assert isinstance(b.data, SpoolRef) and sink.blobs[b.data.offset] == b"second"


# -- implicit parents -------------------------------------------------------------------------


def test_implicit_parents_without_lower_are_0755_root_build_time() -> None:
    root = build([f("usr/lib/x", b"1")])
    for node in (root, get(root, "usr"), get(root, "usr/lib")):
        assert (node.kind, node.mode, node.uid, node.gid) == (NodeKind.DIR, 0o755, 0, 0)
        assert (node.mtime_sec, node.mtime_nsec, node.xattrs) == (BUILD, 0, {})


def test_implicit_parents_take_lower_metadata() -> None:
    lower = FakeLower(dirs={
        b"": DirMeta(0o751, 0, 0, 11, 1),
        b"usr": DirMeta(0o700, 10, 20, 12, 2, (("user.a", b"1"), (OPAQUE_XATTR, b"y"))),
    })
    root = build([f("usr/lib/x", b"1")], lower=lower)
    assert (root.mode, root.mtime_sec, root.mtime_nsec) == (0o751, 11, 1)
    usr = get(root, "usr")
    assert (usr.mode, usr.uid, usr.gid, usr.mtime_sec, usr.mtime_nsec) == (0o700, 10, 20, 12, 2)
    assert usr.xattrs == {"user.a": b"1"}  # layer-local overlay xattrs are not inherited
    lib = get(root, "usr/lib")  # not below: defaults
    assert (lib.mode, lib.mtime_sec) == (0o755, BUILD)


def test_later_explicit_entry_overrides_implicit_parent() -> None:
    lower = FakeLower(dirs={b"usr": DirMeta(0o700, 10, 20, 12, 2)})
    root = build([f("usr/x", b"1"), d("usr", mode=0o711, uid=1, mtime=T0), d("./", mode=0o700)], lower=lower)
    usr = get(root, "usr")
    assert (usr.mode, usr.uid, usr.mtime_sec) == (0o711, 1, T0)
    assert root.mode == 0o700 and names(root) == [b"usr", b"usr/x"]


def test_implicit_dirs_below_an_opaque_dir_ignore_lower_metadata() -> None:
    lower = FakeLower(dirs={b"a": DirMeta(0o700, 1, 1, 5, 0), b"a/b": DirMeta(0o700, 1, 1, 5, 0)})
    root = build([f("a/b/c", b"1"), ent("a/.wh..wh..opq")], lower=lower)
    a, b = get(root, "a"), get(root, "a/b")
    assert a.mode == 0o700 and a.xattrs[OPAQUE_XATTR] == b"y"  # a itself is still the lower a
    assert (b.mode, b.uid, b.mtime_sec) == (0o755, 0, BUILD)  # the lower a/b is hidden


# -- hard links -------------------------------------------------------------------------------


def test_hard_link_is_the_same_inode() -> None:
    root = build([f("a", b"data", mode=0o4755), hl("b", "a"), d("dir"), hl("dir/c", "./a")])
    assert get(root, "a") is get(root, "b") is get(root, "dir/c")


def test_forward_hard_links_resolve_at_finish() -> None:
    root = build([hl("x", "z"), hl("y", "x"), d("sub"), hl("sub/w", "/sub/t"), f("z", b"zz"),
                  f("sub/t", b"t")])
    assert get(root, "x") is get(root, "y") is get(root, "z")
    assert get(root, "sub/w") is get(root, "sub/t")
    assert get(root, "x").kind is NodeKind.REG


def test_hard_link_to_symlink_and_self_link() -> None:
    root = build([sl("s", "target"), hl("s2", "s"), f("f", b"1"), hl("f", "f")])
    assert get(root, "s") is get(root, "s2")
    assert get(root, "f").kind is NodeKind.REG and names(root) == [b"f", b"s", b"s2"]


def test_hard_link_keeps_the_inode_it_named_when_the_target_is_replaced() -> None:
    sink = RecordingSink()
    root = build([f("a", b"old"), hl("b", "a"), f("a", b"new")], sink=sink)
    a, b = get(root, "a"), get(root, "b")
    assert a is not b
    assert isinstance(b.data, SpoolRef) and sink.blobs[b.data.offset] == b"old"


def test_forward_link_overwritten_later_is_not_resolved() -> None:
    root = build([hl("a", "missing"), f("a", b"real")])
    assert get(root, "a").size == 4


def test_missing_hard_link_target_without_lower() -> None:
    err = error_of([hl("b", "nowhere/a")])
    assert ("hard link target 'nowhere/a' is not in this layer; converting it needs the lower layers"
            in str(err))
    assert err.entry == "b"


def test_missing_hard_link_target_is_copied_from_lower() -> None:
    below = Inode(NodeKind.REG, 0o2750, uid=7, gid=8, mtime_sec=99, mtime_nsec=5, xattrs={"user.l": b"v"},
                  size=5)
    lower = FakeLower(files={b"usr/bin/tool": (below, b"hello")})
    sink = RecordingSink()
    root = build([hl("a", "usr/bin/tool"), hl("b", "/usr/bin/tool")], lower=lower, sink=sink)
    a = get(root, "a")
    assert a is get(root, "b") and a is not below and lower.opened == [b"usr/bin/tool"]
    assert (a.kind, a.mode, a.uid, a.gid, a.mtime_sec, a.mtime_nsec, a.size) == (
        NodeKind.REG, 0o2750, 7, 8, 99, 5, 5)
    assert a.xattrs == {"user.l": b"v"}
    assert isinstance(a.data, SpoolRef) and sink.blobs[a.data.offset] == b"hello"


def test_hard_link_target_missing_everywhere() -> None:
    err = error_of([hl("b", "a")], lower=FakeLower())
    assert "neither in this layer nor a regular file in the lower layers" in str(err)
    err = error_of([hl("b", "etc")], lower=FakeLower(dirs={b"etc": DirMeta(0o755, 0, 0, 0, 0)}))
    assert "is a directory in the lower layers" in str(err)


def test_hard_link_to_directory_is_an_error() -> None:
    assert "'d' is a directory" in str(error_of([d("d"), hl("x", "d")]))
    assert "'d' is a directory" in str(error_of([hl("x", "d"), d("d")]))
    assert "directory (the root)" in str(error_of([hl("x", "./")]))
    assert "'..'" in str(error_of([hl("x", "../etc/passwd")]))


# -- whiteouts --------------------------------------------------------------------------------


def test_whiteout_becomes_char_device_and_parent_gets_origin() -> None:
    root = build([d("etc"), ent("etc/.wh.passwd", uid=3, gid=4, mtime=T0 + 5, nsec=6, mode=0o644)])
    wh = get(root, "etc/passwd")
    assert wh.is_whiteout() and wh.kind is NodeKind.CHR and wh.mode == 0
    assert (wh.uid, wh.gid, wh.mtime_sec, wh.mtime_nsec) == (3, 4, T0 + 5, 6)
    assert get(root, "etc").xattrs == {ORIGIN_XATTR: b""}
    assert ORIGIN_XATTR not in root.xattrs


def test_opaque_marker_and_root_level_marker() -> None:
    root = build([d("a"), ent("a/.wh..wh..opq"), f("a/keep", b"k"), ent(".wh..wh..opq")])
    assert get(root, "a").xattrs == {OPAQUE_XATTR: b"y"}
    assert root.xattrs == {OPAQUE_XATTR: b"y"}
    assert names(root) == [b"a", b"a/keep"]


def test_opaque_survives_a_later_duplicate_directory_entry() -> None:
    root = build([d("a"), ent("a/.wh..wh..opq"), d("a", xattrs={"user.x": b"1"})])
    assert get(root, "a").xattrs == {"user.x": b"1", OPAQUE_XATTR: b"y"}


def test_aufs_internals_are_dropped() -> None:
    root = build([d(".wh..wh.plnk"), f(".wh..wh.plnk/1234.56", b"x"), ent(".wh..wh.aufs"), d("a"),
                  ent("a/.wh..wh.orph")])
    assert names(root) == [b"a"]
    assert root.xattrs == {} and get(root, "a").xattrs == {}


@pytest.mark.parametrize("order", ["whiteout-first", "real-first"])
def test_real_file_beats_same_layer_whiteout(order: str) -> None:
    items: list[TarEntry | tuple[TarEntry, bytes]] = [ent("a/.wh.x"), f("a/x", b"real")]
    if order == "real-first":
        items.reverse()
    root = build(items)
    x = get(root, "a/x")
    assert x.kind is NodeKind.REG and x.size == 4
    assert get(root, "a").xattrs == {}  # no whiteout left, so no origin xattr


@pytest.mark.parametrize("order", ["whiteout-first", "real-first"])
def test_real_directory_beats_same_layer_whiteout_and_becomes_opaque(order: str) -> None:
    items: list[TarEntry | tuple[TarEntry, bytes]] = [ent(".wh.x"), d("x", mode=0o700), f("x/in", b"1")]
    if order == "real-first":
        items = [items[1], items[2], items[0]]
    root = build(items)
    x = get(root, "x")
    assert x.kind is NodeKind.DIR and x.mode == 0o700 and x.xattrs == {OPAQUE_XATTR: b"y"}
    assert names(root) == [b"x", b"x/in"]


def test_whiteout_then_child_path_makes_a_fresh_opaque_directory() -> None:
    lower = FakeLower(dirs={b"x": DirMeta(0o700, 9, 9, 1, 0)})
    root = build([ent(".wh.x"), f("x/new", b"1")], lower=lower)
    x = get(root, "x")
    assert x.kind is NodeKind.DIR and x.xattrs == {OPAQUE_XATTR: b"y"}
    assert (x.mode, x.uid, x.mtime_sec) == (0o755, 0, BUILD)  # the lower x was deleted: defaults


def test_directory_written_over_a_file_of_this_layer_is_opaque() -> None:
    root = build([f("x", b"1"), d("x")])
    assert get(root, "x").xattrs == {OPAQUE_XATTR: b"y"}


def test_no_whiteout_names_reach_the_tree() -> None:
    root = build([d("a"), ent("a/.wh.b"), ent("a/.wh..wh..opq"), ent(".wh.c"), ent(".wh..wh.plnk")])
    assert not [n for n in names(root) if b".wh." in n]
    assert names(root) == [b"a", b"a/b", b"c"]


def test_whiteout_name_errors() -> None:
    assert "is used as a directory" in str(error_of([f("a/.wh.b/c", b"")]))
    assert "not a valid whiteout name" in str(error_of([ent("a/.wh.")]))
    assert "not a valid whiteout name" in str(error_of([ent(".wh..")]))


def test_bottom_drops_whiteouts_opaque_and_origin() -> None:
    root = build([d("a"), ent("a/.wh.b"), ent("a/.wh..wh..opq"), ent(".wh.c"), ent(".wh..wh..opq"),
                  ent("dev0", EntryKind.CHR, mode=0, dev=(0, 0)), ent("null", EntryKind.CHR, dev=(1, 3)),
                  ent(".wh.x"), d("x"), f("y", b"1"), d("y")], bottom=True)
    assert names(root) == [b"a", b"null", b"x", b"y"]
    assert root.xattrs == {} and get(root, "a").xattrs == {}
    assert get(root, "x").xattrs == {} and get(root, "y").xattrs == {}


# -- xattrs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bottom", [False, True])
def test_overlay_xattrs_from_the_source_are_escaped(bottom: bool) -> None:
    src = {"trusted.overlay.opaque": b"y", "trusted.overlay.overlay.x": b"1", "user.overlay.opaque": b"y",
           "security.capability": b"\x01\x00\x00\x02", "user.bin": b"\x00\xff"}
    root = build([d("dir", xattrs=src), f("f", b"", xattrs=src)], bottom=bottom)
    want = {"trusted.overlay.overlay.opaque": b"y", "trusted.overlay.overlay.overlay.x": b"1",
            "user.overlay.opaque": b"y", "security.capability": b"\x01\x00\x00\x02", "user.bin": b"\x00\xff"}
    assert get(root, "dir").xattrs == want and get(root, "f").xattrs == want


def test_xattr_limits() -> None:
    assert "value" in str(error_of([f("f", b"", xattrs={"user.big": b"x" * 65536})]))
    assert "longer than 255" in str(error_of([f("f", b"", xattrs={"user." + "n" * 251: b""})]))


# -- contents and other kinds -----------------------------------------------------------------


def test_regular_file_contents_stream_into_the_sink() -> None:
    sink = RecordingSink()
    root = build([f("a", b"hello", mode=0o6755, uid=70000, gid=80000, nsec=123), f("empty", b"")], sink=sink)
    a = get(root, "a")
    assert (a.mode, a.uid, a.gid, a.size, a.mtime_nsec) == (0o6755, 70000, 80000, 5, 123)
    assert a.st_mode == stat.S_IFREG | 0o6755
    assert isinstance(a.data, SpoolRef) and sink.blobs[a.data.offset] == b"hello"
    assert get(root, "empty").data is None and sink.sizes == [5, 0]


def test_short_file_data_names_the_entry() -> None:
    entry = ent("short", size=10)
    n = LayerNormaliser(sink=SpoolSink(), layer="L1")
    with pytest.raises(LayerError, match=r"layer L1, entry 'short'.*ended after 3 of the 10 bytes"):
        n.add(entry, BytesData(b"abc"))
    with pytest.raises(LayerError, match="no contents were supplied"):
        n.add(ent("nodata", size=4), None)


def test_symlinks_devices_and_fifos() -> None:
    root = build([sl("s", "../usr/lib/x"), ent("c", EntryKind.CHR, mode=0o620, dev=(4, 64)),
                  ent("b", EntryKind.BLK, mode=0o660, dev=(8, 1)), ent("p", EntryKind.FIFO, mode=0o600)])
    s = get(root, "s")
    assert (s.kind, s.target, s.size, s.mode) == (NodeKind.LNK, b"../usr/lib/x", 12, 0o777)
    c, b, p = get(root, "c"), get(root, "b"), get(root, "p")
    assert (c.kind, c.rdev_major, c.rdev_minor, c.mode) == (NodeKind.CHR, 4, 64, 0o620)
    assert not c.is_whiteout()
    assert (b.kind, b.rdev_major, b.rdev_minor) == (NodeKind.BLK, 8, 1)
    assert (p.kind, p.mode) == (NodeKind.FIFO, 0o600)
    assert "symlink target" in str(error_of([sl("s", "")]))


def test_add_after_finish_is_refused() -> None:
    n = LayerNormaliser(sink=RecordingSink())
    n.finish()
    with pytest.raises(RuntimeError):
        n.add(d("x"), None)


# -- MergedDirs -------------------------------------------------------------------------------


def test_merged_dirs_follow_overlay_semantics() -> None:
    view = MergedDirs()
    assert view.dir_meta(b"") is None and len(view) == 0
    view.apply(build([d("./", mode=0o755), d("etc", mode=0o755), d("etc/ssl"), d("opt/app/data"),
                      d("var/log"), d("gone/deep"), d("file-now")], bottom=True))
    assert len(view) == 11
    assert view.dir_meta(b"etc/ssl") == DirMeta(0o755, 0, 0, T0, 0)
    upper = build([d("etc", mode=0o700, uid=1, xattrs={"user.e": b"1", "trusted.overlay.x": b"2"}),
                   ent(".wh.gone"), d("opt/app", mode=0o711), ent("opt/app/.wh..wh..opq"), f("file-now", b""),
                   d("var/new")])
    view.apply(upper)
    etc = view.dir_meta(b"etc")
    assert etc is not None and (etc.mode, etc.uid) == (0o700, 1)
    assert etc.xattrs == (("trusted.overlay.overlay.x", b"2"), ("user.e", b"1"))
    assert view.dir_meta(b"etc/ssl") is not None  # merged, not replaced
    assert view.dir_meta(b"gone") is None and view.dir_meta(b"gone/deep") is None
    assert view.dir_meta(b"opt/app") is not None and view.dir_meta(b"opt/app/data") is None
    assert view.dir_meta(b"file-now") is None and view.dir_meta(b"var/new") is not None
    assert view.dir_meta(b"var/log") is not None and view.dir_meta(b"var/log/x") is None
    app = view.dir_meta(b"opt/app")
    assert app is not None and dict(app.xattrs) == {}  # opaque is layer-local
    assert view.open_file(b"etc") is None
    view.apply(build([ent(".wh..wh..opq"), d("only")]))
    assert view.dir_meta(b"etc") is None and view.dir_meta(b"only") is not None and len(view) == 2


def test_merged_dirs_feed_the_next_layer() -> None:
    view = MergedDirs()
    view.apply(build([d("./", mode=0o755, mtime=5), d("usr", mode=0o755, uid=0, mtime=6, nsec=7)],
                     bottom=True))
    root = build([f("usr/bin/x", b"1")], lower=view)
    assert (root.mtime_sec, get(root, "usr").mtime_sec, get(root, "usr").mtime_nsec) == (5, 6, 7)
    assert get(root, "usr/bin").mtime_sec == BUILD


# -- SpoolSink --------------------------------------------------------------------------------


def test_spool_stores_contiguously_and_reads_back(tmp_path: os.PathLike[str]) -> None:
    with SpoolSink(tmp_path) as spool:
        big = os.urandom(3 * (1 << 20) + 17)
        r1 = spool.add(BytesData(b"abc"), 3)
        r2 = spool.add(BytesData(big), len(big))
        r3 = spool.add(BytesData(b""), 0)
        assert (r1, r2.offset, r3) == (SpoolRef(0, 3), 3, SpoolRef(3 + len(big), 0))
        assert spool.total_bytes == 3 + len(big)
        assert spool.open(r1).read() == b"abc"
        reader = spool.open(r2)
        assert reader.read(10) == big[:10] and b"".join(reader.chunks(1 << 20)) == big[10:]
        out = io.BytesIO()
        spool.copy_to(r2, out)
        assert out.getvalue() == big
        st = os.fstat(spool._fd)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 0  # private, nameless
        assert os.listdir(tmp_path) == []
    assert spool.closed


def test_spool_copy_to_real_file_and_pipe(tmp_path: os.PathLike[str]) -> None:
    big = os.urandom(200_000)  # large enough for the sendfile path
    with SpoolSink(tmp_path) as spool:
        a = spool.add(BytesData(big), len(big))
        b = spool.add(BytesData(b"B" * 7), 7)
        path = os.path.join(tmp_path, "out")
        with open(path, "wb") as out:  # buffered writer: positions must stay in step with sendfile
            out.write(b"head")
            spool.copy_to(a, out)
            out.write(b"mid")
            spool.copy_to(b, out)
            spool.copy_to(a, out)
            out.write(b"tail")
        with open(path, "rb") as check:
            assert check.read() == b"head" + big + b"mid" + b"B" * 7 + big + b"tail"
        rfd, wfd = os.pipe()
        got: list[bytes] = []
        with os.fdopen(rfd, "rb") as r:
            drain = threading.Thread(target=lambda: got.append(r.read()))
            drain.start()
            with os.fdopen(wfd, "wb") as w:
                w.write(b"<")
                spool.copy_to(a, w)
                spool.copy_to(b, w)
                w.write(b">")
            drain.join()
        assert got == [b"<" + big + b"B" * 7 + b">"]


def test_spool_rejects_wrong_sizes_and_rolls_back() -> None:
    with SpoolSink() as spool:
        spool.add(BytesData(b"ok"), 2)
        with pytest.raises(LayerError, match="ended after 3 of the 5 bytes"):
            spool.add(BytesData(b"abc"), 5)
        with pytest.raises(LayerError, match="longer than the 2 bytes"):
            spool.add(BytesData(b"abc"), 2)
        assert spool.total_bytes == 2
        assert spool.add(BytesData(b"xy"), 2) == SpoolRef(2, 2)
        with pytest.raises(ValueError, match="outside"):
            spool.open(SpoolRef(3, 5))
