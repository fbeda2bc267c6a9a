"""Turn a layer blob (gzip, zstd or plain tar, detected by magic bytes) into a stream of tar bytes.

The blob may be a non-seekable pipe or an HTTP body, so the first bytes are peeked and then
replayed, and everything streams. Decompression errors surface as :class:`LayerError` with a
one-line cause instead of library exceptions, and ``max_expanded`` bounds the output so that a
decompression bomb fails early. :class:`HashingReader` computes the blob digest on the way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

import zstandard
from isal import igzip, isal_zlib

from converter.errors import LayerError, UnsupportedMediaType
from converter.layers.tarstream import ByteSource
from converter.oci.mediatypes import Compression, MediaType, parse_media_type

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "ByteSource",
    "Compression",
    "HashingReader",
    "compression_for_media_type",
    "detect_compression",
    "open_layer_stream",
]

# isal's stubs declare its error as an instance (``error: Exception``); at runtime it is a class.
_IsalError = cast("type[Exception]", isal_zlib.error)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # 0xFD2FB528 little-endian (RFC 8878 §3.1.1)


class _Decoder(Protocol):
    """What we need from a decompressing reader (IGzipFile, zstd stream reader, _Replay)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def compression_for_media_type(media_type: str) -> Compression:
    """The compression a tar layer media type promises; UnsupportedMediaType for anything else."""
    parsed = parse_media_type(media_type)
    if not isinstance(parsed, MediaType) or not parsed.is_tar_layer:
        raise UnsupportedMediaType(f"reading layer: {media_type!r} is not a tar layer media type")
    return parsed.compression


def detect_compression(head: bytes) -> Compression:
    """Recognise gzip or zstd from the first bytes of a blob; anything else is taken as tar."""
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


class HashingReader(io.RawIOBase):
    """Pass-through reader that sha256-hashes every byte read through it and counts them.

    With ``known`` (an OCI digest the caller already verified these bytes against, such as a
    download checked on arrival) nothing is hashed again and ``digest`` answers ``known``.
    """

    def __init__(self, raw: ByteSource, *, known: str | None = None) -> None:
        super().__init__()
        self._raw = raw
        self._hash = hashlib.sha256()
        self._known = known
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if self._known is None:
            self._hash.update(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        n = len(data)
        view[:n] = data
        if self._known is None:
            self._hash.update(data)
        self.bytes_read += n
        return n

    def hexdigest(self) -> str:
        """Hex sha256 of the bytes read so far (``known``'s hex, if given)."""
        return self.digest().partition(":")[2]

    def digest(self) -> str:
        """OCI digest string (``sha256:<hex>``) of the bytes read so far (``known``, if given)."""
        return self._known if self._known is not None else "sha256:" + self._hash.hexdigest()


class _Replay(io.RawIOBase):
    """Serves the peeked head bytes again, then the rest of the source."""

    def __init__(self, head: bytes, raw: ByteSource) -> None:
        super().__init__()
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        head = self._head
        if not head:
            return self._raw.read(size)
        if size < 0:
            self._head = b""
            return head + self._raw.read()
        self._head = head[size:]
        return head[:size]

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class _ZstdFrameTracker:
    """Follows zstd frame and block headers in the compressed bytes (RFC 8878 §3.1).

    python-zstandard's stream reader returns a clean EOF when its input stops in the middle
    of a frame, so a truncated download would silently yield a short tar. Walking the block
    headers (3 bytes per block of up to 128 KiB) tells us whether the input ended exactly at
    a frame boundary, at negligible cost.
    """

    _MAGIC, _FRAME_HEADER, _BLOCK_HEADER, _CHECKSUM, _SKIPPABLE_SIZE = range(5)

    def __init__(self, raw: ByteSource) -> None:
        self._raw = raw
        self._state = self._MAGIC
        self._need = 4  # bytes of the next field to collect
        self._field = bytearray()
        self._skip = 0  # bytes to pass over before the next field
        self._has_checksum = False
        self.problem: str | None = None

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if data and self.problem is None:
            self._feed(data)
        return data

    def at_frame_boundary(self) -> bool:
        return self._state == self._MAGIC and not self._field and not self._skip

    def _feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self.problem is None:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._field), end - pos)
            self._field += data[pos : pos + step]
            pos += step
            if len(self._field) == self._need:
                field = bytes(self._field)
                self._field.clear()
                self._advance(field)

    def _advance(self, field: bytes) -> None:
        state = self._state
        if state == self._MAGIC:
            magic = int.from_bytes(field, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = self._FRAME_HEADER, 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame (§3.1.2)
                self._state, self._need = self._SKIPPABLE_SIZE, 4
            else:
                self.problem = "data after the last frame is not a zstd frame"
        elif state == self._FRAME_HEADER:
            descriptor = field[0]
            if descriptor & 0x08:
                self.problem = "reserved bit set in a frame header"
                return
            single_segment = descriptor >> 5 & 1
            self._has_checksum = bool(descriptor & 0x04)
            self._skip = (
                (0 if single_segment else 1)  # Window_Descriptor
                + (0, 1, 2, 4)[descriptor & 0x03]  # Dictionary_ID
                + (single_segment, 2, 4, 8)[descriptor >> 6]  # Frame_Content_Size
            )
            self._state, self._need = self._BLOCK_HEADER, 3
        elif state == self._BLOCK_HEADER:
            header = int.from_bytes(field, "little")
            block_type = header >> 1 & 3
            if block_type == 3:
                self.problem = "reserved block type"
                return
            self._skip = 1 if block_type == 1 else header >> 3  # an RLE block stores one byte
            if not header & 1:
                self._need = 3
            elif self._has_checksum:
                self._state, self._need = self._CHECKSUM, 4
            else:
                self._state, self._need = self._MAGIC, 4
        elif state == self._CHECKSUM:
            self._state, self._need = self._MAGIC, 4
        else:  # skippable frame size
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = self._MAGIC, 4


class _DecodedStream(io.BufferedIOBase):
    """Decompressed layer bytes with library errors turned into LayerError and a size limit.

    ``read`` hands the decoder's own bytes objects through: a second buffering layer (or
    readinto into caller buffers, which GzipFile implements as read-then-copy) cost ~80%
    more time than decompression alone in measurements on a real 376 MB tree.
    """

    def __init__(
        self,
        inner: _Decoder,
        *,
        compression: Compression,
        layer: str,
        max_expanded: int | None,
        tracker: _ZstdFrameTracker | None = None,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._compression = compression
        self._layer = layer
        self._max_expanded = max_expanded
        self._tracker = tracker
        self._expanded = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        if self._eof or size == 0:
            return b""
        try:
            data = self._inner.read(-1 if size is None else size)
        except EOFError:
            # isal raises EOFError when the input ends inside a gzip member, and also when fewer
            # bytes than a member header follow the last member: it cannot tell the two apart.
            raise self._error(f"truncated {self._compression.value} stream") from None
        except gzip.BadGzipFile as exc:
            if str(exc).startswith("Not a gzipped file"):
                # The first member's magic was checked before decoding, so this is a later
                # "member": bytes appended after a complete stream (Go's gzip reader refuses
                # them too, so a runtime would not pull this layer either).
                raise self._error(f"corrupt gzip stream: {exc}: trailing data after the last gzip member") \
                    from None
            raise self._error(f"corrupt {self._compression.value} stream: {exc}") from None
        except (_IsalError, zstandard.ZstdError) as exc:
            tracker = self._tracker
            if tracker is not None and tracker.problem is not None:
                # The frame walk saw what went wrong (e.g. trailing bytes that are no frame),
                # which says more than the decoder's "Unknown frame descriptor".
                raise self._error(f"corrupt zstd stream: {tracker.problem}") from None
            raise self._error(f"corrupt {self._compression.value} stream: {exc}") from None
        if not data:
            self._eof = True
            self._check_end()
            return b""
        self._expanded += len(data)
        if self._max_expanded is not None and self._expanded > self._max_expanded:
            raise self._error(f"layer expands to more than the limit of {self._max_expanded} bytes")
        return data

    def read1(self, size: int = -1, /) -> bytes:
        return self.read(size)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _check_end(self) -> None:
        tracker = self._tracker
        if tracker is None:
            return
        if tracker.problem is None and tracker.read(1):
            tracker.problem = "the decompressor stopped before the end of the input"
        if tracker.problem is not None:
            raise self._error(f"corrupt zstd stream: {tracker.problem}")
        if not tracker.at_frame_boundary():
            raise self._error("truncated zstd stream")

    def _error(self, message: str) -> LayerError:
        return LayerError(message, layer=self._layer)

    def close(self) -> None:
        # Closing the decoder never closes the caller's source (IGzipFile and the zstd reader
        # are opened on wrappers that do not own it).
        self._inner.close()
        super().close()


def open_layer_stream(
    raw: ByteSource,
    *,
    media_type: str | None = None,
    layer: str = "",
    max_expanded: int | None = None,
) -> BinaryIO:
    """Return a readable stream of the tar bytes inside a layer blob.

    The compression is detected from the magic bytes; if ``media_type`` is given it must
    promise the same compression, or LayerError is raised (a mislabelled blob is a broken
    image). The source is not closed when the returned stream is.
    """
    head = b""
    while len(head) < len(ZSTD_MAGIC):
        more = raw.read(len(ZSTD_MAGIC) - len(head))
        if not more:
            break
        head += more
    found = detect_compression(head)
    if media_type is not None:
        promised = compression_for_media_type(media_type)
        if promised is not found:
            raise LayerError(
                f"media type {media_type} promises {promised.value} but the blob is {found.value}",
                layer=layer,
            )
    source = _Replay(head, raw)
    tracker = None
    inner: _Decoder
    if found is Compression.GZIP:
        # igzip has no annotations; IGzipFile is a gzip.GzipFile running ISA-L's decoder in C.
        inner = igzip.IGzipFile(fileobj=source, mode="rb")  # type: ignore[no-untyped-call]
    elif found is Compression.ZSTD:
        tracker = _ZstdFrameTracker(source)
        # The stubs want IO[bytes]; the reader only ever calls read() on its source.
        inner = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], tracker), read_across_frames=True, closefd=False
        )
    else:
        inner = source
    decoded = _DecodedStream(inner, compression=found, layer=layer, max_expanded=max_expanded, tracker=tracker)
    # A BufferedIOBase is a BinaryIO in all but typeshed's nominal class hierarchy.
    return cast(BinaryIO, decoded)
