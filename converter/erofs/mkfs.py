"""The mkfs.erofs builder: a normalised tar of the finished tree, piped into ``mkfs.erofs``.

Design: docs/architecture.md §3.5; what it avoids: docs/deviations.md ("mkfs.erofs --tar").
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import uuid as uuid_mod
from pathlib import Path
from typing import IO

from converter.cancel import current_scope
from converter.erofs import format as fmt
from converter.erofs.target import TargetFormat
from converter.erofs.tools import ErofsUtils, erofs_utils
from converter.errors import ErofsFormatError, MkfsError
from converter.layers.model import OPAQUE_MARKER, OPAQUE_XATTR, ORIGIN_XATTR, WHITEOUT_PREFIX, Inode, NodeKind
from converter.layers.spool import SpoolSink

MKFS_MIN_VERSION = (1, 9, 3)  # reproducible xattr order; fixed PAX fraction parsing (1.9.2)
BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_NAME_LEN = 100
_TYPEFLAG = {
    NodeKind.REG: b"0",
    NodeKind.LNK: b"2",
    NodeKind.CHR: b"3",
    NodeKind.BLK: b"4",
    NodeKind.DIR: b"5",
    NodeKind.FIFO: b"6",
}
_HARDLINK = b"1"
_PAX = b"x"
_PAX_NAME = b"././@PaxHeader"


def _octal_fits(value: int, width: int) -> bool:
    return 0 <= value < 1 << (3 * (width - 1))


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated zero-padded octal field; the caller made sure the value fits."""
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"LEN KEY=VALUE\\n"`` record, where LEN counts the whole record including itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def _pax_time(sec: int, nsec: int) -> bytes:
    total = sec * 1_000_000_000 + nsec
    sign = b"-" if total < 0 else b""
    whole, frac = divmod(abs(total), 1_000_000_000)
    return b"%s%d.%09d" % (sign, whole, frac)


def _header(name: bytes, typeflag: bytes, *, mode: int = 0, uid: int = 0, gid: int = 0, size: int = 0,
            mtime: int = 0, linkname: bytes = b"", devmajor: int = 0, devminor: int = 0) -> bytes:
    """A ustar header block; every numeric argument must already fit its field."""
    head = bytearray(BLOCK)
    head[0:len(name)] = name
    head[100:108] = _octal(mode, 8)
    head[108:116] = _octal(uid, 8)
    head[116:124] = _octal(gid, 8)
    head[124:136] = _octal(size, 12)
    head[136:148] = _octal(mtime, 12)
    head[148:156] = b" " * 8
    head[156:157] = typeflag
    head[157:157 + len(linkname)] = linkname
    head[257:265] = b"ustar\x0000"
    head[329:337] = _octal(devmajor, 8)
    head[337:345] = _octal(devminor, 8)
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


class _TarWriter:
    """Writes ustar+PAX members to a stream, padding data to 512-byte blocks."""

    def __init__(self, out: IO[bytes], spool: SpoolSink) -> None:
        self._out = out
        self._spool = spool

    def member(self, path: bytes, typeflag: bytes, node: Inode | None, *, size: int = 0,
               linkname: bytes = b"", xattrs: dict[str, bytes] | None = None) -> None:
        mode = uid = gid = sec = nsec = major = minor = 0
        if node is not None:
            mode, uid, gid = node.mode & 0o7777, node.uid, node.gid
            sec, nsec = node.mtime_sec, node.mtime_nsec
            major, minor = node.rdev_major, node.rdev_minor
        records: list[bytes] = []
        if len(path) > _NAME_LEN:
            records.append(_pax_record(b"path", path))
        if len(linkname) > _NAME_LEN:
            records.append(_pax_record(b"linkpath", linkname))
        if nsec or not _octal_fits(sec, 12):
            records.append(_pax_record(b"mtime", _pax_time(sec, nsec)))
        if not _octal_fits(uid, 8):
            records.append(_pax_record(b"uid", b"%d" % uid))
        if not _octal_fits(gid, 8):
            records.append(_pax_record(b"gid", b"%d" % gid))
        if not _octal_fits(size, 12):
            records.append(_pax_record(b"size", b"%d" % size))
        if not (_octal_fits(major, 8) and _octal_fits(minor, 8)):
            raise ValueError(f"device number {major}:{minor} does not fit a tar header")
        for key in sorted(xattrs or {}):
            value = (xattrs or {})[key]
            records.append(_pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"), value))
        if records:
            pax = b"".join(records)
            self._out.write(_header(_PAX_NAME, _PAX, mode=0o644, size=len(pax)))
            self._write_padded(pax)
        self._out.write(_header(
            path[:_NAME_LEN], typeflag, mode=mode,
            uid=uid if _octal_fits(uid, 8) else 0, gid=gid if _octal_fits(gid, 8) else 0,
            size=size if _octal_fits(size, 12) else 0,
            mtime=sec if _octal_fits(sec, 12) else 0,
            linkname=linkname[:_NAME_LEN], devmajor=major, devminor=minor))

    def _write_padded(self, data: bytes) -> None:
        self._out.write(data)
        self._pad(len(data))

    def _pad(self, size: int) -> None:
        rest = size % BLOCK
        if rest:
            self._out.write(_ZERO_BLOCK[rest:])

    def contents(self, node: Inode) -> None:
        if node.size == 0:
            return
        if node.data is None:
            raise ValueError(f"a {node.size}-byte regular file has no contents")
        if node.data.size != node.size:
            raise ValueError(f"inode size {node.size} != stored contents size {node.data.size}")
        self._spool.copy_to(node.data, self._out)
        self._pad(node.size)

    def end(self) -> None:
        self._out.write(_ZERO_BLOCK * 2)


def _dir_xattrs(node: Inode, *, is_root: bool) -> dict[str, bytes]:
    """Xattrs to emit on a directory's own entry.

    mkfs adds the origin xattr itself to a directory with a ``.wh.`` child (emitting it too
    would store it twice), and the opaque xattr of a non-root directory comes from its marker.
    """
    assert node.children is not None
    out = dict(node.xattrs)
    if any(child.is_whiteout() for child in node.children.values()):
        out.pop(ORIGIN_XATTR, None)
    if not is_root and out.get(OPAQUE_XATTR) == b"y":
        del out[OPAQUE_XATTR]
    return out


def emit_tar(root: Inode, spool: SpoolSink, out: IO[bytes]) -> None:
    """Stream the tree as a tar that mkfs.erofs ``--tar=f --aufs`` 1.9.x reads faithfully."""
    if root.kind is not NodeKind.DIR or root.children is None:
        raise ValueError("emit_tar needs a directory as the root")
    w = _TarWriter(out, spool)
    w.member(b"./", _TYPEFLAG[NodeKind.DIR], root, xattrs=_dir_xattrs(root, is_root=True))
    first_path: dict[int, bytes] = {}
    # Depth-first, children in byte order; a directory's entry precedes its children.
    stack: list[tuple[bytes, Inode]] = [(b"", root)]
    while stack:
        prefix, directory = stack.pop()
        assert directory.children is not None
        subdirs: list[tuple[bytes, Inode]] = []
        for name in sorted(directory.children):
            node = directory.children[name]
            if not name or name in (b".", b"..") or b"/" in name or b"\0" in name or \
                    name.startswith(WHITEOUT_PREFIX):
                raise ValueError(f"{prefix + name!r}: not a valid name for a normalised tree")
            path = prefix + name
            if node.kind is NodeKind.DIR:
                subdirs.append((path + b"/", node))
                continue
            _emit_leaf(w, path, prefix + WHITEOUT_PREFIX + name, node, first_path)
        # Subdirectories after the files of this level: output stays deterministic either way.
        for path, node in subdirs:
            w.member(path, _TYPEFLAG[NodeKind.DIR], node, xattrs=_dir_xattrs(node, is_root=False))
            if node.xattrs.get(OPAQUE_XATTR) == b"y":
                w.member(path + OPAQUE_MARKER, _TYPEFLAG[NodeKind.REG], node)
        stack.extend(reversed(subdirs))
    w.end()
    out.flush()


def _emit_leaf(w: _TarWriter, path: bytes, whiteout_path: bytes, node: Inode,
               first_path: dict[int, bytes]) -> None:
    if node.kind is NodeKind.SOCK:
        raise ValueError(f"{path!r}: sockets cannot be expressed in a tar")
    if node.is_whiteout():
        w.member(whiteout_path, _TYPEFLAG[NodeKind.REG], node)
        return
    seen = first_path.get(id(node))
    if seen is not None:
        w.member(path, _HARDLINK, node, linkname=seen)
        return
    first_path[id(node)] = path
    if node.kind is NodeKind.REG:
        w.member(path, _TYPEFLAG[NodeKind.REG], node, size=node.size, xattrs=node.xattrs)
        w.contents(node)
    elif node.kind is NodeKind.LNK:
        # Symlink targets may exceed the 100-byte field: PAX linkpath covers them.
        w.member(path, _TYPEFLAG[NodeKind.LNK], node, linkname=node.target, xattrs=node.xattrs)
    else:
        w.member(path, _TYPEFLAG[node.kind], node, xattrs=node.xattrs)


def check_tree(root: Inode) -> None:
    """Refuse, naming the path, a tree that mkfs.erofs would store wrong without a word.

    mkfs.erofs 1.9.4 writes a corrupt image (fsck.erofs: "xattr entry beyond xattr_isize")
    when one inode's xattrs need more room than the u16 ``i_xattr_icount`` can describe, and
    stores names with no known prefix (``system.foo``) under index 0, which no kernel shows.
    Encoding each inode's xattr body the way our own writer does gives both builders the same
    rules; hard-linked inodes are checked once.
    """
    seen: set[int] = set()
    stack: list[tuple[bytes, Inode]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.xattrs:
            try:
                fmt.encode_xattr_ibody(node.xattrs)
            except ErofsFormatError as exc:
                shown = (b"/" + path).decode("utf-8", "backslashreplace")
                raise ErofsFormatError(f"{shown}: {exc}") from None
        if node.children:
            prefix = path + b"/" if path else b""
            stack.extend((prefix + name, child) for name, child in node.children.items())


# -- running mkfs.erofs -----------------------------------------------------------------------


def mkfs_tools() -> ErofsUtils:
    """erofs-utils with a mkfs.erofs new enough for this builder (a ToolError says what to do)."""
    return erofs_utils(need=MKFS_MIN_VERSION, feature="building EROFS layers with mkfs.erofs")


def needs_extended_inodes(root: Inode, build_time: int) -> bool:
    """True if some inode's mtime is the build-time second with a non-zero fraction.

    mkfs.erofs (1.9.4 too) picks a compact inode when an mtime's *seconds* equal the build
    time and silently drops the nanoseconds (docs/erofs-format.md §4.6). Such trees are built
    with every inode extended, which keeps every time exact.
    """
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.mtime_sec == build_time and node.mtime_nsec != 0:
            return True
        if node.children:
            stack.extend(node.children.values())
    return False


def mkfs_command(mkfs: Path | str, out_path: Path | str, *, fmt: TargetFormat, build_time: int,
                 uuid: uuid_mod.UUID, bottom: bool, force_extended: bool = False) -> list[str]:
    """The mkfs.erofs command line (the tar comes on stdin)."""
    cmd = [str(mkfs), "--tar=f", "--aufs", "-b4096", f"-T{build_time}", "--mkfs-time", f"-U{uuid}",
           "--quiet", *fmt.mkfs_args()]
    if force_extended:
        cmd.append("-Eforce-inode-extended")
    if bottom:
        cmd.append("--ovlfs-strip=1")
    cmd.append(str(out_path))
    return cmd


def build_with_mkfs(root: Inode, spool: SpoolSink, out_path: Path | str, *, fmt: TargetFormat, build_time: int,
                    uuid: uuid_mod.UUID, bottom: bool, display_name: str = "") -> None:
    """Build ``out_path`` from the tree with mkfs.erofs; ``MkfsError`` with its stderr on failure.

    ``ErofsFormatError`` (before mkfs runs) for a tree EROFS cannot hold; see ``check_tree``.
    ``display_name`` names the image in messages (default: the file name of ``out_path``).
    """
    tools = mkfs_tools()
    check_tree(root)
    out_path = Path(out_path)
    cmd = mkfs_command(tools.mkfs, out_path, fmt=fmt, build_time=build_time, uuid=uuid, bottom=bottom,
                       force_extended=needs_extended_inodes(root, build_time))
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["LC_ALL"] = "C"
    what = f"building {display_name or out_path.name} ({fmt}) with mkfs.erofs {tools.version_str}"
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env)
    except OSError as exc:
        raise MkfsError(f"{what}: cannot run {tools.mkfs}: {exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(stdout.read()), name="mkfs-output", daemon=True)
    reader.start()
    feed_error: Exception | None = None
    broken_pipe = False
    scope = current_scope()  # set in a pipeline worker: cancelling the graph kills mkfs at once
    try:
        with scope.blocking(proc.kill, what) if scope is not None else contextlib.nullcontext():
            try:
                emit_tar(root, spool, stdin)
            except BrokenPipeError:
                broken_pipe = True  # mkfs exited early: its status and message explain why
            except Exception as exc:  # a tree mkfs cannot take, or the spool failed
                feed_error = exc
                proc.kill()
            with contextlib.suppress(OSError):
                stdin.close()
            returncode = proc.wait()
        if scope is not None:
            scope.check(what)  # killed by a cancel: say so rather than "mkfs.erofs failed"
    finally:
        if proc.returncode is None:  # interrupted (KeyboardInterrupt, ...): never leave mkfs behind
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            stdin.close()
        reader.join()
        stdout.close()
        if proc.returncode != 0 or feed_error is not None:
            with contextlib.suppress(OSError):
                out_path.unlink()
    text = b"".join(output).decode("utf-8", "replace")
    errors = [ln for ln in text.splitlines() if "<E>" in ln]
    if feed_error is not None or returncode != 0 or errors:
        with contextlib.suppress(OSError):
            out_path.unlink()
        if feed_error is not None:
            raise MkfsError(f"{what}: writing the tar failed: {feed_error}", stderr=text) from feed_error
        raise MkfsError(f"{what} failed", returncode=returncode, stderr=text)
    if broken_pipe:
        with contextlib.suppress(OSError):
            out_path.unlink()
        raise MkfsError(f"{what}: mkfs.erofs exited before reading the whole tar", returncode=returncode,
                        stderr=text)
