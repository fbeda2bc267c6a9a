"""Data model shared by the tar reader, the layer normaliser and the EROFS builders.

The flow is: ``tarstream`` yields ``TarEntry`` values (raw archive facts) with a ``FileData``
stream (``filedata``) for regular files; ``normalise`` applies OCI changeset semantics and
builds a tree of ``Inode`` objects (metadata only) while file contents go to a ``DataSink`` that returns a
``DataRef``; a builder (pure-Python writer, or a normalised tar fed to mkfs.erofs) turns the
tree into an image. Only metadata stays in memory: contents live in the sink.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from converter.layers.filedata import FileData


class EntryKind(enum.Enum):
    """Kinds of tar entries after typeflag decoding (old-style NUL/'7' are REG, 'S' sparse is REG)."""

    REG = "reg"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHR = "chr"
    BLK = "blk"
    FIFO = "fifo"


@dataclass(slots=True, init=False)
class TarEntry:
    """One archive member, with PAX/GNU extensions already applied.

    ``name`` is the member path exactly as the archive resolves it (PAX ``path``, GNU 'L', or
    ustar prefix/name), not yet normalised. ``size`` is the logical size of a regular file: for
    sparse members the expanded size.
    """

    name: bytes
    kind: EntryKind
    mode: int  # permission bits including setuid/setgid/sticky (mode & 0o7777)
    uid: int
    gid: int
    mtime_sec: int
    mtime_nsec: int
    size: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]  # full names, e.g. "user.foo"

    # Written out (init=False), with the defaults: compiled (native.py), this __init__ is C;
    # dataclasses' generated one would stay interpreted, and it runs once per tar member.
    def __init__(self, name: bytes, kind: EntryKind, mode: int, uid: int, gid: int, mtime_sec: int,
                 mtime_nsec: int, size: int = 0, linkname: bytes = b"", devmajor: int = 0, devminor: int = 0,
                 xattrs: dict[str, bytes] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime_sec = mtime_sec
        self.mtime_nsec = mtime_nsec
        self.size = size
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = {} if xattrs is None else xattrs

    def display_name(self) -> str:
        """The name for error messages (undecodable bytes escaped, never raising, shortened)."""
        return shorten_name(self.name.decode("utf-8", "backslashreplace"))


#: Names longer than this are shortened in messages: a hostile 1 MiB PAX path must not become
#: a 1 MiB error line.
NAME_DISPLAY_MAX = 512


def shorten_name(name: str) -> str:
    """``name`` itself, or its start and end around a note of how long it is."""
    if len(name) <= NAME_DISPLAY_MAX:
        return name
    keep = NAME_DISPLAY_MAX // 2 - 16
    return f"{name[:keep]}...({len(name)} characters)...{name[-keep:]}"


class NodeKind(enum.IntEnum):
    """Inode types; the values are the EROFS/Linux dirent file_type codes."""

    REG = 1
    DIR = 2
    CHR = 3
    BLK = 4
    FIFO = 5
    SOCK = 6
    LNK = 7


S_IFMT_BY_KIND = {
    NodeKind.REG: 0o100000,
    NodeKind.DIR: 0o040000,
    NodeKind.CHR: 0o020000,
    NodeKind.BLK: 0o060000,
    NodeKind.FIFO: 0o010000,
    NodeKind.SOCK: 0o140000,
    NodeKind.LNK: 0o120000,
}


class DataRef(Protocol):
    """Where a sink stored one file's contents; only the sink that made it reads it back."""

    @property
    def size(self) -> int: ...


class DataSink(Protocol):
    """Receives regular-file contents while the tar streams; returns a handle to them."""

    def add(self, data: FileData, size: int) -> DataRef: ...


@dataclass(slots=True, eq=False, init=False)
class Inode:
    """One filesystem object of the normalised layer. Hard links are one Inode in several dirs.

    ``mode`` holds only permission bits (0o7777); the type is ``kind``. A whiteout is a CHR
    inode with rdev 0:0 and mode 0. Directories have ``children`` (name -> Inode, names are
    single path components as bytes); other kinds have ``children is None``.
    """

    kind: NodeKind
    mode: int
    uid: int
    gid: int
    mtime_sec: int
    mtime_nsec: int
    xattrs: dict[str, bytes]
    size: int  # REG: contents length; LNK: target length; others 0
    data: DataRef | None  # REG with size > 0
    target: bytes  # LNK
    rdev_major: int
    rdev_minor: int
    children: dict[bytes, Inode] | None

    # Written out (init=False), with the defaults, for the same reason as TarEntry's: once per inode.
    def __init__(self, kind: NodeKind, mode: int, uid: int = 0, gid: int = 0, mtime_sec: int = 0,
                 mtime_nsec: int = 0, xattrs: dict[str, bytes] | None = None, size: int = 0,
                 data: DataRef | None = None, target: bytes = b"", rdev_major: int = 0, rdev_minor: int = 0,
                 children: dict[bytes, Inode] | None = None) -> None:
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime_sec = mtime_sec
        self.mtime_nsec = mtime_nsec
        self.xattrs = {} if xattrs is None else xattrs
        self.size = size
        self.data = data
        self.target = target
        self.rdev_major = rdev_major
        self.rdev_minor = rdev_minor
        self.children = children

    @property
    def st_mode(self) -> int:
        return S_IFMT_BY_KIND[self.kind] | (self.mode & 0o7777)

    def is_whiteout(self) -> bool:
        return self.kind is NodeKind.CHR and self.rdev_major == 0 and self.rdev_minor == 0


@dataclass(frozen=True, slots=True)
class DirMeta:
    """Metadata a directory has in the merged lower layers; implicit parents inherit it."""

    mode: int
    uid: int
    gid: int
    mtime_sec: int
    mtime_nsec: int
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def __reduce__(self) -> tuple[type[DirMeta], tuple[int, int, int, int, int, tuple[tuple[str, bytes], ...]]]:
        # Pickled to a build process (pipeline/buildproc.py). Compiled (native.py), the default
        # pickling restores the fields by assignment, which a frozen class refuses.
        return DirMeta, (self.mode, self.uid, self.gid, self.mtime_sec, self.mtime_nsec, self.xattrs)


class LowerView(Protocol):
    """What an upper layer may learn about the merged layers below it."""

    def dir_meta(self, path: bytes) -> DirMeta | None:
        """Metadata of directory ``path`` (no leading slash, b"" is the root) below, or None."""
        ...

    def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
        """A regular file at ``path`` below (for cross-layer hard links), or None."""
        ...


OPAQUE_XATTR = "trusted.overlay.opaque"
ORIGIN_XATTR = "trusted.overlay.origin"
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"


def lookup(root: Inode, parts: Iterable[bytes]) -> Inode | None:
    """The node reached from ``root`` by the path components ``parts``, or None."""
    node = root
    for comp in parts:
        if node.children is None:
            return None
        child = node.children.get(comp)
        if child is None:
            return None
        node = child
    return node
