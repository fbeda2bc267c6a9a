"""The loop that feeds a layer's tar entries to the normaliser, within the layer's limits.

A module of its own because it runs once per tar member: it is among the compiled modules
(converter/native.py), next to the reader and the normaliser it calls.
"""

from __future__ import annotations

from converter.erofs.writer import choose_chunkbits
from converter.errors import LayerError
from converter.layers.filedata import sparse_data
from converter.layers.model import EntryKind
from converter.layers.normalise import LayerNormaliser
from converter.layers.tarstream import ByteSource, TarReader


def parse_entries(stream: ByteSource, normaliser: LayerNormaliser, *, layer: str, keeps_holes: bool,
                  max_expanded: int | None, max_logical: int | None, max_entries: int | None) -> None:
    """Every tar entry of ``stream`` into ``normaliser``. ``max_expanded`` bounds the bytes the
    image will store (a file's chunks with data when ``keeps_holes``, else its size),
    ``max_logical`` the files' sizes, holes included; ``None`` is no limit."""
    stored = logical = 0
    for entry, data in TarReader(stream, layer=layer, max_entries=max_entries):
        if entry.kind is EntryKind.REG:
            # Checked before any byte is stored: sparse holes cost no tar bytes but may cost disk.
            size = entry.size
            logical += size
            stored += stored_bytes(size, data) if keeps_holes else size
            if max_expanded is not None and stored > max_expanded:
                raise LayerError(f"the files add up to more than the limit of {max_expanded} bytes",
                                 layer=layer, entry=entry.display_name())
            if max_logical is not None and logical > max_logical:
                raise LayerError(f"the files' sizes, holes included, add up to more than the limit of "
                                 f"{max_logical} bytes", layer=layer, entry=entry.display_name())
        normaliser.add(entry, data)


def stored_bytes(size: int, data: object) -> int:
    """The bytes our writer stores for a ``size``-byte file: its chunks with data for a file
    with holes (whatever is smaller: chunks or the whole file), else the file."""
    sparse = sparse_data(data) if size else None
    if sparse is not None:
        return min(choose_chunkbits(size, sparse.segments)[1], size)
    return size
