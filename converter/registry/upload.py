"""Blob uploads (OCI distribution spec: pushing blobs): the session calls and the ``Upload`` state machine.

``Upload`` speaks to the registry only through ``Transport.fetch``/``location`` and the
session functions here (HEAD, POST, DELETE), so each attempt is one unit of retry.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import httpx
import structlog

from converter.errors import ImageError, RegistryError
from converter.reference import Digest
from converter.registry._http import redact_url
from converter.registry.auth import Scopes
from converter.registry.retry import TemporaryRegistryError, is_transient
from converter.registry.transport import ERROR_BODY_LIMIT, Call, Transport, check_reported_digest

log = structlog.get_logger()

_IO_CHUNK = 1024 * 1024


class BlobPush(enum.StrEnum):
    """What push_blob had to do."""

    EXISTS = "exists"  # the registry already had the blob (HEAD)
    MOUNTED = "mounted"  # cross-repository mount
    UPLOADED = "uploaded"


@dataclass(frozen=True, slots=True)
class Session:
    location: httpx.URL | None
    mounted: bool
    min_chunk: int = 0


def head_blob(transport: Transport, what: str, host: str, repository: str, digest: Digest, scopes: Scopes,
              *, retry: bool = True) -> int | None:
    call = Call(what, host, scopes, "HEAD", transport.url(host, f"/v2/{repository}/blobs/{digest}"),
                follow_redirects=True, allow=frozenset({404}))
    response = transport.open(call, retry=retry)
    response.close()
    if response.status_code == 404:
        return None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else -1


def start_upload(transport: Transport, what: str, host: str, repository: str, scopes: Scopes, *,
                 mount: tuple[Digest, str] | None = None, retry: bool = True) -> Session:
    """POST …/blobs/uploads/ (spec: "pushing blobs", "mounting a blob from another repository")."""
    params = {"mount": str(mount[0]), "from": mount[1]} if mount else None
    call = Call(what, host, scopes, "POST", transport.url(host, f"/v2/{repository}/blobs/uploads/", params),
                headers={"Content-Length": "0"}, body=lambda: b"")
    response, _ = transport.fetch(call, limit=ERROR_BODY_LIMIT, retry=retry)
    if response.status_code == 201 and mount:
        return Session(location=None, mounted=True)
    if response.status_code != 202:
        raise RegistryError(f"{what}: unexpected status {response.status_code} opening an upload",
                            status=response.status_code, method="POST", url=redact_url(call.url))
    # OCI-Chunk-Min-Length (spec 1.1): PATCH chunks except the last must be at least this big.
    min_chunk = response.headers.get("OCI-Chunk-Min-Length", "")
    return Session(location=transport.location(call, response), mounted=False,
                   min_chunk=int(min_chunk) if min_chunk.isdigit() else 0)


def cancel_upload(transport: Transport, what: str, host: str, scopes: Scopes, location: httpx.URL | None) -> None:
    """Best effort: DELETE an upload session we abandon (the registry would purge it later)."""
    if location is None:
        return
    call = Call(what, host, scopes, "DELETE", location)
    try:
        transport.open(call, retry=False).close()
    except RegistryError as exc:
        log.debug("registry_upload_cancel_failed", what=what, error=str(exc))


class Upload:
    """One push_blob: each attempt checks the registry, opens a session and uploads from the start."""

    def __init__(self, transport: Transport, what: str, host: str, repository: str, digest: Digest,
                 size: int, stream: BinaryIO, scopes: Scopes, chunk_size: int | None,
                 mount_from: str | None) -> None:
        self.transport, self.what, self.host, self.repository = transport, what, host, repository
        self.digest, self.size, self.stream, self.scopes = digest, size, stream, scopes
        self.chunk_size, self.mount_from = chunk_size, mount_from
        self.seekable = stream.seekable()
        self.start = stream.tell() if self.seekable else 0
        self.consumed = False

    def should_retry(self, exc: BaseException) -> bool:
        # A stream we cannot rewind can only be retried if no byte of it was sent.
        return is_transient(exc) and (self.seekable or not self.consumed)

    def attempt(self) -> BlobPush:
        transport = self.transport
        # HEAD first: layers shared between images are usually there already (spec: "checking
        # if content exists"). Single tries inside: the whole attempt is the unit of retry.
        if head_blob(transport, self.what, self.host, self.repository, self.digest, self.scopes,
                     retry=False) is not None:
            return BlobPush.EXISTS
        mount = (self.digest, self.mount_from) if self.mount_from else None
        session = start_upload(transport, self.what, self.host, self.repository, self.scopes, mount=mount,
                               retry=False)
        if session.mounted:
            return BlobPush.MOUNTED
        assert session.location is not None
        try:
            chunk = max(self.chunk_size or 0, session.min_chunk)
            if self.chunk_size is None or self.size <= chunk:
                self._put_monolithic(session.location)
            else:
                self._put_chunked(session.location, chunk)
        except Exception:
            cancel_upload(transport, self.what, self.host, self.scopes, session.location)
            raise
        return BlobPush.UPLOADED

    def _rewind(self) -> None:
        if self.seekable:
            self.stream.seek(self.start)
        elif self.consumed:
            raise RegistryError(f"{self.what}: cannot send the blob again: the source is not seekable")
        self.consumed = True

    def _read_exact(self, count: int) -> Iterator[bytes]:
        remaining = count
        while remaining:
            piece = self.stream.read(min(_IO_CHUNK, remaining))
            if not piece:
                raise ImageError(f"{self.what}: the source ended {remaining} bytes early")
            remaining -= len(piece)
            yield piece

    def _put_monolithic(self, location: httpx.URL) -> None:
        """One PUT ?digest= streaming the whole blob (spec: "pushing a blob monolithically")."""

        def body() -> Iterator[bytes]:
            self._rewind()
            return self._read_exact(self.size)

        call = Call(self.what, self.host, self.scopes, "PUT",
                    location.copy_merge_params({"digest": str(self.digest)}),
                    # An explicit length makes httpx send Content-Length instead of chunked
                    # transfer encoding, which some registries refuse for blob uploads.
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(self.size)},
                    body=body)
        response, _ = self.transport.fetch(call, limit=ERROR_BODY_LIMIT, retry=False)
        check_reported_digest(call, response, self.digest)

    def _put_chunked(self, location: httpx.URL, chunk: int) -> None:
        """PATCH chunks with Content-Range, then PUT ?digest= (spec: "pushing a blob in chunks")."""
        self._rewind()
        offset = 0
        while offset < self.size:
            count = min(chunk, self.size - offset)
            data = b"".join(self._read_exact(count))
            location = patch_chunk(self.transport, self.what, self.host, self.scopes, location, offset,
                                   offset + count, _constant(data))
            offset += count
        close_upload(self.transport, self.what, self.host, self.scopes, location, self.digest)


def patch_chunk(transport: Transport, what: str, host: str, scopes: Scopes, location: httpx.URL, start: int,
                end: int, body: Callable[[], bytes | Iterator[bytes]]) -> httpx.URL:
    """PATCH the blob's bytes ``start`` to ``end`` (``body``) into the session at ``location``
    (single try); the session's next location, once the registry says it holds ``end`` bytes."""
    call = Call(what, host, scopes, "PATCH", location,
                # An explicit length: the registry gets Content-Length, not chunked encoding.
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(end - start),
                         # No "bytes=" prefix: the spec's (and distribution's) format.
                         "Content-Range": f"{start}-{end - 1}"},
                body=body)
    response, _ = transport.fetch(call, limit=ERROR_BODY_LIMIT, retry=False)
    location = transport.location(call, response)
    check_upload_range(call, response, end)
    return location


def close_upload(transport: Transport, what: str, host: str, scopes: Scopes, location: httpx.URL,
                 digest: Digest) -> None:
    """PUT ``?digest=`` with no body: the session's bytes become blob ``digest`` (the registry
    checks it; single try)."""
    call = Call(what, host, scopes, "PUT", location.copy_merge_params({"digest": str(digest)}),
                headers={"Content-Length": "0"}, body=lambda: b"")
    response, _ = transport.fetch(call, limit=ERROR_BODY_LIMIT, retry=False)
    check_reported_digest(call, response, digest)


def check_upload_range(call: Call, response: httpx.Response, expected_end: int) -> None:
    """After a PATCH the Range header ("0-N", inclusive) says how much the registry holds."""
    value = response.headers.get("Range")
    match = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", value or "")
    if match and int(match.group(1)) + 1 != expected_end:
        held = int(match.group(1)) + 1
        raise TemporaryRegistryError(
            f"{call.what}: the registry holds {held} bytes after a chunk, expected {expected_end}",
            method=call.method, url=redact_url(response.request.url))



def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data
