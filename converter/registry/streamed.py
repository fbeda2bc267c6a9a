"""A blob upload that starts before the blob is complete: its first part while it is still
being written, the rest and the digest once it is done.

Our EROFS writer puts the file data first and the metadata last, and once the layout is planned
block 0 and the data are final (``write_image``'s ``on_planned``): about half the image of a
layer of many small files, whose metadata then takes the longest to write. The image pipeline
sends that part meanwhile (spec: "pushing a blob in chunks"):

1. ``send_first``: POST ``/blobs/uploads/`` opens a session, one PATCH (``Content-Range: 0-N``)
   sends block 0 and the data;
2. ``send_more``, as often as the caller likes: a PATCH with the next bytes (the metadata,
   which the writer appends in order while it writes it);
3. ``finish``, with the image complete and its digest known: HEAD, and if the repository has
   the blob already the session is cancelled (DELETE); else a PATCH sends the rest and
   ``PUT ?digest=`` closes the session, the registry checking the digest against the bytes it
   got (so a byte sent before it was final could never make a wrong blob: the PUT fails).

Every request is a single try, and none is resent: a failure ends the streamed upload, the
caller ``cancel``s it and uploads the whole blob the usual way (``RegistryClient.push_blob``,
with its retries). A registry that wants chunks larger than the first part
(``OCI-Chunk-Min-Length``) gets the usual upload too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from converter.errors import ImageError, RegistryError
from converter.reference import Digest
from converter.registry.auth import Scopes
from converter.registry.transport import Transport
from converter.registry.upload import cancel_upload, close_upload, head_blob, patch_chunk, start_upload

__all__ = ["StreamedUpload"]

_IO_CHUNK = 1 << 20


def _file_range(fd: int, start: int, end: int, what: str) -> Iterator[bytes]:
    """The bytes of ``fd`` from ``start`` to ``end`` (positional reads: the file offset is not
    touched, so a writer may still be using the same file)."""
    pos = start
    while pos < end:
        piece = os.pread(fd, min(_IO_CHUNK, end - pos), pos)
        if not piece:
            raise ImageError(f"{what}: the image ended at byte {pos}, before {end}")
        pos += len(piece)
        yield piece


class StreamedUpload:
    """One streamed blob upload into ``host/repository`` (see the module docstring)."""

    def __init__(self, transport: Transport, host: str, repository: str, scopes: Scopes) -> None:
        self._transport, self._host, self._repository, self._scopes = transport, host, repository, scopes
        self._what = f"pushing a blob to {host}/{repository}"
        self._location: httpx.URL | None = None
        self._sent = 0  # bytes the registry holds

    @property
    def sent(self) -> int:
        """How many bytes of the blob the registry has (0 before ``send_first``)."""
        return self._sent

    def send_first(self, first: bytes, fd: int, end: int) -> None:
        """Open the session and send ``first`` followed by ``fd``'s bytes from ``len(first)`` to ``end``."""
        if self._location is not None:
            raise RuntimeError("StreamedUpload.send_first called twice")
        if end < len(first):
            raise ValueError(f"the first part ends at {end}, inside its first {len(first)} bytes")
        session = start_upload(self._transport, self._what, self._host, self._repository, self._scopes, retry=False)
        assert session.location is not None
        self._location = session.location
        if session.min_chunk > end:
            raise RegistryError(f"{self._what}: the registry wants chunks of at least {session.min_chunk} bytes, "
                                f"the first part has {end}")

        def body() -> Iterator[bytes]:
            yield first
            yield from _file_range(fd, len(first), end, self._what)

        self._patch(0, end, body)

    def send_more(self, fd: int, end: int) -> None:
        """Send ``fd``'s bytes from where the last part ended up to ``end``."""
        if self._location is None:
            raise RuntimeError("StreamedUpload.send_more before send_first")
        start = self._sent
        if end > start:
            self._patch(start, end, lambda: _file_range(fd, start, end, self._what))

    def finish(self, path: Path, digest: Digest, size: int) -> bool:
        """Complete the blob from the finished file at ``path``; False if the repository had it
        already (the session is then cancelled), True once it is stored and verified."""
        if self._location is None:
            raise RuntimeError("StreamedUpload.finish before send_first")
        what = f"pushing blob {digest} to {self._host}/{self._repository}"
        if head_blob(self._transport, what, self._host, self._repository, digest, self._scopes,
                     retry=False) is not None:
            self.cancel()
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            available = os.fstat(fd).st_size
            if available != size or size < self._sent:
                raise ImageError(f"{what}: {path} has {available} bytes, expected {size} (of which {self._sent} "
                                 "are sent)")
            if size > self._sent:
                start = self._sent
                self._patch(start, size, lambda: _file_range(fd, start, size, what))
        finally:
            os.close(fd)
        close_upload(self._transport, what, self._host, self._scopes, self._location, digest)
        self._location = None  # closed: nothing left to cancel
        return True

    def cancel(self) -> None:
        """Best effort: DELETE the session (a registry purges abandoned sessions itself, later)."""
        location, self._location = self._location, None
        cancel_upload(self._transport, self._what, self._host, self._scopes, location)

    def _patch(self, start: int, end: int, body: Callable[[], Iterator[bytes]]) -> None:
        assert self._location is not None
        self._location = patch_chunk(self._transport, self._what, self._host, self._scopes, self._location, start,
                                     end, body)
        self._sent = end
