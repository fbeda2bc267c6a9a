"""How a builder reads a regular file's contents from the tar stream: ``FileData``, and
``SparseFileData`` for a file with holes.

Protocols only, in a module of their own: ``model`` (the entries and inodes) is compiled with
mypyc (converter/native.py), which cannot compile a protocol that extends another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable


class FileData(Protocol):
    """A regular file's contents, readable once, front to back, before the next entry."""

    def read(self, n: int = -1) -> bytes: ...

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]: ...


@runtime_checkable
class SparseFileData(FileData, Protocol):
    """A regular file with holes (a GNU sparse tar member): besides reading it expanded, a sink
    can take just its stored segments and keep the holes as holes."""

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(offset, length) of each stored segment: sorted, disjoint, inside the file."""
        ...

    @property
    def stored_size(self) -> int:
        """The bytes the segments hold (what a hole-keeping sink stores)."""
        ...

    def extents(self, size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        """The stored bytes as (file offset, piece) pairs in offset order, pieces of at most
        ``size`` bytes; the holes between them are not produced at all."""
        ...


def sparse_data(data: object) -> SparseFileData | None:
    """``data`` if it is a file with holes, else None.

    The attribute test goes first: on Python 3.11 ``isinstance`` against a runtime protocol
    walks the protocol's members on every call (tens of µs, once per regular file)."""
    if hasattr(data, "segments") and isinstance(data, SparseFileData):
        return data
    return None
