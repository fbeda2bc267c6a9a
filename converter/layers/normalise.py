"""OCI layer changeset semantics → an overlayfs-ready ``Inode`` tree.

Why this exists: an OCI layer tar is a *changeset* (paths in any order, duplicates, implicit
parents, ``.wh.`` whiteout files, hard links, possibly forward references) while an EROFS
layer must be a finished filesystem in overlayfs form. Every builder (the pure-Python writer
and the mkfs.erofs route) consumes the tree this module produces, so each rule lives here
once, and neither builder has to trust the raw archive (mkfs.erofs ``--tar --aufs`` has
silent bugs for several of these cases, see ``converter/erofs/mkfs.py``).

Rules applied by ``LayerNormaliser`` (one instance per layer; ``add`` each entry in archive
order, then ``finish``):

* **Paths**: leading ``/`` and ``./`` are stripped, repeated slashes collapsed, ``.``
  components and trailing slashes dropped; ``""``, ``.``, ``./`` and ``/`` name the root,
  whose entry must be a directory. A ``..`` component, a NUL byte, a component longer
  than 255 bytes, or a path longer than ``PATH_MAX - 1`` bytes (counting its leading ``/``)
  is a ``LayerError`` naming the layer and the entry. A parent component that is a
  non-directory in this layer is an error too. (The path limit is what a container runtime
  can extract, and it bounds the depth of the tree: without it a 1 MiB PAX path makes a
  500,000-level tree whose mkfs.erofs tar would be quadratic in size.)
* **Numbers** the image cannot hold exactly are errors naming the entry, never truncated:
  uid/gid beyond 32 bits (mkfs.erofs would wrap 2**32 to uid 0, root), device numbers beyond
  Linux's 12-bit major / 20-bit minor.
* **Times** before 1970 or after 2262 (outside 0..2**63-1 nanoseconds) become 0, the epoch:
  containerd and moby bound every time they set that way (``boundTime``), so that is what a
  container sees.
* **Symlinks** always have mode 0777 (Linux ignores a symlink's mode; containerd never sets it).
* **Duplicates**: the later entry wins. A directory over a directory only updates mode,
  owner, mtime and xattrs and keeps the children; anything else replaces the old node, and a
  replaced directory loses its subtree.
* **Implicit parents** (and the root when the layer has no root entry) get the merged
  lower-layer metadata of that directory (``lower.dir_meta``), else 0755 root:root with
  mtime = ``build_time`` (never 0777, unlike mkfs.erofs). A later explicit entry overrides.
  An implicit directory whose lower copy is hidden in this layer (it was whited out, or an
  ancestor is opaque) gets the defaults, since the lower metadata is not visible there.
* **Hard links** make the new name refer to the *same* ``Inode`` object as the target.
  A link whose target is not (yet) in the tree is resolved at ``finish``, so forward
  references work; a target still missing at the end is materialised as a copy of the
  regular file in ``lower`` (contents streamed into the sink) or, without ``lower``, is an
  error. A link to a directory is an error.
* **Whiteouts**: ``dir/.wh.NAME`` becomes a character device 0:0 with mode 0 named NAME
  (owner and mtime from the header); ``dir/.wh..wh..opq`` sets
  ``trusted.overlay.opaque=y`` on ``dir`` (a root-level marker applies to the root); other
  ``.wh..wh.*`` AUFS internals (and anything below them) are dropped. A directory that
  holds a whiteout gets an empty ``trusted.overlay.origin`` (what mkfs.erofs ``--aufs``
  does: overlayfs then never iterates it directly and so never shows the 0:0 devices). No
  ``.wh.`` name ever reaches the tree; a ``.wh.`` name used as a parent directory is an
  error.
* **Whiteout and real entry of the same name in one layer**: OCI says a whiteout only
  applies to the layers below, so the real entry wins whatever the order. If the real entry
  is a directory it is made opaque: the lower directory was deleted and this one replaces
  it, so nothing of the lower one may show through. The same holds when a directory is
  created where a non-directory was written earlier in this layer (extracting the tar in
  order would have deleted the lower directory first).
* **bottom=True** (the lowest layer): whiteouts, opaque markers and origin xattrs are all
  dropped, including 0:0 character devices that the archive itself contains (in the lowest
  layer a whiteout hides nothing and must not appear, spec §3.6).
* **Source xattrs named ``trusted.overlay.*``** would steer overlayfs (a layer could fake
  opaque directories or redirects). They are escaped to ``trusted.overlay.overlay.*``, the
  form overlayfs (Linux 6.7+) itself uses for escaped xattrs and shows to users under the
  original name; ``trusted.overlay.overlay.X`` escapes again to
  ``trusted.overlay.overlay.overlay.X``. ``user.overlay.*`` (read only by ``userxattr``
  mounts) is kept as is. Other xattrs are kept with their full names (PAX ``SCHILY.xattr.``
  names already are full names).
* **Contents**: a regular file's data goes to ``sink.add(data, size)`` while the archive
  streams; the tree keeps only the returned ``DataRef``. Symlinks keep their target,
  devices their rdev.

``MergedDirs`` keeps the merged directory metadata of the converted lower layers, which is
what an upper layer's implicit parents need (``LowerView.dir_meta``).
"""

from __future__ import annotations

from dataclasses import dataclass

from converter.errors import LayerError
from converter.layers.filedata import FileData
from converter.layers.model import (
    OPAQUE_MARKER,
    OPAQUE_XATTR,
    ORIGIN_XATTR,
    WHITEOUT_PREFIX,
    DataSink,
    DirMeta,
    EntryKind,
    Inode,
    LowerView,
    NodeKind,
    TarEntry,
    lookup,
)

DEFAULT_DIR_MODE = 0o755
NAME_MAX = 255
PATH_MAX = 4096  # including the terminating NUL, as in <linux/limits.h>
ID_LIMIT = 1 << 32  # EROFS extended inodes store uid/gid as u32
BOUND_TIME_NS = (1 << 63) - 1  # containerd's maxTime: time.Unix(0, 0).Add(1<<63 - 1)
MAJOR_LIMIT, MINOR_LIMIT = 1 << 12, 1 << 20  # Linux new_encode_dev, which EROFS stores
SYMLINK_MAX = 4095  # PATH_MAX - 1: what the kernel can read back
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65535  # EROFS stores value lengths in a u16

OVERLAY_XATTR_PREFIX = "trusted.overlay."
ESCAPED_XATTR_PREFIX = "trusted.overlay.overlay."
AUFS_PREFIX = b".wh..wh."
#: Directories whose paths ``LayerNormaliser`` remembers at most (then it starts over): a
#: layer's entries come directory by directory, so a small window finds nearly every parent,
#: and memory stays bounded (remembering all 18,000 directories of a layer cost 8 MB).
DIR_CACHE_MAX = 1024

_KIND_BY_ENTRY = {
    EntryKind.REG: NodeKind.REG,
    EntryKind.DIR: NodeKind.DIR,
    EntryKind.SYMLINK: NodeKind.LNK,
    EntryKind.CHR: NodeKind.CHR,
    EntryKind.BLK: NodeKind.BLK,
    EntryKind.FIFO: NodeKind.FIFO,
}


class _PathError(ValueError):
    """A path that no normalisation can make valid (turned into a LayerError by the caller)."""


def split_path(name: bytes) -> list[bytes]:
    """Normalise an archive path into its components; ``[]`` is the root.

    Strips leading ``/`` and ``./``, collapses repeated slashes, drops ``.`` components and
    trailing slashes. Raises ``ValueError`` for ``..``, NUL bytes, over-long components and
    paths longer than ``PATH_MAX - 1`` bytes once written as ``/a/b``.
    """
    if b"\0" in name:
        raise _PathError("the path contains a NUL byte")
    parts = name.split(b"/")
    if b"" in parts or b"." in parts:  # checked in C: most names need no filtering
        parts = [p for p in parts if p and p != b"."]
    if len(name) <= NAME_MAX and b".." not in parts:
        return parts  # the common case: no component, nor "/a/b" (at most the name plus one), is too long
    if len(name) < PATH_MAX - 1 and b".." not in parts and (not parts or max(map(len, parts)) <= NAME_MAX):
        return parts  # "/a/b" is never longer than the name plus one
    length = 0
    for p in parts:
        if p == b"..":
            raise _PathError("the path has a '..' component")
        if len(p) > NAME_MAX:
            raise _PathError(f"a path component is {len(p)} bytes long (the limit is {NAME_MAX})")
        length += 1 + len(p)
    if length >= PATH_MAX:
        raise _PathError(f"the path is {length} bytes long (the limit is {PATH_MAX - 1})")
    return parts


def check_numbers(entry: TarEntry) -> str | None:
    """Why ``entry`` has an owner, time or device number an EROFS image cannot hold, or None."""
    if not (0 <= entry.uid < ID_LIMIT and 0 <= entry.gid < ID_LIMIT):
        return f"uid/gid {entry.uid}/{entry.gid} does not fit in 32 bits"
    if (entry.kind is EntryKind.CHR or entry.kind is EntryKind.BLK) and not (
        0 <= entry.devmajor < MAJOR_LIMIT and 0 <= entry.devminor < MINOR_LIMIT
    ):
        return (f"device number {entry.devmajor}:{entry.devminor} does not fit Linux's 12-bit major / "
                "20-bit minor")
    return None


def escape_xattr_name(name: str) -> str:
    """``trusted.overlay.X`` → ``trusted.overlay.overlay.X`` (overlayfs's escaping); others as is."""
    if name.startswith(OVERLAY_XATTR_PREFIX):
        return ESCAPED_XATTR_PREFIX + name[len(OVERLAY_XATTR_PREFIX):]
    return name


def is_overlay_internal_xattr(name: str) -> bool:
    """True for unescaped ``trusted.overlay.*`` names (overlayfs metadata of one layer)."""
    return name.startswith(OVERLAY_XATTR_PREFIX) and not name.startswith(ESCAPED_XATTR_PREFIX)


def _show(parts: list[bytes] | tuple[bytes, ...]) -> str:
    return b"/".join(parts).decode("utf-8", "backslashreplace") or "/"


@dataclass(slots=True)
class _PendingLink:
    """A hard link whose target was not in the tree when the link entry was read."""

    entry: TarEntry
    target: tuple[bytes, ...]
    resolved: Inode | None = None


class LayerNormaliser:
    """Turns one layer's ``TarEntry`` stream into an overlayfs-ready ``Inode`` tree.

    ``layer`` names the layer in error messages; ``bottom`` marks the lowest layer (no
    overlay metadata at all); ``lower`` is the merged view of the layers below (implicit
    parent metadata, cross-layer hard-link targets); ``build_time`` is the mtime given to
    invented directories.
    """

    def __init__(self, *, sink: DataSink, layer: str = "", bottom: bool = False,
                 lower: LowerView | None = None, build_time: int = 0) -> None:
        self._sink = sink
        self._layer = layer
        self._bottom = bottom
        self._lower = lower
        self._build_time = build_time
        self._root = self._implicit_dir()
        self._finished = False
        # Bookkeeping keyed by id(); each value keeps its Inode alive so ids are never reused.
        self._implicit: dict[int, Inode] = {id(self._root): self._root}
        self._opaque: dict[int, Inode] = {}  # directories with a .wh..wh..opq marker
        self._markers: dict[int, Inode] = {}  # whiteouts made from .wh.NAME entries
        self._generation = 0  # bumped whenever an existing child is replaced
        # Directories reached so far, by path, valid while ``_generation`` is ``_dirs_generation``.
        self._dirs: dict[tuple[bytes, ...], Inode] = {}
        self._dirs_generation = 0
        self._deleted: dict[int, tuple[Inode, set[bytes]]] = {}  # names deleted below a dir
        self._pending: dict[int, tuple[Inode, _PendingLink]] = {}  # forward hard links
        self._copies: dict[tuple[bytes, ...], Inode] = {}  # materialised lower files

    # -- errors ---------------------------------------------------------------------------

    def _error(self, message: str, entry: TarEntry | None = None) -> LayerError:
        return LayerError(message, layer=self._layer, entry=entry.display_name() if entry else "")

    # -- public API -----------------------------------------------------------------------

    def add(self, entry: TarEntry, data: FileData | None) -> None:
        """Apply one archive entry; a regular file's ``data`` is consumed here, into the sink."""
        if self._finished:
            raise RuntimeError("LayerNormaliser.add after finish()")
        try:
            parts = split_path(entry.name)
        except _PathError as exc:
            raise self._error(str(exc), entry) from None
        if WHITEOUT_PREFIX in entry.name:
            for i, comp in enumerate(parts):
                if comp.startswith(AUFS_PREFIX) and not (i == len(parts) - 1 and comp == OPAQUE_MARKER):
                    return  # AUFS internals (.wh..wh.plnk, .wh..wh.aufs, ...) and their contents
                if i < len(parts) - 1 and comp.startswith(WHITEOUT_PREFIX):
                    raise self._error(f"the whiteout name {_show(parts[:i + 1])!r} is used as a directory",
                                      entry)
        problem = check_numbers(entry)
        if problem is not None:
            raise self._error(problem, entry)
        if not 0 <= entry.mtime_sec * 1_000_000_000 + entry.mtime_nsec <= BOUND_TIME_NS:
            entry.mtime_sec, entry.mtime_nsec = 0, 0
        if not parts:
            self._add_root(entry)
            return
        name = parts[-1]
        if name == OPAQUE_MARKER:
            if not self._bottom:
                directory = self._ensure_dir(parts[:-1], entry)
                self._opaque[id(directory)] = directory
            return
        if name.startswith(WHITEOUT_PREFIX):
            self._add_whiteout(parts, entry)
            return
        self._add_real(parts, entry, data)

    def finish(self) -> Inode:
        """Resolve forward hard links, apply implicit metadata and overlay xattrs; the root."""
        if self._finished:
            raise RuntimeError("LayerNormaliser.finish called twice")
        self._finished = True
        self._dirs = {}
        self._resolve_links()
        self._finalise_dirs()
        return self._root

    # -- entries --------------------------------------------------------------------------

    def _add_root(self, entry: TarEntry) -> None:
        if entry.kind is not EntryKind.DIR:
            raise self._error(f"the root entry must be a directory, not a {entry.kind.value} entry", entry)
        self._update_dir(self._root, entry)
        self._implicit.pop(id(self._root), None)

    def _add_whiteout(self, parts: list[bytes], entry: TarEntry) -> None:
        if self._bottom:
            return
        target = parts[-1][len(WHITEOUT_PREFIX):]
        if target in (b"", b".", b".."):
            raise self._error(f"{_show(parts)!r} is not a valid whiteout name", entry)
        directory = self._ensure_dir(parts[:-1], entry)
        self._note_deleted(directory, target)
        assert directory.children is not None
        existing = directory.children.get(target)
        if existing is None:
            wh = Inode(NodeKind.CHR, 0, uid=entry.uid, gid=entry.gid, mtime_sec=entry.mtime_sec,
                       mtime_nsec=entry.mtime_nsec)
            directory.children[target] = wh
            self._markers[id(wh)] = wh
        elif id(existing) in self._markers:
            existing.uid, existing.gid = entry.uid, entry.gid
            existing.mtime_sec, existing.mtime_nsec = entry.mtime_sec, entry.mtime_nsec
        # else: a real entry of this layer wins; finish() makes it opaque if it is a directory

    def _add_real(self, parts: list[bytes], entry: TarEntry, data: FileData | None) -> None:
        directory = self._ensure_dir(parts[:-1], entry)
        assert directory.children is not None
        name = parts[-1]
        existing = directory.children.get(name)
        if entry.kind is EntryKind.HARDLINK:
            node = self._link(entry)
        elif (entry.kind is EntryKind.DIR and existing is not None and existing.kind is NodeKind.DIR):
            self._update_dir(existing, entry)
            self._implicit.pop(id(existing), None)
            return
        else:
            node = self._new_node(entry, data)
        if existing is not None:
            self._generation += 1  # a replaced node may be a directory on a cached path
            self._markers.pop(id(existing), None)
            if node.kind is NodeKind.DIR:
                # A non-directory written here first had deleted whatever was below: opaque.
                self._note_deleted(directory, name)
        directory.children[name] = node

    def _note_deleted(self, directory: Inode, name: bytes) -> None:
        if self._bottom:
            return
        slot = self._deleted.get(id(directory))
        if slot is None:
            self._deleted[id(directory)] = (directory, {name})
        else:
            slot[1].add(name)

    def _ensure_dir(self, parts: list[bytes], entry: TarEntry) -> Inode:
        # Directories reached are remembered by path until some node is replaced (``_generation``)
        # or ``DIR_CACHE_MAX`` are remembered, and a new one is reached from its parent's entry:
        # archives list a directory's entries together, then come back to its parent (one walk
        # per directory, one step long, instead of a walk from the root whenever the parent changes).
        dirs = self._dirs
        if self._dirs_generation != self._generation or len(dirs) >= DIR_CACHE_MAX:
            dirs.clear()
            self._dirs_generation = self._generation
        key = tuple(parts)
        node = dirs.get(key)
        if node is None:
            parent = dirs.get(key[:-1]) if len(key) > 1 else None
            node = self._walk_dirs(parts, entry) if parent is None else \
                self._walk_dirs(parts, entry, start=len(parts) - 1, node=parent)
            dirs[key] = node
        return node

    def _walk_dirs(self, parts: list[bytes], entry: TarEntry, *, start: int = 0, node: Inode | None = None) -> Inode:
        """The directory ``parts`` names, from ``node`` (the directory ``parts[:start]``; default
        the root), creating missing ones as implicit directories."""
        if node is None:
            node = self._root
        for i in range(start, len(parts)):
            comp = parts[i]
            assert node.children is not None
            child = node.children.get(comp)
            if child is None or id(child) in self._markers:
                if child is not None:  # .wh.X then X/...: X is a new directory (made opaque later)
                    del self._markers[id(child)]
                child = self._implicit_dir()
                node.children[comp] = child
                self._implicit[id(child)] = child
            elif child.kind is not NodeKind.DIR:
                what = "a hard link" if id(child) in self._pending else f"a {child.kind.name.lower()}"
                raise self._error(f"parent {_show(parts[:i + 1])!r} is {what}, not a directory, "
                                  "in this layer", entry)
            node = child
        return node

    def _implicit_dir(self) -> Inode:
        return Inode(NodeKind.DIR, DEFAULT_DIR_MODE, mtime_sec=self._build_time, children={})

    def _xattrs(self, entry: TarEntry) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for raw_name, value in entry.xattrs.items():
            name = escape_xattr_name(raw_name)
            encoded = name.encode("utf-8", "surrogateescape")
            if not name or "\0" in name or len(encoded) > XATTR_NAME_MAX:
                raise self._error(f"xattr name {raw_name!r} is empty, contains NUL or is longer than "
                                  f"{XATTR_NAME_MAX} bytes (after escaping)", entry)
            if len(value) > XATTR_SIZE_MAX:
                raise self._error(f"xattr {raw_name!r} has a {len(value)}-byte value (the limit is "
                                  f"{XATTR_SIZE_MAX})", entry)
            out[name] = bytes(value)
        return out

    def _update_dir(self, node: Inode, entry: TarEntry) -> None:
        node.mode = entry.mode & 0o7777
        node.uid, node.gid = entry.uid, entry.gid
        node.mtime_sec, node.mtime_nsec = entry.mtime_sec, entry.mtime_nsec
        node.xattrs = self._xattrs(entry)

    def _new_node(self, entry: TarEntry, data: FileData | None) -> Inode:
        # Once per entry: the common kind and "no xattrs" skip a dict lookup (EntryKind hashes
        # in Python) and a call.
        kind = NodeKind.REG if entry.kind is EntryKind.REG else _KIND_BY_ENTRY[entry.kind]
        mode = 0o777 if kind is NodeKind.LNK else entry.mode & 0o7777
        node = Inode(kind, mode, uid=entry.uid, gid=entry.gid, mtime_sec=entry.mtime_sec,
                     mtime_nsec=entry.mtime_nsec, xattrs=self._xattrs(entry) if entry.xattrs else {})
        if kind is NodeKind.REG:
            if entry.size < 0:
                raise self._error(f"negative size {entry.size}", entry)
            node.size = entry.size
            if data is not None:
                try:
                    ref = self._sink.add(data, entry.size)
                except LayerError as exc:
                    if exc.layer or exc.entry:
                        raise
                    raise self._error(exc.detail, entry) from exc
                node.data = ref if entry.size > 0 else None
            elif entry.size > 0:
                raise self._error(f"no contents were supplied for a {entry.size}-byte regular file", entry)
        elif kind is NodeKind.DIR:
            node.children = {}
        elif kind is NodeKind.LNK:
            target = entry.linkname
            if not target or b"\0" in target or len(target) > SYMLINK_MAX:
                raise self._error(f"symlink target must be 1..{SYMLINK_MAX} bytes without NUL "
                                  f"(it is {len(target)} bytes)", entry)
            node.target = target
            node.size = len(target)
        elif kind in (NodeKind.CHR, NodeKind.BLK):
            node.rdev_major, node.rdev_minor = entry.devmajor, entry.devminor
        return node

    # -- hard links -----------------------------------------------------------------------

    def _lookup(self, parts: tuple[bytes, ...] | list[bytes]) -> Inode | None:
        return lookup(self._root, parts)

    def _link(self, entry: TarEntry) -> Inode:
        try:
            target = tuple(split_path(entry.linkname))
        except _PathError as exc:
            raise self._error(f"hard link target: {exc}", entry) from None
        if not target:
            raise self._error("hard link to a directory (the root)", entry)
        found = self._lookup(target)
        if found is not None and id(found) not in self._markers and id(found) not in self._pending:
            if found.kind is NodeKind.DIR:
                raise self._error(f"hard link target {_show(target)!r} is a directory", entry)
            return found
        placeholder = Inode(NodeKind.REG, 0)
        self._pending[id(placeholder)] = (placeholder, _PendingLink(entry, target))
        return placeholder

    def _resolve(self, placeholder: Inode, chain: set[int]) -> Inode:
        link = self._pending[id(placeholder)][1]
        if link.resolved is not None:
            return link.resolved
        chain.add(id(placeholder))
        found = self._lookup(link.target)
        if found is not None and id(found) in self._pending and id(found) not in chain:
            found = self._resolve(found, chain)
        elif found is None or id(found) in self._markers or id(found) in self._pending:
            # missing, whited out, or links that only name each other: the target is below
            found = self._from_lower(link)
        elif found.kind is NodeKind.DIR:
            raise self._error(f"hard link target {_show(link.target)!r} is a directory", link.entry)
        link.resolved = found
        return found

    def _from_lower(self, link: _PendingLink) -> Inode:
        done = self._copies.get(link.target)
        if done is not None:
            return done
        shown = _show(link.target)
        if self._lower is None:
            raise self._error(f"hard link target {shown!r} is not in this layer; converting it needs the "
                              "lower layers", link.entry)
        path = b"/".join(link.target)
        got = self._lower.open_file(path)
        if got is None:
            if self._lower.dir_meta(path) is not None:
                raise self._error(f"hard link target {shown!r} is a directory in the lower layers",
                                  link.entry)
            raise self._error(f"hard link target {shown!r} is neither in this layer nor a regular file in "
                              "the lower layers", link.entry)
        below, data = got
        try:
            ref = self._sink.add(data, below.size)
        except LayerError as exc:
            raise self._error(f"copying hard link target {shown!r} from the lower layers: {exc.detail}",
                              link.entry) from exc
        copy = Inode(NodeKind.REG, below.mode & 0o7777, uid=below.uid, gid=below.gid,
                     mtime_sec=below.mtime_sec, mtime_nsec=below.mtime_nsec, xattrs=dict(below.xattrs),
                     size=below.size, data=ref if below.size > 0 else None)
        self._copies[link.target] = copy
        return copy

    def _resolve_links(self) -> None:
        if not self._pending:
            return
        stack = [self._root]
        while stack:
            node = stack.pop()
            assert node.children is not None
            for name, child in list(node.children.items()):
                if id(child) in self._pending:
                    node.children[name] = self._resolve(child, set())
                elif child.kind is NodeKind.DIR:
                    stack.append(child)

    # -- directories ----------------------------------------------------------------------

    def _finalise_dirs(self) -> None:
        """Implicit metadata, opaque/origin xattrs (or their removal for the bottom layer)."""
        # (node, path, lower hidden below an opaque ancestor, deleted-and-recreated here)
        stack: list[tuple[Inode, tuple[bytes, ...], bool, bool]] = [(self._root, (), False, False)]
        while stack:
            node, path, hidden, recreated = stack.pop()
            assert node.children is not None
            opaque = not self._bottom and (id(node) in self._opaque or recreated)
            if id(node) in self._implicit:
                self._implicit_meta(node, path, hidden or recreated)
            deleted = self._deleted.get(id(node), (node, set()))[1]
            has_whiteout = False
            for name, child in list(node.children.items()):
                if child.is_whiteout():
                    if self._bottom:
                        del node.children[name]
                    else:
                        has_whiteout = True
                elif child.kind is NodeKind.DIR:
                    stack.append((child, (*path, name), hidden or opaque, name in deleted))
            if opaque:
                node.xattrs[OPAQUE_XATTR] = b"y"
            if has_whiteout:
                node.xattrs[ORIGIN_XATTR] = b""

    def _implicit_meta(self, node: Inode, path: tuple[bytes, ...], hidden: bool) -> None:
        meta = None if hidden or self._lower is None else self._lower.dir_meta(b"/".join(path))
        if meta is None:
            return  # keeps the defaults set at creation
        node.mode = meta.mode & 0o7777
        node.uid, node.gid = meta.uid, meta.gid
        node.mtime_sec, node.mtime_nsec = meta.mtime_sec, meta.mtime_nsec
        node.xattrs = {k: v for k, v in meta.xattrs if not is_overlay_internal_xattr(k)}


# -- merged lower directories ---------------------------------------------------------------


class _DirNode:
    __slots__ = ("children", "meta")

    def __init__(self, meta: DirMeta) -> None:
        self.meta = meta
        self.children: dict[bytes, _DirNode] = {}


def dir_meta_of(node: Inode) -> DirMeta:
    """The ``DirMeta`` of a directory inode, without its layer-local overlayfs xattrs."""
    xattrs = tuple(sorted((k, v) for k, v in node.xattrs.items() if not is_overlay_internal_xattr(k)))
    return DirMeta(node.mode & 0o7777, node.uid, node.gid, node.mtime_sec, node.mtime_nsec, xattrs)


class MergedDirs:
    """A ``LowerView`` with the merged directory metadata of the layers converted so far.

    ``apply`` each layer's finished tree bottom-up. It keeps only directories (path → mode,
    owner, mtime, xattrs), so it stays small: a whiteout or a non-directory removes the lower
    directory and its subtree, an opaque directory forgets everything below it, and a
    directory in the new layer overrides the metadata of the one below (as overlayfs shows
    it). ``open_file`` always returns None: a view that can read lower files is the image
    pipeline's job. Xattrs are kept in their stored (escaped) form; layer-local
    ``trusted.overlay.*`` metadata is dropped.
    """

    def __init__(self) -> None:
        self._root: _DirNode | None = None

    def dir_meta(self, path: bytes) -> DirMeta | None:
        node = self._root
        for comp in path.split(b"/"):
            if node is None:
                return None
            if comp:
                node = node.children.get(comp)
        return node.meta if node is not None else None

    def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
        return None

    def __len__(self) -> int:
        """How many directories are known."""
        if self._root is None:
            return 0
        count, stack = 0, [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count

    def apply(self, root: Inode) -> None:
        """Merge one converted layer (its finished root) on top of what is known."""
        if root.kind is not NodeKind.DIR or root.children is None:
            raise ValueError("MergedDirs.apply needs a directory tree")
        if self._root is None:
            self._root = _DirNode(dir_meta_of(root))
        stack: list[tuple[_DirNode, Inode]] = [(self._root, root)]
        while stack:
            known, node = stack.pop()
            assert node.children is not None
            if node.xattrs.get(OPAQUE_XATTR) == b"y":
                known.children.clear()
            known.meta = dir_meta_of(node)
            for name, child in node.children.items():
                if child.kind is NodeKind.DIR:
                    sub = known.children.get(name)
                    if sub is None:
                        sub = known.children[name] = _DirNode(dir_meta_of(child))
                    stack.append((sub, child))
                else:
                    known.children.pop(name, None)
