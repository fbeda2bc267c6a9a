"""The OCI distribution API (pull, push, mount, tags) for the converter: one ``RegistryClient`` per process.

Thread-safe; requests go through transport.py, uploads through upload.py, downloads through
download.py. Spec references below are to the OCI distribution spec (spec.md) unless noted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, NamedTuple, overload

import httpx
import structlog

from converter import __version__
from converter.errors import DigestMismatch, ImageError, InvalidReference, RegistryError, UnsupportedMediaType
from converter.oci.mediatypes import MediaType, parse_media_type
from converter.reference import DOCKER_HUB_API_HOST, Digest, Reference
from converter.registry._http import redact_url
from converter.registry.auth import pull_scope, push_scope
from converter.registry.body import load_json
from converter.registry.credentials import CredentialProvider
from converter.registry.download import BlobReader, BlobStream
from converter.registry.retry import RetryPolicy, run_with_retry
from converter.registry.streamed import StreamedUpload
from converter.registry.transport import (
    DEFAULT_TIMEOUT,
    ERROR_BODY_LIMIT,
    Call,
    Timeouts,
    Transport,
    check_reported_digest,
)
from converter.registry.upload import BlobPush, Upload, cancel_upload, head_blob, start_upload

__all__ = ["DEFAULT_RETRY", "DEFAULT_TIMEOUT", "MANIFEST_ACCEPT", "MAX_MANIFEST_SIZE", "MAX_SMALL_BLOB_SIZE",
           "MAX_TAGS", "BlobPush", "BlobReader", "ManifestResponse", "RegistryClient", "Timeouts", "api_host"]

log = structlog.get_logger()

DEFAULT_RETRY = RetryPolicy()
# Registries reject manifests over 4 MiB (distribution's limit; the spec says SHOULD accept at least 4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# get_blob_bytes is for configs and similar small JSON blobs.
MAX_SMALL_BLOB_SIZE = 8 * 1024 * 1024
# A tag list is bounded in all: one page's answer, the pages, and the tags across pages.
_TAGS_BODY_LIMIT = 8 * 1024 * 1024
_MAX_TAG_PAGES = 10_000
MAX_TAGS = 1_000_000
_IO_CHUNK = 1024 * 1024
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io"})

# Accept for manifests. Schema 1 types are listed so that registries answer with them (rather
# than a 404 or an on-the-fly conversion) and we can refuse them with a clear message.
MANIFEST_ACCEPT = ", ".join([
    MediaType.OCI_INDEX, MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST_LIST, MediaType.DOCKER_MANIFEST,
    MediaType.DOCKER_SCHEMA1_SIGNED, MediaType.DOCKER_SCHEMA1,
])


class ManifestResponse(NamedTuple):
    """A fetched manifest: the exact bytes, the media type, and the verified digest."""

    data: bytes
    media_type: MediaType | str  # a str only for types the converter does not know
    digest: Digest


class RegistryClient:
    """Talks to OCI distribution registries. Create one per process and share it.

    ``plain_http`` lists ``host[:port]`` registries spoken to without TLS. Loopback registries
    (localhost, 127.0.0.0/8, ::1) are too, unless ``loopback_plain_http`` is False (a local
    registry with TLS); no other host ever is. ``ca_bundle`` adds trusted CAs to the system's.
    ``timeout`` bounds each request (``Timeouts``: connect, stall, pool, and the total time of an
    answer read whole). ``transport`` replaces the network (tests use httpx.MockTransport).
    """

    def __init__(
        self,
        *,
        credentials: CredentialProvider | None = None,
        plain_http: Iterable[str] = (),
        loopback_plain_http: bool = True,
        ca_bundle: str | os.PathLike[str] | None = None,
        verify_tls: bool = True,
        timeout: Timeouts = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 16,
        user_agent: str = f"erofs-converter/{__version__}",
    ) -> None:
        self._transport = Transport(
            credentials=credentials, plain_http=plain_http, loopback_plain_http=loopback_plain_http,
            ca_bundle=ca_bundle, verify_tls=verify_tls, timeout=timeout, retry=retry, transport=transport,
            max_connections=max_connections, user_agent=user_agent)
        self._retry = retry

    def __repr__(self) -> str:
        return f"RegistryClient({self._transport!r})"

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def timeouts(self) -> Timeouts:
        return self._transport.timeouts

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    def plain_http_allowed(self, registry: str) -> bool:
        """True if ``host[:port]`` may be spoken to without TLS (a loopback host or a listed one)."""
        return self._transport.plain_http_allowed(registry)

    # --- public API ---------------------------------------------------------------------------

    def ping(self, registry: str) -> None:
        """Check that ``registry`` speaks the v2 API and that our credentials (if any) work."""
        host = api_host(registry)
        call = Call(f"checking registry {host}", host, frozenset(), "GET", self._transport.url(host, "/v2/"))
        self._transport.fetch(call, limit=ERROR_BODY_LIMIT)

    @overload
    def get_manifest(self, ref: Reference, /, *, max_size: int = MAX_MANIFEST_SIZE) -> ManifestResponse: ...

    @overload
    def get_manifest(
        self, registry: str, repository: str, reference: str | Digest, /, *, max_size: int = MAX_MANIFEST_SIZE
    ) -> ManifestResponse: ...

    def get_manifest(
        self,
        ref_or_registry: Reference | str,
        repository: str | None = None,
        reference: str | Digest | None = None,
        /,
        *,
        max_size: int = MAX_MANIFEST_SIZE,
    ) -> ManifestResponse:
        """Fetch a manifest or index by tag or digest, verifying its digest; refuses schema 1."""
        if isinstance(ref_or_registry, Reference):
            ref = ref_or_registry
        else:
            if repository is None or reference is None:
                raise TypeError("get_manifest(registry, repository, reference) needs all three")
            ref = _reference(ref_or_registry, repository, reference)
        host = api_host(ref.registry)
        what = f"fetching manifest {ref}"
        call = Call(
            what, host, frozenset({pull_scope(ref.repository)}), "GET",
            self._transport.url(host, f"/v2/{ref.repository}/manifests/{ref.manifest_reference}"),
            headers={"Accept": MANIFEST_ACCEPT}, follow_redirects=True,
        )
        response, data = self._transport.fetch(call, limit=max_size)
        media_type = _manifest_media_type(response.headers.get("Content-Type"), data)
        if isinstance(media_type, MediaType) and media_type.is_schema1:
            raise UnsupportedMediaType(
                f"{what}: Docker schema 1 manifests ({media_type}) are not supported; "
                "re-push the image with a current Docker or skopeo"
            )
        digest = _verify_manifest_digest(call, response, data, ref.digest)
        log.debug("registry_manifest_fetched", ref=str(ref), media_type=media_type, size=len(data))
        return ManifestResponse(data, media_type, digest)

    def blob_exists(self, registry: str, repository: str, digest: Digest) -> int | None:
        """The blob's size if ``repository`` has it (-1 if the registry gives none), else None."""
        host = api_host(registry)
        _reference(registry, repository, digest)
        what = f"checking blob {digest} in {host}/{repository}"
        return head_blob(self._transport, what, host, repository, digest, frozenset({pull_scope(repository)}))

    def open_blob(self, registry: str, repository: str, digest: Digest, *, size: int | None = None
                  ) -> BlobReader:
        """Stream a blob; the reader verifies size and digest at EOF and resumes dropped downloads.

        ``size`` (from the descriptor) is checked against what the registry sends. Read to the
        end: only then is the content verified. Content that does not match the digest raises
        ``DigestMismatch``, temporary while this client's retry policy allows another download:
        only the caller can start over, since it must discard what it read (see
        ``get_blob_bytes``).
        """
        host = api_host(registry)
        _reference(registry, repository, digest)
        call = Call(
            f"fetching blob {digest} from {host}/{repository}", host,
            frozenset({pull_scope(repository)}), "GET",
            self._transport.url(host, f"/v2/{repository}/blobs/{digest}"),
            # Blobs are stored compressed already; ask for the bytes exactly as stored so the
            # digest matches even if a storage backend mislabels them with Content-Encoding.
            headers={"Accept-Encoding": "identity"}, follow_redirects=True,
        )
        response = self._transport.open(call)

        def reopen(offset: int) -> httpx.Response:
            ranged = replace(call, headers={**call.headers, "Range": f"bytes={offset}-"})
            return self._transport.open(ranged, retry=False)

        stream = BlobStream(call.what, digest, response, reopen=reopen, policy=self._retry, size=size)
        return BlobReader(stream)

    def get_blob_range(self, registry: str, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a blob, with one HTTP ``Range`` request (distribution spec:
        registries SHOULD honour it; a ``200`` with the whole blob is read up to ``end`` instead).

        The slice cannot be checked against the blob digest: callers verify it (chunk-index
        checksums). Fewer bytes than asked for is an error.
        """
        if not 0 <= start < end:
            raise ValueError(f"bad blob range {start}:{end}")
        host = api_host(registry)
        _reference(registry, repository, digest)
        call = Call(
            f"fetching bytes {start}-{end - 1} of blob {digest} from {host}/{repository}", host,
            frozenset({pull_scope(repository)}), "GET", self._transport.url(host, f"/v2/{repository}/blobs/{digest}"),
            headers={"Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}, follow_redirects=True,
        )
        response = self._transport.open(call)
        try:
            skip = 0
            if response.status_code == 206:
                got = re.match(r"bytes (\d+)-(\d+)/", response.headers.get("Content-Range", ""))
                if got is None or int(got.group(1)) != start:
                    raise RegistryError(f"{call.what}: the registry answered with range "
                                        f"{response.headers.get('Content-Range')!r}")
            elif response.status_code == 200:
                skip = start
            else:
                raise RegistryError(f"{call.what}: unexpected status {response.status_code}")
            want = end - start
            parts: list[bytes] = []
            have = 0
            for chunk in response.iter_bytes(_IO_CHUNK):
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                parts.append(chunk[:want - have])
                have += len(parts[-1])
                if have >= want:
                    break
        except httpx.HTTPError as exc:
            raise RegistryError(f"{call.what}: {exc}") from exc
        finally:
            response.close()
        if have != want:
            raise RegistryError(f"{call.what}: got {have} of {want} bytes")
        return b"".join(parts)

    def get_blob_bytes(self, registry: str, repository: str, digest: Digest, *,
                       max_size: int = MAX_SMALL_BLOB_SIZE) -> bytes:
        """A small blob (an image config) in memory, verified; larger than ``max_size`` is an error.

        A download that does not match the digest is repeated (after the policy's backoff) up
        to the policy's attempts, since a corrupted transfer is usually a passing fault.
        """
        downloads = 1
        while True:
            try:
                return self._read_small_blob(registry, repository, digest, max_size)
            except DigestMismatch as exc:
                if not exc.temporary or downloads >= exc.attempts:
                    raise exc.exhausted(downloads) from exc
                log.info("registry_blob_refetch", digest=str(digest), attempt=downloads, reason="digest mismatch")
                self._retry.sleep(self._retry.delay(downloads))
                downloads += 1

    def _read_small_blob(self, registry: str, repository: str, digest: Digest, max_size: int) -> bytes:
        with self.open_blob(registry, repository, digest) as reader:
            if reader.size is not None and reader.size > max_size:
                raise RegistryError(f"{reader.what}: {reader.size} bytes, more than the limit of {max_size}")
            parts: list[bytes] = []
            total = 0
            while chunk := reader.read(_IO_CHUNK):
                total += len(chunk)
                if total > max_size:
                    raise RegistryError(f"{reader.what}: more than the limit of {max_size} bytes")
                parts.append(chunk)
            return b"".join(parts)

    def mount_blob(self, registry: str, repository: str, digest: Digest, from_repository: str) -> bool:
        """Ask the registry to link a blob from another repository; False if it would not."""
        host = api_host(registry)
        _reference(registry, from_repository, digest)
        what = f"mounting blob {digest} from {host}/{from_repository} to {host}/{repository}"
        scopes = frozenset({push_scope(repository), pull_scope(from_repository)})
        session = start_upload(self._transport, what, host, repository, scopes, mount=(digest, from_repository))
        if session.mounted:
            return True
        # 202: the registry could not mount (no such blob there, or no pull access to the source)
        # and opened an upload session instead, which we do not need.
        cancel_upload(self._transport, what, host, scopes, session.location)
        return False

    def push_blob(
        self,
        registry: str,
        repository: str,
        digest: Digest,
        size: int,
        source: BinaryIO | str | os.PathLike[str],
        *,
        chunk_size: int | None = None,
        mount_from: str | None = None,
    ) -> BlobPush:
        """Upload a blob unless the repository has it; mount it from ``mount_from`` if possible.

        The upload is one streamed PUT, or PATCH chunks of ``chunk_size`` bytes when that is
        smaller than the blob. A file object is read from its current position and must be
        seekable for retries. A failed upload starts over with a new session.
        """
        host = api_host(registry)
        _reference(registry, repository, digest)
        if mount_from is not None:
            _reference(registry, mount_from, digest)
        what = f"pushing blob {digest} to {host}/{repository}"
        scopes = {push_scope(repository)} | ({pull_scope(mount_from)} if mount_from else set())
        with ExitStack() as stack:
            if isinstance(source, str | os.PathLike):
                stream: BinaryIO = stack.enter_context(open(source, "rb"))
                available = os.fstat(stream.fileno()).st_size
                if available != size:
                    raise ImageError(f"{what}: {Path(source)} has {available} bytes, expected {size}")
            else:
                stream = source
            upload = Upload(self._transport, what, host, repository, digest, size, stream, frozenset(scopes),
                            chunk_size, mount_from)
            outcome = run_with_retry(upload.attempt, policy=self._retry, what=what,
                                     should_retry=upload.should_retry)
        log.debug("registry_blob_pushed", what=what, outcome=str(outcome), size=size)
        return outcome

    def streamed_upload(self, registry: str, repository: str) -> StreamedUpload:
        """A blob upload into ``repository`` that starts before the blob is complete
        (``registry/streamed.py``): single tries, the caller falls back to ``push_blob``."""
        _reference(registry, repository, "latest")  # validates the names as a push would
        return StreamedUpload(self._transport, api_host(registry), repository, frozenset({push_scope(repository)}))

    def put_manifest(self, registry: str, repository: str, reference: str | Digest, data: bytes,
                     media_type: str) -> Digest:
        """Upload a manifest or index under a tag or its digest; returns its digest."""
        ref = _reference(registry, repository, reference)
        host = api_host(registry)
        what = f"pushing manifest {ref}"
        digest = Digest.from_bytes(data, ref.digest.algorithm if ref.digest else "sha256")
        if ref.digest is not None and digest != ref.digest:
            raise ImageError(f"{what}: the manifest's digest is {digest}")
        if len(data) > MAX_MANIFEST_SIZE:
            raise ImageError(f"{what}: {len(data)} bytes, more than registries accept ({MAX_MANIFEST_SIZE})")
        call = Call(
            what, host, frozenset({push_scope(repository)}), "PUT",
            self._transport.url(host, f"/v2/{repository}/manifests/{ref.manifest_reference}"),
            headers={"Content-Type": media_type}, body=lambda: data,
        )
        response, _ = self._transport.fetch(call, limit=ERROR_BODY_LIMIT)
        check_reported_digest(call, response, digest)
        log.debug("registry_manifest_pushed", ref=str(ref), digest=str(digest), media_type=media_type)
        return digest

    def list_tags(self, registry: str, repository: str, *, page_size: int | None = None) -> list[str]:
        """All tags of a repository (at most ``MAX_TAGS``), following ``Link`` pages (spec: listing tags)."""
        return list(self.iter_tags(registry, repository, page_size=page_size))

    def iter_tags(self, registry: str, repository: str, *, page_size: int | None = None) -> Iterator[str]:
        """The tags of a repository page by page, as they arrive: one page is held at a time.

        Follows ``Link: <…>; rel="next"``; more than ``MAX_TAGS`` tags, a page over 8 MiB,
        or pagination that does not end is a RegistryError (a registry's answer is input).
        """
        host = api_host(registry)
        _reference(registry, repository, "latest")
        what = f"listing tags of {host}/{repository}"
        params = {"n": str(page_size)} if page_size is not None else None
        url: httpx.URL | None = self._transport.url(host, f"/v2/{repository}/tags/list", params)
        seen: set[str] = set()
        count = 0
        while url is not None:
            if str(url) in seen or len(seen) >= _MAX_TAG_PAGES:
                raise RegistryError(f"{what}: the registry's pagination does not end", url=redact_url(url))
            seen.add(str(url))
            call = Call(what, host, frozenset({pull_scope(repository)}), "GET", url, follow_redirects=True)
            response, body = self._transport.fetch(call, limit=_TAGS_BODY_LIMIT)
            page = _parse_tags(call, body)
            del body
            count += len(page)
            if count > MAX_TAGS:
                raise RegistryError(f"{what}: more than {MAX_TAGS} tags", url=redact_url(url))
            url = self._transport.next_page(call, response)
            yield from page

    def get_referrers(self, registry: str, repository: str, digest: Digest) -> bytes | None:
        """The referrers API (distribution spec 1.1, ``GET /v2/<name>/referrers/<digest>``): the
        index of manifests whose ``subject`` is ``digest``, or None when the registry answers 404,
        which the spec defines as "the referrers API is not supported" (use the tag schema)."""
        host = api_host(registry)
        _reference(registry, repository, digest)
        call = Call(
            f"listing referrers of {host}/{repository}@{digest}", host, frozenset({pull_scope(repository)}),
            "GET", self._transport.url(host, f"/v2/{repository}/referrers/{digest}"),
            headers={"Accept": MediaType.OCI_INDEX.value}, follow_redirects=True, allow=frozenset({404}),
        )
        response, body = self._transport.fetch(call, limit=MAX_MANIFEST_SIZE)
        return None if response.status_code == 404 else body


def api_host(registry: str) -> str:
    """The host[:port] serving ``registry``'s API (Docker Hub's name and API host differ)."""
    name = registry.lower()
    return DOCKER_HUB_API_HOST if name in _DOCKER_HUB_NAMES else name


def _reference(registry: str, repository: str, reference: str | Digest) -> Reference:
    """Validate the parts of a request as references are validated; "sha256:…" strings are digests."""
    try:
        if isinstance(reference, str) and ":" in reference:
            reference = Digest.parse(reference)
        if isinstance(reference, Digest):
            return Reference(registry, repository, digest=reference)
        return Reference(registry, repository, tag=reference)
    except InvalidReference as exc:
        raise InvalidReference(f"{exc} (registry {registry!r}, repository {repository!r})") from exc



def _manifest_media_type(content_type: str | None, data: bytes) -> MediaType | str:
    """The media type from Content-Type, or from the document when the registry sends a generic one."""
    media_type = parse_media_type((content_type or "").lower())
    if media_type not in ("", "application/json", "text/plain", "application/octet-stream"):
        return media_type
    try:
        document = load_json(data)
    except ValueError:
        return media_type
    if isinstance(document, dict):
        declared = document.get("mediaType")
        if isinstance(declared, str) and declared:
            return parse_media_type(declared)
        if document.get("schemaVersion") == 1:
            return MediaType.DOCKER_SCHEMA1_SIGNED if "signatures" in document else MediaType.DOCKER_SCHEMA1
    return media_type


def _verify_manifest_digest(call: Call, response: httpx.Response, data: bytes,
                            expected: Digest | None) -> Digest:
    """Check the bytes against the requested digest and the Docker-Content-Digest header."""
    if expected is not None:
        actual = Digest.from_bytes(data, expected.algorithm)
        if actual != expected:
            raise RegistryError(f"{call.what}: the registry sent content with digest {actual}",
                                method=call.method, url=redact_url(response.request.url))
    check_reported_digest(call, response, None, data=data)
    return expected if expected is not None else Digest.from_bytes(data)



def _parse_tags(call: Call, body: bytes) -> list[str]:
    try:
        data = load_json(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RegistryError(f"{call.what}: the answer is not a JSON object", method="GET",
                            url=redact_url(call.url))
    tags = data.get("tags") or []  # distribution sends "tags": null for an empty repository
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistryError(f"{call.what}: 'tags' is not a list of strings", method="GET",
                            url=redact_url(call.url))
    return tags
