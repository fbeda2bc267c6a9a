"""A tree survives encode_tree/decode_tree with everything but its data references."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.layers.model import Inode, NodeKind
from converter.layers.treecodec import decode_tree, encode_tree


def _meta(node: Inode) -> tuple[object, ...]:
    return (node.kind, node.mode, node.uid, node.gid, node.mtime_sec, node.mtime_nsec, node.xattrs, node.size,
            node.target, node.rdev_major, node.rdev_minor)


def _walk(root: Inode) -> list[tuple[tuple[bytes, ...], tuple[object, ...], int]]:
    """(path, metadata, index of the first path that holds the same node) in dict order."""
    out: list[tuple[tuple[bytes, ...], tuple[object, ...], int]] = []
    first: dict[int, int] = {}
    stack: list[tuple[tuple[bytes, ...], Inode]] = [((), root)]
    while stack:
        path, node = stack.pop()
        out.append((path, _meta(node), first.setdefault(id(node), len(out))))
        if node.children is not None:
            stack.extend(((*path, name), child) for name, child in reversed(node.children.items()))
    return out


def _random_tree(rnd: random.Random) -> Inode:
    root = Inode(NodeKind.DIR, 0o755, children={})
    dirs = [root]
    files: list[Inode] = []
    for i in range(rnd.randrange(1, 60)):
        parent = rnd.choice(dirs)
        assert parent.children is not None
        name = bytes(rnd.choice(b"abc\xff/") for _ in range(rnd.randrange(1, 4))) + str(i).encode()
        roll = rnd.random()
        if roll < 0.3:
            node = Inode(NodeKind.DIR, rnd.choice([0o755, 0o1777]), uid=rnd.randrange(2**32), children={},
                         xattrs={"trusted.overlay.opaque": b"y"} if rnd.random() < 0.3 else {})
            dirs.append(node)
        elif roll < 0.45 and files:
            node = rnd.choice(files)  # a hard link: the same node twice
        elif roll < 0.6:
            node = Inode(NodeKind.LNK, 0o777, target=b"t" * rnd.randrange(1, 300), size=0)
            node.size = len(node.target)
        elif roll < 0.7:
            node = Inode(rnd.choice([NodeKind.CHR, NodeKind.BLK, NodeKind.FIFO, NodeKind.SOCK]), 0o600,
                         rdev_major=rnd.randrange(300), rdev_minor=rnd.randrange(2**20))
        else:
            node = Inode(NodeKind.REG, 0o644, gid=rnd.randrange(70000), mtime_sec=rnd.randrange(-2**40, 2**40),
                         mtime_nsec=rnd.randrange(10**9), size=rnd.randrange(2**40),
                         xattrs={"user.k": bytes(rnd.randrange(256) for _ in range(rnd.randrange(5)))})
            files.append(node)
        parent.children[name] = node
    return root


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_round_trip(seed: int) -> None:
    root = _random_tree(random.Random(seed))
    back = decode_tree(encode_tree(root))
    assert _walk(back) == _walk(root)  # metadata, order and hard-link sharing


def test_data_references_stay_behind() -> None:
    root = Inode(NodeKind.DIR, 0o755, children={b"f": Inode(NodeKind.REG, 0o644, size=3, data=object())})  # type: ignore[arg-type]
    back = decode_tree(encode_tree(root))
    assert back.children is not None and back.children[b"f"].data is None and back.children[b"f"].size == 3


def test_deep_tree_meets_no_recursion_limit() -> None:
    root = node = Inode(NodeKind.DIR, 0o755, children={})
    for _ in range(5000):
        child = Inode(NodeKind.DIR, 0o700, children={})
        assert node.children is not None
        node.children[b"d"] = child
        node = child
    back = decode_tree(encode_tree(root))
    depth = 0
    while back.children:
        back = back.children[b"d"]
        depth += 1
    assert depth == 5000


def test_other_versions_are_refused() -> None:
    import marshal

    with pytest.raises(ValueError, match="version 9"):
        decode_tree(marshal.dumps((9, [])))
