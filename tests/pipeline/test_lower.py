"""StackedLower answers like MergedDirs (property test), and serves lower files for hard links."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from converter.layers.filedata import FileData
from converter.layers.model import OPAQUE_XATTR, DirMeta, Inode, NodeKind
from converter.layers.normalise import MergedDirs
from converter.pipeline.lower import DiscardSink, EmptyData, StackedLower, lookup

NAMES = [b"a", b"b", b"c"]


def _dir(rnd: random.Random, depth: int, *, bottom: bool) -> Inode:
    node = Inode(NodeKind.DIR, rnd.choice([0o755, 0o700, 0o1777]), uid=rnd.randrange(3),
                 mtime_sec=rnd.randrange(5), children={},
                 xattrs={"user.x": bytes([rnd.randrange(3)])} if rnd.random() < 0.3 else {})
    if not bottom and rnd.random() < 0.2:
        node.xattrs[OPAQUE_XATTR] = b"y"
    assert node.children is not None
    for name in NAMES:
        roll = rnd.random()
        if roll < 0.35 and depth < 3:
            node.children[name] = _dir(rnd, depth + 1, bottom=bottom)
        elif roll < 0.5:
            node.children[name] = Inode(NodeKind.REG, 0o644, size=rnd.randrange(4))
        elif roll < 0.6 and not bottom:
            node.children[name] = Inode(NodeKind.CHR, 0)  # whiteout
        elif roll < 0.65:
            node.children[name] = Inode(NodeKind.LNK, 0o777, target=b"x", size=1)
    return node


def all_paths() -> list[bytes]:
    out = [b""]
    frontier = [b""]
    for _ in range(4):
        frontier = [(p + b"/" + n).lstrip(b"/") for p in frontier for n in NAMES]
        out += frontier
    return out


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), layers=st.integers(1, 5))
def test_same_answers_as_merged_dirs(seed: int, layers: int) -> None:
    rnd = random.Random(seed)
    roots = [_dir(rnd, 0, bottom=i == 0) for i in range(layers)]
    merged = MergedDirs()
    for root in roots:
        merged.apply(root)
    stacked = StackedLower(roots)
    for path in all_paths():
        assert stacked.dir_meta(path) == merged.dir_meta(path), path


def test_opaque_ancestor_hides_lower_subtree() -> None:
    # layer 1 has an opaque a/ holding b/; layer 0's a/b/c must not show through
    lower = root_with(a=root_with(b=root_with(c=root_with())))
    upper = root_with(a=root_with(b=root_with()))
    upper.children[b"a"].xattrs[OPAQUE_XATTR] = b"y"  # type: ignore[index]
    assert StackedLower([lower]).dir_meta(b"a/b/c") is not None
    assert StackedLower([lower, upper]).dir_meta(b"a/b/c") is None
    assert StackedLower([lower, upper]).dir_meta(b"a/b") is not None


def test_empty_stack() -> None:
    assert StackedLower([]).dir_meta(b"") is None
    assert StackedLower([]).open_file(b"a") is None


def root_with(**children: Inode) -> Inode:
    return Inode(NodeKind.DIR, 0o755, children={k.encode(): v for k, v in children.items()})


def test_open_file_finds_the_providing_layer() -> None:
    f0 = Inode(NodeKind.REG, 0o600, size=3)
    f1 = Inode(NodeKind.REG, 0o644, size=5)
    roots = [root_with(d=root_with(f=f0), g=Inode(NodeKind.REG, 0o644, size=1)),
             root_with(d=root_with(f=f1), g=Inode(NodeKind.CHR, 0))]
    asked: list[tuple[int, bytes]] = []

    def opener(k: int, path: bytes, node: Inode) -> FileData:
        asked.append((k, path))
        return EmptyData()

    stacked = StackedLower(roots, opener=opener)
    found = stacked.open_file(b"d/f")
    assert found is not None and found[0] is f1
    assert asked == [(1, b"d/f")]
    assert stacked.open_file(b"g") is None  # whited out in layer 1
    assert stacked.open_file(b"d") is None  # a directory
    below = StackedLower(roots[:1], opener=opener).open_file(b"d/f")
    assert below is not None and below[0] is f0 and asked[-1] == (0, b"d/f")
    assert StackedLower(roots).open_file(b"d/f") is None  # no opener: like MergedDirs
    assert stacked.dir_meta(b"d") == DirMeta(0o755, 0, 0, 0, 0)


def test_helpers() -> None:
    tree = root_with(x=root_with(y=Inode(NodeKind.REG, 0)))
    assert lookup(tree, b"x/y") is not None and lookup(tree, b"x/z") is None and lookup(tree, b"x/y/z") is None
    assert DiscardSink().add(EmptyData(), 7).size == 7
    assert list(EmptyData().chunks()) == [] and EmptyData().read() == b""
