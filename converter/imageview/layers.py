"""Open every layer of an EROFS image reference as an ``ErofsImage``, fetching byte ranges on demand.

Per layer (EROFS OCI layer spec (draft) §2, §3): a raw EROFS blob is read by ranges directly;
a ``+zstd`` blob with a readable chunk index through its verified frames; a ``+zstd`` blob
without one is decompressed once into a temporary file (no random access is possible) and
checked against ``org.erofs.uncompressed-digest``. A dm-verity tree is cut off at
``hash_offset``. ``Fetched`` counts the blob bytes each layer cost.
"""

from __future__ import annotations

import contextlib
import platform as host_platform
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from converter.blob.encode import ANN_CHUNK_INDEX_DIGEST, ANN_CHUNK_INDEX_RANGE, ANN_UNCOMPRESSED_DIGEST
from converter.blob.reader import (
    ChunkedImageData,
    RangeFetch,
    RangeImageData,
    UnreadableIndex,
    image_end,
    parse_index,
    parse_range,
    spool_zstd,
)
from converter.erofs.reader import ErofsImage
from converter.errors import ErofsFormatError, ImageError, UnsupportedMediaType
from converter.oci.mediatypes import Compression
from converter.oci.model import Descriptor, Index, Manifest, Platform, parse_image_manifest, parse_manifest
from converter.transports.base import ImageSource
from converter.transports.registry import RegistrySource

#: Bound on a +zstd layer decompressed without an index (as ``convert``'s default --max-expanded).
MAX_SPOOL = 64 << 30
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass
class Fetched:
    """Blob bytes fetched per layer digest (thread-safe)."""

    by_layer: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, digest: str, n: int) -> None:
        with self._lock:
            self.by_layer[digest] = self.by_layer.get(digest, 0) + n
            self.requests += 1

    @property
    def total(self) -> int:
        return sum(self.by_layer.values())


def range_fetch(source: ImageSource, desc: Descriptor, fetched: Fetched) -> RangeFetch:
    """Byte ranges of ``desc``'s blob: HTTP ``Range`` from a registry, else read and skip."""

    def fetch(start: int, end: int) -> bytes:
        if not 0 <= start < end <= desc.size:
            raise ErofsFormatError(f"layer {desc.digest}: range {start}:{end} is outside the {desc.size}-byte blob")
        if isinstance(source, RegistrySource):
            data = source.client.get_blob_range(source.ref.registry, source.ref.repository, desc.digest, start, end)
        else:
            with source.open_blob(desc.digest, size=desc.size) as stream:
                data = _slice(stream, start, end)
        fetched.add(str(desc.digest), len(data))
        return data

    return fetch


def _slice(stream: BinaryIO, start: int, end: int) -> bytes:
    skip = start
    while skip:
        got = stream.read(min(skip, 1 << 20))
        if not got:
            break
        skip -= len(got)
    data = stream.read(end - start)
    if len(data) != end - start:
        raise ErofsFormatError(f"reading bytes {start}:{end}: the blob is shorter")
    return data


def pick_manifest(source: ImageSource, *, image: str, platform: Platform | None = None) -> Manifest:
    """The image manifest of ``source`` (for an index: the EROFS entry for ``platform``, by
    default this machine's architecture, else the first EROFS entry)."""
    data, media_type, digest = source.get_manifest(None)
    doc = parse_manifest(data, media_type, digest=digest, what=f"manifest {image}")
    if isinstance(doc, Manifest):
        return doc
    entry = _pick_entry(doc, platform, image)
    child, child_type, child_digest = source.get_manifest(entry.digest)
    return parse_image_manifest(child, str(entry.media_type) or child_type, digest=child_digest,
                                what=f"manifest {image}@{entry.digest}")


def _pick_entry(index: Index, platform: Platform | None, image: str) -> Descriptor:
    candidates = [d for d in index.manifests if d.known_type is not None and d.known_type.is_manifest
                  and d.platform is not None and "erofs" in d.platform.os_features]
    if not candidates:
        raise ImageError(f"reading {image}: the index lists no EROFS manifest (os.features erofs)")
    if platform is not None:
        for desc in candidates:
            assert desc.platform is not None
            if desc.platform.matches(platform):
                return desc
        raise ImageError(f"reading {image}: no EROFS manifest for {platform}")
    arch = _ARCH.get(host_platform.machine(), host_platform.machine())
    for desc in candidates:
        assert desc.platform is not None
        if desc.platform.architecture == arch:
            return desc
    return candidates[0]


@contextlib.contextmanager
def open_layers(source: ImageSource, manifest: Manifest, *, image: str, fetched: Fetched,
                workdir: Path | None = None) -> Iterator[list[ErofsImage]]:
    """Every layer of ``manifest`` as an ``ErofsImage`` (bottom first), closed on exit."""
    with contextlib.ExitStack() as stack:
        images = []
        for n, desc in enumerate(manifest.layers):
            where = f"reading {image} layer {n + 1}/{len(manifest.layers)} {desc.digest}"
            data = stack.enter_context(_layer_data(source, desc, fetched=fetched, where=where, workdir=workdir))
            try:
                images.append(ErofsImage(data))
            except ErofsFormatError as exc:
                raise ErofsFormatError(f"{where}: {exc}") from exc
        yield images


@contextlib.contextmanager
def _layer_data(source: ImageSource, desc: Descriptor, *, fetched: Fetched, where: str,
                workdir: Path | None) -> Iterator[BinaryIO]:
    mt = desc.known_type
    if mt is None or not mt.is_erofs_layer:
        raise UnsupportedMediaType(f"{where}: {desc.media_type} is not an EROFS layer media type")
    fetch = range_fetch(source, desc, fetched)
    annotations = desc.annotations
    if mt.compression is Compression.NONE:
        end = image_end(annotations, desc.size, where=where)
        yield RangeImageData(fetch, end)  # type: ignore[misc]
        return
    if ANN_CHUNK_INDEX_RANGE in annotations:
        start, stop = parse_range(annotations[ANN_CHUNK_INDEX_RANGE], blob_size=desc.size, where=where)
        try:
            index = parse_index(fetch(start, stop), start=start, digest=annotations.get(ANN_CHUNK_INDEX_DIGEST),
                                zstd=True, where=where)
        except UnreadableIndex:
            pass  # §3.4.6: a kind of index we may not use: read the layer sequentially
        else:
            end = image_end(annotations, index.uncompressed_size, where=where)
            yield ChunkedImageData(fetch, index, where=where, end=end)  # type: ignore[misc]
            return
    with source.open_blob(desc.digest, size=desc.size) as stream:
        spooled = spool_zstd(_Counting(stream, fetched, str(desc.digest)),  # type: ignore[arg-type]
                             digest=annotations.get(ANN_UNCOMPRESSED_DIGEST), where=where, workdir=workdir,
                             limit=MAX_SPOOL)
    with spooled:
        spooled.seek(0, 2)
        size = spooled.tell()
        end = image_end(annotations, size, where=where)
        spooled.truncate(end)
        spooled.seek(0)
        yield spooled  # type: ignore[misc]


class _Counting:
    def __init__(self, raw: BinaryIO, fetched: Fetched, digest: str) -> None:
        self._raw = raw
        self._fetched = fetched
        self._digest = digest

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._fetched.add(self._digest, len(data))
        return data
