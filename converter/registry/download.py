"""Blob downloads: a buffered reader that resumes dropped transfers with Range and verifies size and digest at EOF."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator

import httpx
import structlog

from converter.errors import DigestMismatch, RegistryError
from converter.reference import Digest
from converter.registry._http import redact_url, scrub
from converter.registry.retry import RetryPolicy, TemporaryRegistryError, is_transient, retry_after_of

log = structlog.get_logger()

_IO_CHUNK = 1024 * 1024


class BlobReader(io.BufferedReader):
    """A blob download as a buffered binary file: read it to EOF, then size and digest are verified.

    A size mismatch raises RegistryError and a digest mismatch ``DigestMismatch`` (temporary
    while the client's retry policy allows another download) from the read that reaches the
    end. If the connection drops
    mid-body the download continues from the current offset with a ``Range`` request; a server
    that ignores Range sends everything again and the bytes already delivered are skipped.
    Not thread-safe: one reader per consumer. Close it (``with``) to release the connection.
    """

    def __init__(self, stream: BlobStream) -> None:
        super().__init__(stream, buffer_size=_IO_CHUNK)
        self._stream = stream

    @property
    def what(self) -> str:
        """The prefix of this download's errors: "fetching blob sha256:… from host/repo"."""
        return self._stream.what

    @property
    def digest(self) -> Digest:
        return self._stream.digest

    @property
    def size(self) -> int | None:
        """The blob's size, from the caller or Content-Length; None if neither said."""
        return self._stream.size

    @property
    def verified(self) -> bool:
        """True once the whole blob was read and matched its digest."""
        return self._stream.verified


class BlobStream(io.RawIOBase):
    """The raw side of BlobReader: hashes what arrives, resumes, verifies at EOF."""

    def __init__(self, what: str, digest: Digest, response: httpx.Response, *,
                 reopen: Callable[[int], httpx.Response], policy: RetryPolicy, size: int | None) -> None:
        super().__init__()
        self.what = what
        self.digest = digest
        self._reopen = reopen
        self._policy = policy
        self._response = response
        self._hasher = digest.hasher()
        self._received = 0
        self._buffer = b""
        self._offset = 0
        self._failures = 0
        self._started = policy.clock()
        self._verified = False
        self._error: RegistryError | None = None
        length = response.headers.get("Content-Length", "")
        advertised = int(length) if response.status_code == 200 and length.isdigit() else None
        if size is not None and advertised is not None and size != advertised:
            response.close()
            raise RegistryError(f"{what}: the registry announces {advertised} bytes, expected {size}")
        self.size = size if size is not None else advertised
        self._chunks: Iterator[bytes] = _raw_chunks(response)

    @property
    def verified(self) -> bool:
        """True once the whole blob was read and matched its digest."""
        return self._verified

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        if self._verified:
            return 0
        while self._offset >= len(self._buffer):
            chunk = self._next_chunk()
            if chunk is None:
                self._finish()
                return 0
            self._buffer, self._offset = chunk, 0
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._buffer) - self._offset)
        view[:count] = self._buffer[self._offset : self._offset + count]
        self._offset += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()

    def _fail(self, error: RegistryError) -> RegistryError:
        """Remember ``error`` (later reads raise it again) and drop the connection."""
        self._error = error
        self._response.close()
        return error

    def _next_chunk(self) -> bytes | None:
        while True:
            try:
                chunk = next(self._chunks, None)
            except httpx.TransportError as exc:
                self._resume(exc)
                continue
            if chunk is None:
                if self.size is not None and self._received < self.size:
                    # The body ended early without a transport error (e.g. a chunked response cut
                    # short); treat it like a dropped connection.
                    self._resume(None)
                    continue
                return None
            if not chunk:
                continue
            self._received += len(chunk)
            if self.size is not None and self._received > self.size:
                raise self._fail(RegistryError(f"{self.what}: the registry sent more than {self.size} bytes"))
            self._hasher.update(chunk)
            return chunk

    def _resume(self, cause: BaseException | None) -> None:
        """Reconnect at the current offset, within the retry policy's attempts and budget."""
        self._response.close()
        while True:
            self._failures += 1
            elapsed = self._policy.clock() - self._started
            if self._failures >= self._policy.attempts or elapsed > self._policy.budget:
                reason = f"{type(cause).__name__}: {cause}" if cause is not None else "the body ended early"
                error = TemporaryRegistryError(
                    f"{self.what}: connection lost after {self._received} bytes: {scrub(reason)}")
                self._error = error
                raise error from cause
            self._policy.sleep(self._policy.delay(self._failures, retry_after_of(cause) if cause else None))
            log.info("registry_blob_resume", what=self.what, offset=self._received, attempt=self._failures)
            try:
                response = self._reopen(self._received)
            except RegistryError as exc:
                if not is_transient(exc):
                    self._error = exc
                    raise
                cause = exc
                continue
            break
        skip = 0
        if response.status_code == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != self._received:
                response.close()
                raise self._fail(RegistryError(
                    f"{self.what}: asked to resume at byte {self._received}, the registry sent byte {start}"))
        else:
            skip = self._received  # Range ignored: the whole blob again, drop what we have
        self._response = response
        self._chunks = _skip(_raw_chunks(response), skip)

    def _finish(self) -> None:
        self._response.close()
        if self.size is not None and self._received != self.size:
            raise self._fail(RegistryError(f"{self.what}: got {self._received} bytes, expected {self.size}"))
        actual = Digest(self.digest.algorithm, self._hasher.hexdigest())
        if actual != self.digest:
            raise self._fail(DigestMismatch(f"{self.what}: digest mismatch: the content's digest is {actual}",
                                            attempts=self._policy.attempts, method="GET",
                                            url=redact_url(self._response.request.url)))
        self._verified = True



def _raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body as sent. (A response whose body httpx already loaded, as transports like
    MockTransport hand back, cannot be streamed raw again; its loaded content is the same bytes.)"""
    if response.is_stream_consumed:
        content = response.content
        return iter([content[i : i + _IO_CHUNK] for i in range(0, len(content), _IO_CHUNK)])
    # No chunk_size: httpx would buffer up to it, and a connection dropped meanwhile would lose
    # the buffered bytes — a resume should start from everything that did arrive.
    return response.iter_raw()


def _skip(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:]
        count = 0


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*", value or "")
    return int(match.group(1)) if match else None
