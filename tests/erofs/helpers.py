"""Builders of Inode trees for the EROFS tests, and the snapshots they are compared by."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from converter.erofs.reader import ErofsImage
from converter.erofs.tools import ErofsUtils, erofs_utils
from converter.erofs.writer import ImageDataArea, write_image
from converter.errors import ToolError
from converter.layers.model import Inode, NodeKind
from tests.support import kernel
from tests.support.compare import Entry
from tests.support.data import BytesData

T = 1_700_000_000  # the build time of most test images (§12's worked example)


def tools() -> ErofsUtils:
    """erofs-utils, or a skip (a failure in CI) naming why they are missing."""
    try:
        return erofs_utils()
    except ToolError as exc:
        pytest.skip(f"erofs-utils unavailable: {exc}")


def fsck(image: Path) -> None:
    """fsck.erofs must pass with no <E> line (skips when erofs-utils is missing)."""
    tools()
    kernel.fsck(image)


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking contents (block-edge bugs show up as hash changes)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


class TreeBuilder:
    """Builds an Inode tree while storing file contents in an ImageDataArea, like the normaliser.

    Paths are "/"-separated (str or bytes). Missing parents are created (0755, time T).
    ``contents`` maps each regular-file Inode to its bytes, for the expected snapshot.
    """

    def __init__(self, area: ImageDataArea, *, mtime: int = T, root_mode: int = 0o755, **root: object) -> None:
        self.area = area
        self.mtime = mtime
        self.root = Inode(NodeKind.DIR, root_mode, mtime_sec=mtime, children={}, **root)  # type: ignore[arg-type]
        self.contents: dict[Inode, bytes] = {}

    def _split(self, path: str | bytes) -> tuple[Inode, bytes]:
        parts = [p for p in os.fsencode(path).split(b"/") if p]
        node = self.root
        for comp in parts[:-1]:
            assert node.children is not None
            child = node.children.get(comp)
            if child is None:
                child = Inode(NodeKind.DIR, 0o755, mtime_sec=self.mtime, children={})
                node.children[comp] = child
            node = child
        return node, parts[-1]

    def add(self, path: str | bytes, node: Inode) -> Inode:
        parent, name = self._split(path)
        assert parent.children is not None
        parent.children[name] = node
        return node

    def file(self, path: str | bytes, data: bytes = b"", *, mode: int = 0o644, step: int | None = None,
             **kw: object) -> Inode:
        kw.setdefault("mtime_sec", self.mtime)
        ref = self.area.add(BytesData(data, step=step), len(data)) if data else None
        node = Inode(NodeKind.REG, mode, size=len(data), data=ref, **kw)  # type: ignore[arg-type]
        self.contents[node] = data
        return self.add(path, node)

    def dir(self, path: str | bytes, *, mode: int = 0o755, **kw: object) -> Inode:
        kw.setdefault("mtime_sec", self.mtime)
        parent, name = self._split(path)
        assert parent.children is not None
        existing = parent.children.get(name)
        if existing is not None and existing.kind is NodeKind.DIR:
            existing.mode = mode
            for k, v in kw.items():
                setattr(existing, k, v)
            return existing
        return self.add(path, Inode(NodeKind.DIR, mode, children={}, **kw))  # type: ignore[arg-type]

    def symlink(self, path: str | bytes, target: str | bytes, **kw: object) -> Inode:
        kw.setdefault("mtime_sec", self.mtime)
        t = os.fsencode(target)
        return self.add(path, Inode(NodeKind.LNK, 0o777, size=len(t), target=t, **kw))  # type: ignore[arg-type]

    def special(self, path: str | bytes, kind: NodeKind, *, mode: int = 0o644, major: int = 0, minor: int = 0,
                **kw: object) -> Inode:
        kw.setdefault("mtime_sec", self.mtime)
        return self.add(path, Inode(kind, mode, rdev_major=major, rdev_minor=minor, **kw))  # type: ignore[arg-type]

    def whiteout(self, path: str | bytes, **kw: object) -> Inode:
        return self.special(path, NodeKind.CHR, mode=0, **kw)

    def link(self, path: str | bytes, existing: Inode) -> Inode:
        return self.add(path, existing)


def build(path: Path, populate: Callable[[TreeBuilder], None], *, build_time: int = T,
          tail_memory: int | None = None, **tree_kw: object) -> tuple[TreeBuilder, int]:
    """Write an image at ``path`` from ``populate``; returns the builder and the image size.

    ``tail_memory`` overrides ``ImageDataArea``'s cap on tails kept in memory (None: default).
    """
    area_kw = {} if tail_memory is None else {"tail_memory": tail_memory}
    with open(path, "w+b") as out, ImageDataArea(out, **area_kw) as area:
        tb = TreeBuilder(area, mtime=build_time, **tree_kw)
        populate(tb)
        size = write_image(tb.root, area, build_time=build_time)
    return tb, size


def _mtime_ns(node: Inode) -> int:
    return node.mtime_sec * 1_000_000_000 + node.mtime_nsec


def expected_snapshot(tb: TreeBuilder) -> dict[str, Entry]:
    """What ``tests.support.compare.snapshot`` of a mount of the tree must show."""
    out: dict[str, Entry] = {}
    members: dict[Inode, list[str]] = {}

    def visit(node: Inode, path: str) -> None:
        e = Entry(mode=node.st_mode, uid=node.uid, gid=node.gid, mtime_ns=_mtime_ns(node), size=0,
                  xattrs=dict(node.xattrs))
        if node.kind is NodeKind.REG:
            data = tb.contents[node]
            e.size = len(data)
            e.sha256 = hashlib.sha256(data).hexdigest()
            members.setdefault(node, []).append(path)
        elif node.kind is NodeKind.LNK:
            e.target = os.fsdecode(node.target)
            e.size = len(node.target)
        elif node.kind in (NodeKind.CHR, NodeKind.BLK):
            e.rdev = (node.rdev_major, node.rdev_minor)
        out[path] = e
        if node.children is not None:
            for name, child in sorted(node.children.items()):
                visit(child, ("" if path == "/" else path) + "/" + os.fsdecode(name))

    visit(tb.root, "/")
    for paths in members.values():
        if len(paths) > 1:
            group = hash(min(paths))
            for p in paths:
                out[p].link_group = group
    return out


def reader_snapshot(img: ErofsImage, *, contents: bool = True) -> dict[str, Entry]:
    """The same snapshot, made by our reader instead of a kernel mount (``contents=False``:
    sizes only, no sha256 — for compressed images, whose contents our reader refuses)."""
    out: dict[str, Entry] = {}
    members: dict[int, list[str]] = {}
    for raw_path, st in img.walk():
        path = os.fsdecode(raw_path)
        e = Entry(mode=st.st_mode, uid=st.uid, gid=st.gid, mtime_ns=st.mtime_sec * 1_000_000_000 + st.mtime_nsec,
                  size=0, xattrs=img.xattrs(st.nid))
        if stat.S_ISREG(st.st_mode) and not contents:
            e.size = st.size
            if st.nlink > 1:
                members.setdefault(st.nid, []).append(path)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            n = 0
            for chunk in img.read_file(st.nid):
                h.update(chunk)
                n += len(chunk)
            assert n == st.size, f"{path}: read {n} bytes, size says {st.size}"
            e.size = st.size
            e.sha256 = h.hexdigest()
            if st.nlink > 1:
                members.setdefault(st.nid, []).append(path)
        elif stat.S_ISLNK(st.st_mode):
            e.target = os.fsdecode(img.readlink(st.nid))
            e.size = st.size
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            e.rdev = (st.rdev_major, st.rdev_minor)
        out[path] = e
    for paths in members.values():
        group = hash(min(paths))
        for p in paths:
            out[p].link_group = group
    return out
