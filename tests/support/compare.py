"""Snapshots of real directory trees (a kernel mount, an extraction) and entry-by-entry diffs."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True)
class Entry:
    """What a test compares for one path: everything the kernel shows about it."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    sha256: str = ""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    link_group: int = -1  # index of the hard-link group (regular files with nlink > 1)


def _xattrs(p: str) -> dict[str, bytes]:
    out = {}
    for name in os.listxattr(p, follow_symlinks=False):
        out[name] = os.getxattr(p, name, follow_symlinks=False)
    return out


def snapshot(root: Path, *, ignore_xattr_prefixes: tuple[str, ...] = ()) -> dict[str, Entry]:
    """Map '/rel/path' -> Entry for everything under ``root`` (root itself is '/')."""
    result: dict[str, Entry] = {}
    inode_groups: dict[tuple[int, int], int] = {}
    group_members: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [None, *sorted(filenames), *[d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]]:
            p = dirpath if name is None else os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(p, root) if p != str(root) else "/"
            rel = rel.replace("/./", "/") if rel != "/." else "/"
            st = os.lstat(p)
            e = Entry(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns, size=0)
            if stat.S_ISREG(st.st_mode):
                e.size = st.st_size
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                e.sha256 = h.hexdigest()
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    gid = inode_groups.setdefault(key, len(inode_groups))
                    e.link_group = gid
                    group_members.setdefault(gid, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                e.target = os.readlink(p)
                e.size = len(os.fsencode(e.target))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                e.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
            e.xattrs = {k: v for k, v in _xattrs(p).items() if not k.startswith(ignore_xattr_prefixes)}
            result[rel] = e
    # Canonical hard-link group ids: the sorted member lists, so two snapshots compare equal.
    canon = {gid: min(members) for gid, members in group_members.items()}
    for e in result.values():
        if e.link_group >= 0:
            e.link_group = hash(canon[e.link_group])
    return result


def diff(expected: dict[str, Entry], actual: dict[str, Entry], *, skip_dir_mtime: set[str] | None = None) -> list[str]:
    """Human-readable differences; empty when the trees are the same."""
    problems = []
    for path in sorted(set(expected) | set(actual)):
        if path not in actual:
            problems.append(f"missing {path}")
            continue
        if path not in expected:
            problems.append(f"unexpected {path}")
            continue
        a, b = expected[path], actual[path]
        for fname in ("mode", "uid", "gid", "mtime_ns", "size", "sha256", "target", "rdev", "xattrs", "link_group"):
            va, vb = getattr(a, fname), getattr(b, fname)
            if fname == "mtime_ns" and skip_dir_mtime is not None and path in skip_dir_mtime:
                continue
            if va != vb:
                if fname == "mode":
                    va, vb = oct(va), oct(vb)
                problems.append(f"{path}: {fname} expected {va!r}, got {vb!r}")
    return problems
