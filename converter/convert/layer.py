"""Converts one tar layer stream into one EROFS blob: decompress → parse → normalise → build → hash.

This is the layer engine's single entry point; the CLI's ``convert layer`` and the image
pipeline both call it. Two builders sit behind it:

* ``python`` (the default for raw ``erofs``; lz4, lz4hc, zstd and deflate when asked for):
  our data-first writer streams file contents straight into the output image while the tar is
  read (compressed ones in worker threads); only metadata is kept in memory.
* ``mkfs`` (the default for ``erofs+ALGO``, the only one for lzma): contents
  are spooled to a private temp file, then a normalised tar (explicit directories,
  full-nanosecond times, empty opaque markers) is piped into ``mkfs.erofs --tar=f --aufs``
  so the compressed path inherits every layer-semantics fix.

The EROFS UUID is derived from the layer's DiffID (the digest of the uncompressed tar), not
from the blob digest, so the same tar arriving as tar+gzip or as tar+zstd gives the same
image; the build time comes from ``SOURCE_DATE_EPOCH`` (or 0), so the same input gives the
same bytes on any machine.

Layers come from untrusted registries, so limits bound the work one layer can cause
(``LayerOptions.max_expanded``, ``max_logical`` and ``max_entries``; ``None`` disables a
limit): the decompressed tar and, separately, the file data the image will store may not
exceed ``max_expanded`` bytes; the files' sizes as the layer declares them may not exceed
``max_logical`` (a sparse member can claim a terabyte of holes in a few bytes of tar: the
python builder keeps holes as holes, so they cost nothing to store, but mkfs.erofs is fed
them as zeros, so for it they count against ``max_expanded`` too); and the tar may hold at
most ``max_entries`` members (each costs memory until the image is written).
Every failure is a ``ConverterError`` naming the layer: disk-full and other OS
errors included, so a caller never sees a bare ``OSError``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from converter.blob.encode import EncodedBlob, append_verity, encode_blob
from converter.blob.encoding import BlobEncoding
from converter.convert.entries import parse_entries
from converter.convert.imagehash import ImageHasher
from converter.erofs.mkfs import build_with_mkfs
from converter.erofs.target import BLOCK, TargetFormat
from converter.erofs.writer import ImageDataArea, write_image
from converter.erofs.zcodec import Codec
from converter.erofs.zwriter import CompressedDataArea
from converter.errors import ConverterError, ErofsFormatError, UsageError
from converter.files import new_file_mode
from converter.layers.compression import HashingReader, open_layer_stream
from converter.layers.model import DataSink, Inode, LowerView
from converter.layers.normalise import LayerNormaliser
from converter.layers.readahead import ReadAhead
from converter.layers.spool import SpoolSink


class Builder(StrEnum):
    """Who writes the image (``--builder``): AUTO resolves to PYTHON or MKFS per format."""

    AUTO = "auto"
    PYTHON = "python"  # our writer (erofs/writer.py, erofs/zwriter.py)
    MKFS = "mkfs"  # mkfs.erofs fed a normalised tar (erofs/mkfs.py)


BUILDERS = tuple(b.value for b in Builder)
#: Compression algorithms the python builder writes itself (``--builder python``).
PYTHON_ALGORITHMS = {codec.value: codec for codec in Codec}
#: Default bound on a layer's decompressed tar and on the sum of its file sizes (64 GiB):
#: above the largest real layers we know of (CUDA and model images), below a disk's worth.
DEFAULT_MAX_EXPANDED = 64 << 30
#: Default bound on the sum of a layer's file sizes including holes (16 TiB): a sanity limit,
#: since holes cost the python builder nothing, yet a layer claiming more is no real layer.
DEFAULT_MAX_LOGICAL = 16 << 40
#: Default bound on tar members per layer: ten times a full Debian or Node image layer.
#: Each member costs ~700 bytes of memory until the image is written (200,000 empty files
#: peaked at 154 MB RSS), so the default caps a layer's tree at about 0.7 GB.
DEFAULT_MAX_ENTRIES = 1_000_000
UUID_NAMESPACE = uuid.NAMESPACE_URL
_CHUNK = 1 << 20
#: Write buffer of the output image (the data area writes each small file separately).
OUT_BUFFER = 1 << 20


def default_build_time(env: Mapping[str, str] | None = None) -> int:
    """SOURCE_DATE_EPOCH of ``env`` (default: the process environment) if set, else 0 (the
    reproducible-builds convention)."""
    value = (os.environ if env is None else env).get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError as exc:
        raise UsageError(f"reading SOURCE_DATE_EPOCH: not an integer: {value!r}") from exc


def layer_uuid(diff_id: str) -> uuid.UUID:
    """A stable per-layer volume UUID, derived from the source layer's DiffID (the sha256 of its
    uncompressed tar) so that a layer's compression does not change the image."""
    return uuid.uuid5(UUID_NAMESPACE, "erofs:diffid/" + diff_id)


@dataclass(frozen=True, slots=True)
class LayerOptions:
    """How to build a layer: format (raw or erofs+ALGO), builder, bottom-layer stripping, epoch,
    the limits that stop a hostile layer (``None``: unlimited; see the module docstring) and
    how the image goes on the wire (``encoding``: zstd wrapping, dm-verity, chunk index)."""

    fmt: TargetFormat
    builder: Builder = Builder.AUTO  # a string is accepted and converted (see __post_init__)
    encoding: BlobEncoding = field(default_factory=BlobEncoding)
    bottom: bool = False
    build_time: int = 0
    max_expanded: int | None = DEFAULT_MAX_EXPANDED
    max_entries: int | None = DEFAULT_MAX_ENTRIES
    max_logical: int | None = DEFAULT_MAX_LOGICAL
    #: python builder: all-zero 4 KiB blocks of regular files become holes too (docs/holes.md)
    holes: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.builder, Builder):  # a job file's or caller's string
            try:
                object.__setattr__(self, "builder", Builder(self.builder))
            except ValueError:
                raise UsageError(f"unknown builder {self.builder!r}; choose one of {', '.join(BUILDERS)}") from None

    def resolved_builder(self) -> Builder:
        """The builder actually used (PYTHON or MKFS).

        AUTO: our writer for every format it writes (raw and the PYTHON_ALGORITHMS),
        mkfs.erofs for the rest. PYTHON: our writer, refusing what it cannot write.
        """
        algorithm = self.fmt.algorithm
        if self.builder is Builder.AUTO:
            return Builder.PYTHON if algorithm is None or algorithm in PYTHON_ALGORITHMS else Builder.MKFS
        if self.builder is Builder.PYTHON and algorithm is not None and algorithm not in PYTHON_ALGORITHMS:
            raise UsageError(f"the python builder cannot write {self.fmt} yet (it compresses "
                             f"{', '.join(PYTHON_ALGORITHMS)}); use --builder mkfs")
        if self.builder is Builder.MKFS and mkfs_writes_wrong_contents(self.fmt):
            raise UsageError(f"--builder mkfs with {self.fmt}: mkfs.erofs (1.9.4) writes wrong contents for some "
                             "files with lz4 big pclusters and ztailpacking (docs/deviations.md); use --builder "
                             "python (the default), or drop pcluster= or ztailpacking")
        return self.builder


def mkfs_writes_wrong_contents(fmt: TargetFormat) -> bool:
    """``mkfs.erofs -zlz4[hc] -C N -Eztailpacking`` (N > one block; erofs-utils 1.9.4) stores some
    files that it then keeps uncompressed with wrong bytes after their first block, exits 0, and
    fsck.erofs extracts the same wrong bytes: about 1 in 200 small files of mixed content
    (docs/deviations.md). Our writer has no such problem, so the mkfs builder refuses these formats."""
    return fmt.algorithm in ("lz4", "lz4hc") and fmt.ztailpacking and fmt.pcluster_bytes > BLOCK


@dataclass(frozen=True, slots=True)
class LayerResult:
    """The built EROFS blob: where it is, its sha256 digest ("sha256:..."), its size, the digest
    of the source bytes as read (the source blob digest), the layer's normalised tree (None when
    a cached conversion was reused without reading the source), the
    source's DiffID (``source_diff_id``, the digest of its uncompressed tar), and for an encoded
    blob its ``diff_id`` (None: the blob digest) and the descriptor ``annotations``."""

    path: Path
    digest: str
    size: int
    source_digest: str
    source_size: int
    root: Inode | None
    source_diff_id: str
    diff_id: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def layer_diff_id(self) -> str:
        return self.diff_id or self.digest


class ProgressReader:
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


@dataclass(frozen=True, slots=True)
class LayerTree:
    """A parsed, normalised layer: its tree, the digest and size of the source bytes read and
    the DiffID (digest of the uncompressed tar)."""

    root: Inode
    source_digest: str
    source_size: int
    diff_id: str


def read_layer(src: BinaryIO, *, sink: DataSink, options: LayerOptions, lower: LowerView | None,
               media_type: str | None, layer: str, progress: Callable[[int], None] | None = None,
               on_tree: Callable[[Inode], None] | None = None, source_digest: str | None = None) -> LayerTree:
    """Decompress, parse and normalise a layer stream under ``options``' limits; file contents
    go to ``sink`` (a builder's data area, a spool, or a discarding sink for metadata-only
    reads). The one place a layer is read, so every reader enforces the same limits.
    ``source_digest``: the stream's digest, already verified by the caller (a download checked
    on arrival), which is then not hashed again; else the digest of the bytes read is taken."""
    hashed = HashingReader(ProgressReader(src, progress) if progress else src, known=source_digest)
    normaliser = LayerNormaliser(sink=sink, layer=layer, bottom=options.bottom, lower=lower,
                                 build_time=options.build_time)
    root, diff_id = _parse_into(hashed, normaliser, options=options, media_type=media_type, layer=layer,
                                on_tree=on_tree)
    return LayerTree(root=root, source_digest=hashed.digest(), source_size=hashed.bytes_read, diff_id=diff_id)


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
    on_tree: Callable[[Inode], None] | None = None,
    source_digest: str | None = None,
    on_data_final: Callable[[Path, bytes, int], object] | None = None,
) -> LayerResult:
    """Read a (possibly compressed) tar layer from ``src`` and write an EROFS image to ``out_path``.

    ``layer`` names the layer in errors (a digest or a file name). ``progress`` is called with
    the number of source bytes consumed so far. ``on_tree`` is called with the layer's finished
    tree as soon as the source is parsed, before the image is written: the metadata is final
    then, so an image pipeline can start the layer above while this one is still being built
    (mkfs.erofs compressing, or our writer laying out metadata). The image is built under a temporary name next
    to ``out_path`` and renamed into place only when complete, so ``out_path`` never holds a
    partial image: on failure (or interruption) it is untouched, and the temporary is removed.
    ``out_path`` must be a regular file or not exist (never, e.g., ``/dev/null``, which
    removing a failed output would delete). ``source_digest``: ``src``'s digest, already
    verified by the caller (see ``read_layer``): reported without hashing the bytes again.
    ``on_data_final(path, block0, data_end)``: called, in this thread, when our writer has
    planned the layout of a blob that is the image itself (no ``+zstd``, no dm-verity): the
    blob's first block will be ``block0`` and its bytes from 4096 up to ``data_end`` are final
    in the file at ``path``; after that the file only grows, by final bytes (``write_image``),
    until the call returns. The file is renamed when the image is complete, so a caller that
    wants to read it meanwhile (a streamed upload) opens it during the hook's call. Not called
    for the mkfs builder or an encoded blob.
    """
    builder = options.resolved_builder()
    if options.holes and builder is not Builder.PYTHON:
        raise UsageError("--holes needs the python builder (raw erofs); mkfs.erofs gets zeros")
    for name in ("max_expanded", "max_entries", "max_logical"):
        limit = getattr(options, name)
        if limit is not None and limit < 0:
            raise UsageError(f"{name} must not be negative (it is {limit})")
    partial = _reserve_partial(out_path, layer)
    try:
        try:
            with ImageHasher(partial) as hasher:
                if builder is Builder.PYTHON:
                    # The image's digest is taken while its metadata is written (imagehash.py).
                    planned: Callable[[bytes, int], object] | None = None
                    if options.encoding.is_identity:
                        planned = hasher.start if on_data_final is None else _both(hasher.start, on_data_final,
                                                                                  partial)
                    tree = _build_python(src, partial, options=options, lower=lower, media_type=media_type,
                                         layer=layer, progress=progress, on_tree=on_tree, source_digest=source_digest,
                                         on_planned=planned)
                else:
                    tree = _build_mkfs(src, partial, options=options, lower=lower, media_type=media_type,
                                       layer=layer, workdir=workdir, display_name=out_path.name,
                                       progress=progress, on_tree=on_tree, source_digest=source_digest)
                if options.encoding.is_identity:
                    digest, size = hasher.finish()
                    encoded = EncodedBlob(digest=digest, size=size, diff_id=digest)
            if not options.encoding.is_identity:
                partial, encoded = _encode(partial, out_path, options.encoding, layer=layer, workdir=workdir)
            os.chmod(partial, new_file_mode())
            os.replace(partial, out_path)
        except ErofsFormatError as exc:
            # The tree holds something EROFS cannot represent (the message names the path).
            raise ErofsFormatError(f"writing EROFS image for layer {layer}: {exc}") from exc
        except OSError as exc:
            # Disk full, I/O errors, a vanished workdir: one line naming layer and file.
            raise ConverterError(f"converting layer {layer} to {out_path}: {exc.strerror or exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return LayerResult(path=out_path, digest=encoded.digest, size=encoded.size, source_digest=tree.source_digest,
                       source_size=tree.source_size, root=tree.root, source_diff_id=tree.diff_id,
                       diff_id=None if encoded.diff_id == encoded.digest else encoded.diff_id,
                       annotations=dict(encoded.annotations))


def _both(start: Callable[[bytes, int], object], then: Callable[[Path, bytes, int], object],
          path: Path) -> Callable[[bytes, int], None]:
    def planned(block0: bytes, data_end: int) -> None:
        start(block0, data_end)
        then(path, block0, data_end)
    return planned


def _encode(image: Path, out_path: Path, encoding: BlobEncoding, *, layer: str,
            workdir: Path | None) -> tuple[Path, EncodedBlob]:
    """Encode the built image into a new partial file next to ``out_path``; the image is removed.
    A raw blob with dm-verity is the image with its tree appended, in place."""
    if not encoding.zstd:
        with open(image, "r+b") as f:
            return image, append_verity(f, workdir=workdir)
    blob = _reserve_partial(out_path, layer)
    try:
        with open(image, "rb") as src, open(blob, "wb") as out:
            encoded = encode_blob(src, out, encoding=encoding, workdir=workdir)
    except BaseException:
        blob.unlink(missing_ok=True)
        raise
    finally:
        image.unlink(missing_ok=True)
    return blob, encoded


def _reserve_partial(out_path: Path, layer: str) -> Path:
    """Create (exclusively, mode 0600: it holds the layer's contents while it is being built) the
    temporary file the image is built in; it gets the usual mode when renamed into place."""
    try:
        if out_path.exists() and not out_path.is_file():
            raise UsageError(f"writing layer {layer} to {out_path}: the output must be a regular file")
        for _ in range(100):
            partial = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.partial")
            try:
                os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except FileExistsError:
                continue
            return partial
    except OSError as exc:
        raise ConverterError(f"converting layer {layer} to {out_path}: {exc.strerror or exc}") from exc
    raise ConverterError(f"converting layer {layer} to {out_path}: cannot create a temporary file")


def _parse_into(hashed: HashingReader, normaliser: LayerNormaliser, *, options: LayerOptions,
                media_type: str | None, layer: str, on_tree: Callable[[Inode], None] | None) -> tuple[Inode, str]:
    """The layer's normalised tree and its DiffID."""
    limit = options.max_expanded
    stream = open_layer_stream(hashed, media_type=media_type, layer=layer, max_expanded=limit)
    tar_hash = hashlib.sha256()
    # Only raw images keep holes (chunk-based files); compressed files are fed the holes as zeros.
    keeps_holes = options.resolved_builder() is Builder.PYTHON and options.fmt.algorithm is None
    with ReadAhead(stream, name=f"read-ahead {layer}"[:60], hasher=tar_hash) as ahead:
        parse_entries(ahead, normaliser, layer=layer, keeps_holes=keeps_holes, max_expanded=limit,
                      max_logical=options.max_logical, max_entries=options.max_entries)
        # Read to the very end: the gzip trailer is checked and the source digest covers every byte.
        while ahead.read(_CHUNK):
            pass
        ahead.hashed()
    while hashed.read(_CHUNK):
        pass
    root = normaliser.finish()
    if on_tree is not None:
        on_tree(root)
    return root, "sha256:" + tar_hash.hexdigest()


def _build_python(src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None,
                  media_type: str | None, layer: str, progress: Callable[[int], None] | None,
                  on_tree: Callable[[Inode], None] | None,
                  on_planned: Callable[[bytes, int], object] | None = None,
                  source_digest: str | None = None) -> LayerTree:
    algorithm = options.fmt.algorithm
    with open(out_path, "w+b", buffering=OUT_BUFFER) as out:
        area = ImageDataArea(out, holes=options.holes) if algorithm is None else _compressed_area(out, options)
        with area:
            tree = read_layer(src, sink=area, options=options, lower=lower, media_type=media_type, layer=layer,
                              progress=progress, on_tree=on_tree, source_digest=source_digest)
            z = area if isinstance(area, CompressedDataArea) else None
            try:
                write_image(tree.root, area, build_time=options.build_time,
                            uuid=layer_uuid(tree.diff_id).bytes,
                            feature_incompat=z.feature_incompat if z else 0, u1=z.u1 if z else 0,
                            compr_cfgs=z.compr_cfgs if z else b"", on_planned=on_planned)
            except ConverterError:
                raise
            except (ValueError, OverflowError) as exc:
                raise ConverterError(f"writing EROFS image for layer {layer}: {exc}") from exc
    return tree


def _compressed_area(out: BinaryIO, options: LayerOptions, *, compact: bool = True) -> CompressedDataArea:
    """Our compressed writer for ``options`` (a function of its own: the tests swap in one with
    ``compact=False``, full indexes, since a compiled class cannot be subclassed in Python, native.py)."""
    algorithm = options.fmt.algorithm
    assert algorithm is not None
    return CompressedDataArea(out, codec=PYTHON_ALGORITHMS[algorithm], level=options.fmt.level,
                              pcluster=options.fmt.pcluster_bytes, ztailpacking=options.fmt.ztailpacking,
                              compact=compact)


def _build_mkfs(src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None,
                media_type: str | None, layer: str, workdir: Path | None, display_name: str,
                progress: Callable[[int], None] | None, on_tree: Callable[[Inode], None] | None,
                source_digest: str | None = None) -> LayerTree:
    spool_dir = workdir if workdir is not None else Path(tempfile.gettempdir())
    with SpoolSink(spool_dir) as spool:
        tree = read_layer(src, sink=spool, options=options, lower=lower, media_type=media_type, layer=layer,
                          progress=progress, on_tree=on_tree, source_digest=source_digest)
        build_with_mkfs(tree.root, spool, out_path, fmt=options.fmt, build_time=options.build_time,
                        uuid=layer_uuid(tree.diff_id), bottom=options.bottom, display_name=display_name)
    return tree
