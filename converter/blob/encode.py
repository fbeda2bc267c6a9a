"""Turn a built EROFS image into the layer blob: verity tree appended, zstd frames, chunk index, digests.

One streaming pass over the image (EROFS OCI layer spec (draft) §3.1 to §3.5)::

    image data = [EROFS image][dm-verity tree?]            hashed: the DiffID (§5.2)
    raw blob   = image data                                 (no chunk index on raw blobs: docs/blob-encoding.md)
    +zstd blob = [frame]…[frame][skippable frame: index?]   hashed: the descriptor digest

The tree's ``hash_offset`` is the image size, which must be a multiple of 4096 (EROFS images
built with 4 KiB blocks are). See docs/blob-encoding.md for the choices made.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from converter.blob import verity
from converter.blob.chunkindex import index_payload, skippable_frame
from converter.blob.encoding import BlobEncoding
from converter.blob.zstd import ChunkedFrameWriter, SingleFrameWriter
from converter.errors import ErofsFormatError

ANN_UNCOMPRESSED_DIGEST = "org.erofs.uncompressed-digest"
ANN_CHUNK_INDEX_RANGE = "org.erofs.chunk-index.range"
ANN_CHUNK_INDEX_DIGEST = "org.erofs.chunk-index.digest"
ANN_VERITY_HASH_OFFSET = "org.erofs.dmverity.hash_offset"
ANN_VERITY_ROOT_DIGEST = "org.erofs.dmverity.root_digest"
ANN_VERITY_BLOCK_SIZE = "org.erofs.dmverity.block_size"
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class EncodedBlob:
    """The blob's digest and size, its DiffID (the image data's digest; the blob's own when raw)
    and the layer-descriptor annotations it needs (verity, chunk index)."""

    digest: str
    size: int
    diff_id: str
    annotations: Mapping[str, str] = field(default_factory=dict)


class _HashingSink:
    """A write-only file that hashes and counts what passes through."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self._hash.update(data)
        self._out.write(data)
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        self._out.flush()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _check_verity_size(size: int) -> None:
    if size % verity.BLOCK_SIZE:
        raise ErofsFormatError(f"the image is {size} bytes, not a multiple of {verity.BLOCK_SIZE}: "
                               "no dm-verity tree can follow it")


def _verity_annotations(size: int, root: bytes) -> dict[str, str]:
    """§2.3: where the tree starts in the image data, its root digest, its block size."""
    return {ANN_VERITY_HASH_OFFSET: str(size), ANN_VERITY_ROOT_DIGEST: "sha256:" + root.hex(),
            ANN_VERITY_BLOCK_SIZE: str(verity.BLOCK_SIZE)}


def append_verity(image: BinaryIO, *, workdir: Path | None = None) -> EncodedBlob:
    """Raw blob with dm-verity, in place: hash the image in ``image`` (opened ``r+b``) and append
    its tree, without copying the image (the blob is the image data itself, §3.1)."""
    size = os.fstat(image.fileno()).st_size
    _check_verity_size(size)
    tree = verity.BackgroundVerity(workdir=workdir)
    blob_hash = hashlib.sha256()
    try:
        image.seek(0)
        got = 0
        while piece := image.read(_READ):
            tree.update(piece)
            blob_hash.update(piece)
            got += len(piece)
        if got != size:
            raise ErofsFormatError(f"the image changed while it was read ({got} of {size} bytes)")
        volume = uuid.uuid5(uuid.NAMESPACE_URL, "erofs:verity/sha256:" + blob_hash.hexdigest())
        root, pieces = tree.tree(volume=volume)
        image.seek(size)
        for piece in pieces:
            blob_hash.update(piece)
            image.write(piece)
            got += len(piece)
        image.flush()
    finally:
        tree.close()
    digest = "sha256:" + blob_hash.hexdigest()
    return EncodedBlob(digest=digest, size=got, diff_id=digest, annotations=_verity_annotations(size, root))


def encode_blob(image: BinaryIO, out: IO[bytes], *, encoding: BlobEncoding, workdir: Path | None = None) -> EncodedBlob:
    """Read the EROFS image ``image`` (from its start) and write the layer blob to ``out``
    (for a raw blob with dm-verity, ``append_verity`` avoids the copy)."""
    size = os.fstat(image.fileno()).st_size
    if encoding.verity:
        _check_verity_size(size)
    data_size = size + (verity.tree_size(size) if encoding.verity else 0)
    blob = _HashingSink(out)
    writer: Any = blob
    chunked: ChunkedFrameWriter | None = None
    if encoding.zstd:
        if encoding.resolved_chunk_size:
            writer = chunked = ChunkedFrameWriter(blob, level=encoding.zstd_level,
                                                  chunk_size=encoding.resolved_chunk_size)
        else:
            writer = SingleFrameWriter(blob, level=encoding.zstd_level, size=data_size)
    tree = verity.BackgroundVerity(workdir=workdir) if encoding.verity else None
    image_hash = hashlib.sha256()
    annotations: dict[str, str] = {}
    # Whole chunks per read: the frame writer then takes each piece as it is, without copying.
    step = encoding.resolved_chunk_size or _READ
    try:
        image.seek(0)
        got = 0
        while piece := image.read(step):
            if tree is not None:
                tree.update(piece)
            image_hash.update(piece)
            writer.write(piece)
            got += len(piece)
        if got != size:
            raise ErofsFormatError(f"the image changed while it was read ({got} of {size} bytes)")
        data_hash = image_hash.copy()
        if tree is not None:
            volume = uuid.uuid5(uuid.NAMESPACE_URL, "erofs:verity/sha256:" + image_hash.hexdigest())
            root, pieces = tree.tree(volume=volume)
            for piece_bytes in pieces:
                data_hash.update(piece_bytes)
                writer.write(piece_bytes)
            annotations.update(_verity_annotations(size, root))
        if encoding.zstd:
            chunks = writer.close()
            if chunked is not None:
                payload = index_payload(chunks, uncompressed_size=data_size)
                start = blob.tell()
                blob.write(skippable_frame(payload))
                annotations[ANN_CHUNK_INDEX_RANGE] = f"{start}:{blob.tell()}"
                annotations[ANN_CHUNK_INDEX_DIGEST] = "sha256:" + hashlib.sha256(payload).hexdigest()
    except BaseException:
        if chunked is not None:
            chunked.abort()
        raise
    finally:
        if tree is not None:
            tree.close()
    out.flush()
    diff_id = "sha256:" + data_hash.hexdigest() if encoding.zstd else blob.digest()
    return EncodedBlob(digest=blob.digest(), size=blob.tell(), diff_id=diff_id, annotations=annotations)

