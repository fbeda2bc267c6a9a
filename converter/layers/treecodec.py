"""A layer's normalised tree as bytes, to hand it to another process (``pipeline/buildproc.py``).

What crosses is everything a lower view needs (``pipeline/lower.py``): every node's kind,
permission bits, owner, mtime, xattrs, size, symlink target and device numbers, and the
directory structure with hard links kept as shared nodes. Not the file contents' ``data``
references: they point into the sending process's data area and mean nothing elsewhere, so a
decoded tree has ``data=None`` everywhere (a lower file's bytes are always read again through
the view's opener).

The format is a flat pre-order list of tuples for ``marshal`` (fast in both directions, and
flat, so a deep tree meets no recursion limit): ``(name, kind, mode, uid, gid, mtime_sec,
mtime_nsec, xattrs, size, target, rdev_major, rdev_minor, nchildren)`` per node, children
(in their dict order) right after their directory; a node already sent (another link to the
same inode) is ``(name, index)`` with the index of its first occurrence. marshal is a
CPython-private format, which is fine here: both ends run the same interpreter.
"""

from __future__ import annotations

import marshal

from converter.layers.model import Inode, NodeKind

_KINDS = {k.value: k for k in NodeKind}
_VERSION = 1


def encode_tree(root: Inode) -> bytes:
    """``root`` (a directory) and everything below it, as bytes for ``decode_tree``."""
    out: list[tuple[object, ...]] = []
    seen: dict[int, int] = {}
    stack: list[tuple[bytes, Inode]] = [(b"", root)]
    while stack:
        name, n = stack.pop()
        first = seen.get(id(n))
        if first is not None:
            out.append((name, first))
            continue
        seen[id(n)] = len(out)
        ch = n.children
        out.append((name, n.kind.value, n.mode, n.uid, n.gid, n.mtime_sec, n.mtime_nsec, n.xattrs, n.size,
                    n.target, n.rdev_major, n.rdev_minor, -1 if ch is None else len(ch)))
        if ch:
            stack.extend(reversed(ch.items()))  # popped in dict order
    return marshal.dumps((_VERSION, out))


def decode_tree(data: bytes) -> Inode:
    """The tree ``encode_tree`` wrote (contents references are None)."""
    version, items = marshal.loads(data)
    if version != _VERSION:
        raise ValueError(f"tree encoding version {version}, expected {_VERSION}")
    nodes: list[Inode] = []
    root: Inode | None = None
    # (directory's children dict, children still to come)
    parents: list[tuple[dict[bytes, Inode], int]] = []
    for item in items:
        if len(item) == 2:
            name, index = item
            node = nodes[index]
            nodes.append(node)
            count = -1
        else:
            (name, kind, mode, uid, gid, msec, mnsec, xattrs, size, target, rmaj, rmin, count) = item
            node = Inode(_KINDS[kind], mode, uid, gid, msec, mnsec, xattrs, size, None, target, rmaj, rmin,
                         None if count < 0 else {})
            nodes.append(node)
        if parents:
            children, left = parents[-1]
            children[name] = node
            if left == 1:
                parents.pop()
            else:
                parents[-1] = (children, left - 1)
        else:
            root = node
        if count > 0:
            assert node.children is not None
            parents.append((node.children, count))
    assert root is not None and not parents, "truncated tree encoding"
    return root
