"""Content check: an EROFS layer, read by our reader, against the tree its source tar layer gives.

The expected tree comes from the same tar parser and layer normaliser the converter uses
(whiteouts, opaque directories, implicit directories from the lower layers, hard links,
xattrs, devices, times to the nanosecond), with file contents reduced to their sha256 as
they stream by: only metadata stays in memory. The two trees are then walked side by side,
directory by directory in name order, comparing every entry.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from converter.convert.layer import LayerOptions, read_layer
from converter.erofs.reader import ErofsImage, Stat
from converter.erofs.target import TargetFormat
from converter.errors import ErofsFormatError, ErofsUnsupported, ToolError
from converter.layers.filedata import FileData
from converter.layers.model import S_IFMT_BY_KIND, Inode, NodeKind
from converter.pipeline.lower import EmptyData, StackedLower

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class HashRef:
    """A ``DataRef`` that remembers only the size and sha256 of the contents."""

    size: int
    sha256: str


class _KnownContents:
    """``FileData`` standing for a lower layer's file whose digest is already known (cross-layer
    hard links are materialised as copies, so the copy hashes the same)."""

    def __init__(self, ref: HashRef) -> None:
        self.ref = ref

    def read(self, n: int = -1) -> bytes:
        return b""

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        return iter(())


class HashingSink:
    """A ``DataSink`` that hashes contents and keeps nothing else."""

    def add(self, data: FileData, size: int) -> HashRef:
        if isinstance(data, _KnownContents):
            return data.ref
        h = hashlib.sha256()
        n = 0
        for chunk in data.chunks(_CHUNK):
            h.update(chunk)
            n += len(chunk)
        return HashRef(n, h.hexdigest())


def _opener(layer: int, path: bytes, node: Inode) -> FileData:
    return _KnownContents(node.data) if isinstance(node.data, HashRef) else EmptyData()


@dataclass(frozen=True, slots=True)
class SourceTree:
    root: Inode
    digest: str
    size: int


def expected_tree(src: BinaryIO, *, lowers: list[Inode], media_type: str | None, layer: str, build_time: int,
                  max_expanded: int | None, max_entries: int | None) -> SourceTree:
    """The normalised tree of one source tar layer over ``lowers`` (bottom first)."""
    options = LayerOptions(fmt=TargetFormat(), bottom=not lowers, build_time=build_time,
                           max_expanded=max_expanded, max_entries=max_entries)
    lower = StackedLower(lowers, opener=_opener) if lowers else None
    tree = read_layer(src, sink=HashingSink(), options=options, lower=lower, media_type=media_type, layer=layer)
    return SourceTree(tree.root, tree.source_digest, tree.source_size)


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    what: str
    got: str = ""
    want: str = ""


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _time(sec: int, nsec: int) -> str:
    return f"{sec}.{nsec:09d}"


def _kind_name(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char device",
            stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), "?")


def _xattr(value: bytes | None) -> str:
    if value is None:
        return "(absent)"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    return repr(text) if text.isprintable() else "0x" + value.hex()


class FsckReader:
    """Reads one file of an image with ``fsck.erofs --path=P --extract=F`` into a private temp
    dir (unprivileged): for what our reader does not decode. Each use is recorded in ``used``."""

    def __init__(self, image: Path, *, workdir: Path | None = None) -> None:
        self._image = image
        self._workdir = workdir
        self.used: list[str] = []

    def __call__(self, path: bytes) -> Iterator[bytes]:
        from converter.erofs.tools import erofs_utils

        fsck = erofs_utils().fsck
        if fsck is None:
            raise ToolError("fsck.erofs not found next to mkfs.erofs")
        with tempfile.TemporaryDirectory(prefix="erofs-verify-fsck-", dir=self._workdir) as d:
            out = Path(d) / "f"
            res = subprocess.run([str(fsck), f"--path={os.fsdecode(path)}", f"--extract={out}", "--no-preserve",
                                  str(self._image)], capture_output=True, text=True, check=False)
            if res.returncode != 0 or not out.is_file():
                tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                raise ToolError(f"fsck.erofs --extract {os.fsdecode(path)}: exit {res.returncode}: {tail[0]}")
            self.used.append(os.fsdecode(path))
            with open(out, "rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk


class TreeComparer:
    """Walks an EROFS image and an expected tree together; yields every difference.

    ``fallback`` reads a file's contents when our reader raises ErofsUnsupported for it.
    """

    def __init__(self, img: ErofsImage, root: Inode, *,
                 fallback: Callable[[bytes], Iterator[bytes]] | None = None) -> None:
        self._img = img
        self._root = root
        self._fallback = fallback
        self._nid_of: dict[int, int] = {}  # id(expected inode) -> NID
        self._node_of: dict[int, tuple[int, bytes]] = {}  # NID -> (id(expected inode), first path)
        self.files = 0

    def differences(self) -> Iterator[Difference]:
        img = self._img
        root_st = img.stat(img.root_nid)
        yield from self._compare(b"/", root_st, self._root)
        stack: list[tuple[bytes, int, Inode]] = [(b"", img.root_nid, self._root)]
        while stack:
            prefix, nid, node = stack.pop()
            assert node.children is not None
            got = {e.name: e.nid for e in img.listdir(nid)}
            want = node.children
            for name in sorted(set(got) | set(want)):
                path = prefix + b"/" + name
                if name not in want:
                    st = img.stat(got[name])
                    yield Difference(_show(path), "entry", _kind_name(st.st_mode), "(nothing)")
                    continue
                if name not in got:
                    yield Difference(_show(path), "entry", "(missing)", _kind_name(want[name].st_mode))
                    continue
                st = img.stat(got[name])
                child = want[name]
                yield from self._compare(path, st, child)
                if st.is_dir and child.kind is NodeKind.DIR:
                    stack.append((path, got[name], child))

    def _compare(self, path: bytes, st: Stat, node: Inode) -> Iterator[Difference]:
        p = _show(path)
        if stat.S_IFMT(st.st_mode) != S_IFMT_BY_KIND[node.kind]:
            yield Difference(p, "type", _kind_name(st.st_mode), _kind_name(node.st_mode))
            return
        if st.st_mode & 0o7777 != node.mode & 0o7777:
            yield Difference(p, "mode", f"{st.st_mode & 0o7777:04o}", f"{node.mode & 0o7777:04o}")
        if (st.uid, st.gid) != (node.uid, node.gid):
            yield Difference(p, "owner", f"{st.uid}:{st.gid}", f"{node.uid}:{node.gid}")
        if (st.mtime_sec, st.mtime_nsec) != (node.mtime_sec, node.mtime_nsec):
            yield Difference(p, "mtime", _time(st.mtime_sec, st.mtime_nsec), _time(node.mtime_sec, node.mtime_nsec))
        got_x = self._img.xattrs(st.nid)
        for key in sorted(set(got_x) | set(node.xattrs)):
            if got_x.get(key) != node.xattrs.get(key):
                yield Difference(p, f"xattr {key}", _xattr(got_x.get(key)), _xattr(node.xattrs.get(key)))
        if node.kind in (NodeKind.CHR, NodeKind.BLK) and (st.rdev_major, st.rdev_minor) != (
                node.rdev_major, node.rdev_minor):
            yield Difference(p, "device", f"{st.rdev_major}:{st.rdev_minor}", f"{node.rdev_major}:{node.rdev_minor}")
        if node.kind is NodeKind.LNK:
            target = self._img.readlink(st.nid)
            if target != node.target:
                yield Difference(p, "symlink target", _show(target), _show(node.target))
        if node.kind is NodeKind.REG:
            yield from self._compare_file(p, st, node)

    def _compare_file(self, p: str, st: Stat, node: Inode) -> Iterator[Difference]:
        seen = self._nid_of.get(id(node))
        if seen is not None:  # a hard link of a file compared already
            if seen != st.nid:
                yield Difference(p, "hard link", "a separate inode", "the same inode as an earlier path")
            return
        other = self._node_of.get(st.nid)
        if other is not None and other[0] != id(node):
            yield Difference(p, "hard link", f"the same inode as {_show(other[1])}", "a separate file")
            return
        self._nid_of[id(node)] = st.nid
        self._node_of[st.nid] = (id(node), p.encode("utf-8", "surrogateescape"))
        want_size = node.data.size if node.data is not None else 0
        if st.size != want_size:
            yield Difference(p, "size", str(st.size), str(want_size))
            return
        want = node.data.sha256 if isinstance(node.data, HashRef) else hashlib.sha256(b"").hexdigest()
        h = hashlib.sha256()
        try:
            try:
                for chunk in self._img.read_file(st.nid, chunk_size=_CHUNK):
                    h.update(chunk)
            except ErofsUnsupported:
                if self._fallback is None:
                    raise
                h = hashlib.sha256()
                for chunk in self._fallback(p.encode("utf-8", "surrogateescape")):
                    h.update(chunk)
        except (ErofsFormatError, ToolError) as exc:
            yield Difference(p, "contents unreadable", str(exc), f"sha256:{want}")
            return
        self.files += 1
        if h.hexdigest() != want:
            yield Difference(p, "contents", f"sha256:{h.hexdigest()}", f"sha256:{want}")
