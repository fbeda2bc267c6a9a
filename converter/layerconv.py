"""Converts one tar layer stream into one EROFS blob: decompress → parse → normalise → build → hash.

This is the layer engine's single entry point; the CLI's ``convert layer`` and the image
pipeline both call it. Two builders sit behind it:

* ``python`` (default for raw ``erofs``): our data-first writer streams file contents straight
  into the output image while the tar is read; only metadata is kept in memory.
* ``mkfs`` (required for ``erofs+ALGO``): contents are spooled to a private temp file, then a
  normalised tar (explicit directories, full-nanosecond times, empty opaque markers) is piped
  into ``mkfs.erofs --tar=f --aufs`` so the compressed path inherits every layer-semantics fix.

The EROFS UUID is derived from the source blob digest, and the build time comes from
``SOURCE_DATE_EPOCH`` (or 0), so the same input gives the same bytes on any machine.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from converter.erofs.mkfs import build_with_mkfs
from converter.erofs.writer import ImageDataArea, write_image
from converter.errors import ConverterError, UsageError
from converter.formats import Format
from converter.layers.compression import HashingReader, open_layer_stream
from converter.layers.model import Inode, LowerView
from converter.layers.normalise import LayerNormaliser
from converter.layers.spool import SpoolSink
from converter.layers.tarstream import TarReader

BUILDERS = ("python", "mkfs")
UUID_NAMESPACE = uuid.NAMESPACE_URL
_CHUNK = 1 << 20


def default_build_time() -> int:
    """SOURCE_DATE_EPOCH if set (reproducible-builds convention), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError as exc:
        raise UsageError(f"reading SOURCE_DATE_EPOCH: not an integer: {value!r}") from exc


def layer_uuid(source_digest: str) -> uuid.UUID:
    """A stable per-layer volume UUID, as containerd derives it from the source digest."""
    return uuid.uuid5(UUID_NAMESPACE, "erofs:blobs/" + source_digest)


@dataclass(frozen=True, slots=True)
class LayerOptions:
    """How to build a layer: format (raw or erofs+ALGO), builder, bottom-layer stripping, epoch."""

    fmt: Format
    builder: str = "python"  # "python" (raw only) or "mkfs"
    bottom: bool = False
    build_time: int = 0

    def resolved_builder(self) -> str:
        """The builder actually used: compressed formats always go through mkfs.erofs."""
        if self.builder not in BUILDERS:
            raise UsageError(f"unknown builder {self.builder!r}; choose one of {', '.join(BUILDERS)}")
        if self.fmt.algorithm is not None:
            return "mkfs"
        return self.builder


@dataclass(frozen=True, slots=True)
class LayerResult:
    """The built EROFS blob: where it is, its sha256 digest ("sha256:..."), its size, the digest
    of the source bytes as read (the source blob digest) and the layer's normalised tree."""

    path: Path
    digest: str
    size: int
    source_digest: str
    source_size: int
    root: Inode


class _Progress:
    """Reports the running count of source bytes read to a callback (for progress bars)."""

    def __init__(self, raw: BinaryIO, callback: Callable[[int], None]) -> None:
        self._raw = raw
        self._callback = callback
        self._count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._count += len(data)
        self._callback(self._count)
        return data


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_CHUNK * 4)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return "sha256:" + h.hexdigest(), size


def convert_layer(
    src: BinaryIO,
    out_path: Path,
    *,
    options: LayerOptions,
    lower: LowerView | None = None,
    media_type: str | None = None,
    layer: str = "",
    workdir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> LayerResult:
    """Read a (possibly compressed) tar layer from ``src`` and write an EROFS image to ``out_path``.

    ``layer`` names the layer in errors (a digest or a file name). ``progress`` is called with
    the number of source bytes consumed so far. On failure ``out_path`` is removed.
    """
    builder = options.resolved_builder()
    hashed = HashingReader(_Progress(src, progress) if progress else src)
    try:
        if builder == "python":
            root = _build_python(hashed, out_path, options=options, lower=lower,
                                 media_type=media_type, layer=layer)
        else:
            root = _build_mkfs(hashed, out_path, options=options, lower=lower,
                               media_type=media_type, layer=layer, workdir=workdir)
        digest, size = _sha256_file(out_path)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return LayerResult(path=out_path, digest=digest, size=size, source_digest=hashed.digest(),
                       source_size=hashed.bytes_read, root=root)


def _parse_into(hashed: HashingReader, normaliser: LayerNormaliser, *, media_type: str | None,
                layer: str) -> Inode:
    stream = open_layer_stream(hashed, media_type=media_type, layer=layer)
    for entry, data in TarReader(stream, layer=layer):
        normaliser.add(entry, data)
    # Read to the very end: the gzip trailer is checked and the source digest covers every byte.
    while stream.read(_CHUNK):
        pass
    while hashed.read(_CHUNK):
        pass
    return normaliser.finish()


def _build_python(hashed: HashingReader, out_path: Path, *, options: LayerOptions,
                  lower: LowerView | None, media_type: str | None, layer: str) -> Inode:
    with open(out_path, "w+b") as out, ImageDataArea(out) as area:
        normaliser = LayerNormaliser(sink=area, layer=layer, bottom=options.bottom, lower=lower,
                                     build_time=options.build_time)
        root = _parse_into(hashed, normaliser, media_type=media_type, layer=layer)
        try:
            write_image(root, area, build_time=options.build_time,
                        uuid=layer_uuid(hashed.digest()).bytes)
        except ConverterError:
            raise
        except (ValueError, OverflowError) as exc:
            raise ConverterError(f"writing EROFS image for layer {layer}: {exc}") from exc
    return root


def _build_mkfs(hashed: HashingReader, out_path: Path, *, options: LayerOptions,
                lower: LowerView | None, media_type: str | None, layer: str,
                workdir: Path | None) -> Inode:
    spool_dir = workdir if workdir is not None else Path(tempfile.gettempdir())
    with SpoolSink(spool_dir) as spool:
        normaliser = LayerNormaliser(sink=spool, layer=layer, bottom=options.bottom, lower=lower,
                                     build_time=options.build_time)
        root = _parse_into(hashed, normaliser, media_type=media_type, layer=layer)
        build_with_mkfs(root, spool, out_path, fmt=options.fmt, build_time=options.build_time,
                        uuid=layer_uuid(hashed.digest()), bottom=options.bottom)
    return root
