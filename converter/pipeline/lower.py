"""What an upper layer sees of the layers below it (``StackedLower``), without waiting for their builds.

Design: docs/architecture.md §3.2 and §4.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from converter.convert.layer import LayerOptions, read_layer
from converter.erofs.target import TargetFormat
from converter.layers.filedata import FileData
from converter.layers.model import OPAQUE_XATTR, DataSink, DirMeta, Inode, LowerView, NodeKind
from converter.layers.model import lookup as model_lookup
from converter.layers.normalise import dir_meta_of

# Contents of regular file ``path`` (whose node is given) in lower layer ``k`` of the stack.
FileOpener = Callable[[int, bytes, Inode], FileData]


def _is_opaque(node: Inode) -> bool:
    return node.xattrs.get(OPAQUE_XATTR) == b"y"


@runtime_checkable
class NodeFinder(Protocol):
    """A lower view that can also say which node a path is and in which layer (no contents)."""

    def find(self, path: bytes) -> tuple[int, Inode] | None: ...


class StackedLower:
    """A ``LowerView`` over the trees of the layers below (``roots[0]`` is the bottom)."""

    def __init__(self, roots: Sequence[Inode], *, opener: FileOpener | None = None) -> None:
        self._roots = tuple(roots)
        self._opener = opener

    def __len__(self) -> int:
        return len(self._roots)

    def find(self, path: bytes) -> tuple[int, Inode] | None:
        """The visible node at ``path`` in the merged lower layers and the layer holding it."""
        comps = [c for c in path.split(b"/") if c]
        for k in range(len(self._roots) - 1, -1, -1):
            node = self._roots[k]
            opaque = _is_opaque(node)
            for i, comp in enumerate(comps):
                assert node.children is not None
                child = node.children.get(comp)
                if child is None:
                    if opaque:
                        return None  # an opaque ancestor in this layer hides all lower content
                    break  # not in this layer: look further down
                if child.is_whiteout():
                    return None
                if child.kind is not NodeKind.DIR and i < len(comps) - 1:
                    return None  # a non-directory ancestor hides the path
                node = child
                opaque = opaque or _is_opaque(node)
            else:
                return k, node
        return None

    def dir_meta(self, path: bytes) -> DirMeta | None:
        found = self.find(path)
        if found is None or found[1].kind is not NodeKind.DIR:
            return None
        return dir_meta_of(found[1])

    def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
        found = self.find(path)
        if found is None or found[1].kind is not NodeKind.REG or self._opener is None:
            return None
        k, node = found
        return node, self._opener(k, path, node)


@dataclass(frozen=True, slots=True)
class SizeRef:
    """The ``DataRef`` of a ``DiscardSink``: only the size is known."""

    size: int


class DiscardSink:
    """A ``DataSink`` that keeps nothing: the pre-pass needs metadata only. Unread contents are
    skipped by ``TarReader`` when it moves to the next member."""

    def add(self, data: FileData, size: int) -> SizeRef:
        return SizeRef(size)


class EmptyData:
    """``FileData`` with no bytes: the pre-pass stands in for lower files it need not read."""

    def read(self, n: int = -1) -> bytes:
        return b""

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        return iter(())


def metadata_opener(layer: int, path: bytes, node: Inode) -> FileData:
    """The pre-pass's FileOpener: a cross-layer hard link copies metadata, not contents."""
    return EmptyData()


class NormaliseFn(Protocol):
    """Reads one layer into a normalised tree (the pipeline's second seam, next to convert)."""

    def __call__(self, src: BinaryIO, *, sink: DataSink, media_type: str | None, layer: str,
                 bottom: bool, lower: LowerView | None, build_time: int, max_expanded: int | None = None,
                 max_entries: int | None = None) -> Inode: ...


def normalise_layer(src: BinaryIO, *, sink: DataSink, media_type: str | None, layer: str, bottom: bool,
                    lower: LowerView | None, build_time: int, max_expanded: int | None = None,
                    max_entries: int | None = None) -> Inode:
    """Decompress, parse and normalise a layer stream into its tree; contents go to ``sink``.

    ``max_expanded`` and ``max_entries`` are the build's limits (``LayerOptions``; None:
    unlimited): the pre-pass reads a layer before its build does, so it must refuse a hostile
    layer just as early, before the tree of a million-entry tar fills memory.
    """
    options = LayerOptions(fmt=TargetFormat(), bottom=bottom, build_time=build_time, max_expanded=max_expanded,
                           max_entries=max_entries)
    return read_layer(src, sink=sink, options=options, lower=lower, media_type=media_type, layer=layer).root


def lookup(root: Inode, path: bytes) -> Inode | None:
    """The node at ``path`` inside one tree, or None."""
    return model_lookup(root, (c for c in path.split(b"/") if c))

