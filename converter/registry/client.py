"""A small client for the OCI distribution API (pull, push, mount, tags) on one shared httpx.Client.

One ``RegistryClient`` serves the whole process and is safe to use from several threads: its
only shared state is the httpx connection pool and the Authenticator's locked caches.

Every request goes through ``_open``: credentials or a scoped bearer token are attached only to
the registry's own origin, redirects are followed by hand for GET/HEAD (dropping Authorization
when the host changes, refusing https→http), a 401 triggers one re-authentication, error
statuses become RegistryError/AuthError/NotFound carrying the registry's error code, and
transient failures are retried by retry.py. Downloads are verified against their digest.

Every socket of the client's own connection pools goes through ``_CancellableBackend``: while a
thread that entered a ``CancelScope`` (retry.py) blocks reading or writing one, cancelling the
scope shuts that socket down, so a pipeline stops at once instead of waiting for a stalled
registry's read timeout.

Spec references below are to the OCI distribution spec (spec.md) unless noted.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, NamedTuple, TypeVar, overload

import httpcore
import httpx
import structlog

from converter import __version__
from converter.cancel import current_scope
from converter.errors import (
    AuthError,
    DigestMismatch,
    ImageError,
    InvalidReference,
    NotFound,
    RegistryError,
    UnsupportedMediaType,
)
from converter.oci.mediatypes import MediaType, parse_media_type
from converter.reference import DOCKER_HUB_API_HOST, Digest, Reference
from converter.registry._http import host_port, is_loopback, redact_url, scrub, split_host
from converter.registry.auth import Authenticator, Scopes, pull_scope, push_scope
from converter.registry.credentials import CredentialProvider
from converter.registry.retry import (
    NO_RETRY,
    TRANSIENT_STATUSES,
    RequestCancelled,
    RetryPolicy,
    TemporaryRegistryError,
    check_cancelled,
    is_transient,
    parse_retry_after,
    retry_after_of,
    run_with_retry,
)

log = structlog.get_logger()

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=30.0)
DEFAULT_RETRY = RetryPolicy()
# Registries reject manifests over 4 MiB (distribution's limit; the spec says SHOULD accept at least 4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# get_blob_bytes is for configs and similar small JSON blobs.
MAX_SMALL_BLOB_SIZE = 8 * 1024 * 1024
_ERROR_BODY_LIMIT = 64 * 1024
_TAGS_BODY_LIMIT = 16 * 1024 * 1024
_MAX_TAG_PAGES = 10_000
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_IO_CHUNK = 1024 * 1024
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io"})

# Accept for manifests. Schema 1 types are listed so that registries answer with them (rather
# than a 404 or an on-the-fly conversion) and we can refuse them with a clear message.
MANIFEST_ACCEPT = ", ".join([
    MediaType.OCI_INDEX, MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST_LIST, MediaType.DOCKER_MANIFEST,
    MediaType.DOCKER_SCHEMA1_SIGNED, MediaType.DOCKER_SCHEMA1,
])


class BlobPush(enum.StrEnum):
    """What push_blob had to do."""

    EXISTS = "exists"  # the registry already had the blob (HEAD)
    MOUNTED = "mounted"  # cross-repository mount
    UPLOADED = "uploaded"


class ManifestResponse(NamedTuple):
    """A fetched manifest: the exact bytes, the media type, and the verified digest."""

    data: bytes
    media_type: MediaType | str  # a str only for types the converter does not know
    digest: Digest


@dataclass(frozen=True, slots=True)
class _Call:
    """One logical request; ``_open`` may send it several times (redirects, 401, retries)."""

    what: str  # "pushing blob sha256:… to host/repo": the prefix of every error message
    registry: str  # API host[:port] whose credentials apply
    scopes: Scopes
    method: str
    url: httpx.URL
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Callable[[], bytes | Iterator[bytes]] | None = None  # called once per send
    follow_redirects: bool = False
    allow: frozenset[int] = frozenset()  # error statuses handed back instead of raised


class RegistryClient:
    """Talks to OCI distribution registries. Create one per process and share it.

    ``plain_http`` lists ``host[:port]`` registries spoken to without TLS. Loopback registries
    (localhost, 127.0.0.0/8, ::1) are too, unless ``loopback_plain_http`` is False (a local
    registry with TLS); no other host ever is. ``ca_bundle`` adds trusted CAs to the system's.
    ``transport`` replaces the network (tests use httpx.MockTransport).
    """

    def __init__(
        self,
        *,
        credentials: CredentialProvider | None = None,
        plain_http: Iterable[str] = (),
        loopback_plain_http: bool = True,
        ca_bundle: str | os.PathLike[str] | None = None,
        verify_tls: bool = True,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 16,
        user_agent: str = f"erofs-converter/{__version__}",
    ) -> None:
        self._plain_http = frozenset(h.lower() for h in plain_http)
        self._loopback_plain_http = loopback_plain_http
        self._retry = retry
        verify: ssl.SSLContext | bool = False
        if verify_tls:
            # The system trust store (as skopeo and Docker use), plus a private CA if given.
            verify = ssl.create_default_context()
            if ca_bundle is not None:
                verify.load_verify_locations(cafile=os.fspath(ca_bundle))
        else:
            log.warning("registry_tls_verification_disabled")
        self._http = httpx.Client(
            transport=transport,
            verify=verify,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,  # followed by hand: see _send
            headers={"User-Agent": user_agent},
        )
        if transport is None and not _make_cancellable(self._http):
            log.debug("registry_cancellation_unavailable",
                      reason="httpx/httpcore internals changed: a cancelled, blocked read ends at its timeout")
        self._auth = Authenticator(
            self._http, credentials=credentials, retry=retry, plain_http_allowed=self.plain_http_allowed
        )

    def __repr__(self) -> str:
        return f"RegistryClient(plain_http={sorted(self._plain_http)!r}, {self._auth!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def plain_http_allowed(self, registry: str) -> bool:
        """True if ``host[:port]`` may be spoken to without TLS (a loopback host or a listed one)."""
        name = registry.lower()
        return is_loopback(name) or name in self._plain_http or split_host(name) in self._plain_http

    def _uses_plain_http(self, registry: str) -> bool:
        name = registry.lower()
        if name in self._plain_http or split_host(name) in self._plain_http:
            return True
        return self._loopback_plain_http and is_loopback(name)

    # --- public API ---------------------------------------------------------------------------

    def ping(self, registry: str) -> None:
        """Check that ``registry`` speaks the v2 API and that our credentials (if any) work."""
        host = api_host(registry)
        call = _Call(f"checking registry {host}", host, frozenset(), "GET", self._url(host, "/v2/"))
        self._fetch(call, limit=_ERROR_BODY_LIMIT)

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
        call = _Call(
            what, host, frozenset({pull_scope(ref.repository)}), "GET",
            self._url(host, f"/v2/{ref.repository}/manifests/{ref.manifest_reference}"),
            headers={"Accept": MANIFEST_ACCEPT}, follow_redirects=True,
        )
        response, data = self._fetch(call, limit=max_size)
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
        return self._head_blob(what, host, repository, digest, frozenset({pull_scope(repository)}))

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
        call = _Call(
            f"fetching blob {digest} from {host}/{repository}", host,
            frozenset({pull_scope(repository)}), "GET",
            self._url(host, f"/v2/{repository}/blobs/{digest}"),
            # Blobs are stored compressed already; ask for the bytes exactly as stored so the
            # digest matches even if a storage backend mislabels them with Content-Encoding.
            headers={"Accept-Encoding": "identity"}, follow_redirects=True,
        )
        response = self._open(call)

        def reopen(offset: int) -> httpx.Response:
            ranged = replace(call, headers={**call.headers, "Range": f"bytes={offset}-"})
            return self._open(ranged, retry=False)

        stream = _BlobStream(call.what, digest, response, reopen=reopen, policy=self._retry, size=size)
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
        call = _Call(
            f"fetching bytes {start}-{end - 1} of blob {digest} from {host}/{repository}", host,
            frozenset({pull_scope(repository)}), "GET", self._url(host, f"/v2/{repository}/blobs/{digest}"),
            headers={"Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}, follow_redirects=True,
        )
        response = self._open(call)
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
        session = self._start_upload(what, host, repository, scopes, mount=(digest, from_repository))
        if session.mounted:
            return True
        # 202: the registry could not mount (no such blob there, or no pull access to the source)
        # and opened an upload session instead, which we do not need.
        self._cancel_upload(what, host, scopes, session.location)
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
            upload = _Upload(self, what, host, repository, digest, size, stream, frozenset(scopes),
                             chunk_size, mount_from)
            outcome = run_with_retry(upload.attempt, policy=self._retry, what=what,
                                     should_retry=upload.should_retry)
        log.debug("registry_blob_pushed", what=what, outcome=str(outcome), size=size)
        return outcome

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
        call = _Call(
            what, host, frozenset({push_scope(repository)}), "PUT",
            self._url(host, f"/v2/{repository}/manifests/{ref.manifest_reference}"),
            headers={"Content-Type": media_type}, body=lambda: data,
        )
        response, _ = self._fetch(call, limit=_ERROR_BODY_LIMIT)
        _check_reported_digest(call, response, digest)
        log.debug("registry_manifest_pushed", ref=str(ref), digest=str(digest), media_type=media_type)
        return digest

    def list_tags(self, registry: str, repository: str, *, page_size: int | None = None) -> list[str]:
        """All tags of a repository, following ``Link: <…>; rel="next"`` pages (spec: listing tags)."""
        host = api_host(registry)
        _reference(registry, repository, "latest")
        what = f"listing tags of {host}/{repository}"
        params = {"n": str(page_size)} if page_size is not None else None
        url: httpx.URL | None = self._url(host, f"/v2/{repository}/tags/list", params)
        tags: list[str] = []
        seen: set[str] = set()
        while url is not None:
            if str(url) in seen or len(seen) >= _MAX_TAG_PAGES:
                raise RegistryError(f"{what}: the registry's pagination does not end", url=redact_url(url))
            seen.add(str(url))
            call = _Call(what, host, frozenset({pull_scope(repository)}), "GET", url, follow_redirects=True)
            response, body = self._fetch(call, limit=_TAGS_BODY_LIMIT)
            tags.extend(_parse_tags(call, body))
            url = self._next_page(call, response)
        return tags

    # --- uploads -------------------------------------------------------------------------------

    def _head_blob(self, what: str, host: str, repository: str, digest: Digest, scopes: Scopes,
                   *, retry: bool = True) -> int | None:
        call = _Call(what, host, scopes, "HEAD", self._url(host, f"/v2/{repository}/blobs/{digest}"),
                     follow_redirects=True, allow=frozenset({404}))
        response = self._open(call, retry=retry)
        response.close()
        if response.status_code == 404:
            return None
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else -1

    def _start_upload(self, what: str, host: str, repository: str, scopes: Scopes, *,
                      mount: tuple[Digest, str] | None = None, retry: bool = True) -> _Session:
        """POST …/blobs/uploads/ (spec: "pushing blobs", "mounting a blob from another repository")."""
        params = {"mount": str(mount[0]), "from": mount[1]} if mount else None
        call = _Call(what, host, scopes, "POST", self._url(host, f"/v2/{repository}/blobs/uploads/", params),
                     headers={"Content-Length": "0"}, body=lambda: b"")
        response, _ = self._fetch(call, limit=_ERROR_BODY_LIMIT, retry=retry)
        if response.status_code == 201 and mount:
            return _Session(location=None, mounted=True)
        if response.status_code != 202:
            raise RegistryError(f"{what}: unexpected status {response.status_code} opening an upload",
                                status=response.status_code, method="POST", url=redact_url(call.url))
        # OCI-Chunk-Min-Length (spec 1.1): PATCH chunks except the last must be at least this big.
        min_chunk = response.headers.get("OCI-Chunk-Min-Length", "")
        return _Session(location=self._location(call, response), mounted=False,
                        min_chunk=int(min_chunk) if min_chunk.isdigit() else 0)

    def _cancel_upload(self, what: str, host: str, scopes: Scopes, location: httpx.URL | None) -> None:
        """Best effort: DELETE an upload session we abandon (the registry would purge it later)."""
        if location is None:
            return
        call = _Call(what, host, scopes, "DELETE", location)
        try:
            self._open(call, retry=False).close()
        except RegistryError as exc:
            log.debug("registry_upload_cancel_failed", what=what, error=str(exc))

    def _location(self, call: _Call, response: httpx.Response) -> httpx.URL:
        """The upload URL from a Location header; relative ones resolve against the request."""
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{call.what}: the registry sent no Location for the upload",
                                status=response.status_code, method=call.method, url=redact_url(call.url))
        target = response.request.url.join(location)
        self._check_scheme(call, response.request.url, target)
        return target

    # --- request plumbing ----------------------------------------------------------------------

    def _url(self, host: str, path: str, params: Mapping[str, str] | None = None) -> httpx.URL:
        scheme = "http" if self._uses_plain_http(host) else "https"
        url = httpx.URL(f"{scheme}://{host}{path}")
        return url.copy_merge_params(params) if params else url

    def _fetch(self, call: _Call, *, limit: int, retry: bool = True) -> tuple[httpx.Response, bytes]:
        """Send and read the whole body (at most ``limit`` bytes), retrying transient failures."""

        def attempt() -> tuple[httpx.Response, bytes]:
            response = self._attempt(call)
            try:
                return response, _read_limited(call, response, limit)
            finally:
                response.close()

        return run_with_retry(attempt, policy=self._retry if retry else NO_RETRY, what=call.what)

    def _open(self, call: _Call, *, retry: bool = True) -> httpx.Response:
        """Send and return the streaming response (the caller closes it)."""
        return run_with_retry(lambda: self._attempt(call), policy=self._retry if retry else NO_RETRY,
                              what=call.what)

    def _attempt(self, call: _Call) -> httpx.Response:
        """One try: authenticate, send, answer one 401 challenge, turn error statuses into errors."""
        authorization = self._auth.authorization(call.registry, call.scopes)
        response = self._send(call, authorization)
        if response.status_code == 401 and self._is_registry_origin(call.registry, response.request.url):
            # A token may have expired mid-job, or this is the first request (no challenge known):
            # either way the Authenticator picks a fresh header for exactly these scopes.
            try:
                retry_with, reason = self._auth.on_unauthorized(
                    call.registry, call.scopes, response.headers.get("WWW-Authenticate"), rejected=authorization
                )
            except BaseException:
                response.close()
                raise
            if retry_with is None:
                raise self._status_error(call, response, hint=reason)
            response.close()
            response = self._send(call, retry_with)
            if response.status_code == 401:
                refused = ("the registry refused our credentials" if self._auth.credentials_for(call.registry)
                           else f"anonymous access was refused: no credentials for {call.registry}")
                raise self._status_error(call, response, hint=refused)
        if response.status_code >= 400 and response.status_code not in call.allow:
            raise self._status_error(call, response)
        return response

    def _send(self, call: _Call, authorization: str | None) -> httpx.Response:
        """Send, following GET/HEAD redirects by hand so that no credential leaves the registry."""
        url = call.url
        for _ in range(_MAX_REDIRECTS + 1):
            headers = dict(call.headers)
            # Authorization goes to the registry's own origin only: never to a storage backend
            # a blob redirects to (S3 would reject it anyway), nor to any other host.
            if authorization is not None and self._is_registry_origin(call.registry, url):
                headers["Authorization"] = authorization
            content = call.body() if call.body is not None else None
            request = self._http.build_request(call.method, url, headers=headers, content=content)
            try:
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _transport_error(call, url, exc) from exc
            log.debug("registry_http", method=call.method, url=redact_url(url), status=response.status_code)
            if not (call.follow_redirects and response.status_code in _REDIRECT_STATUSES):
                return response
            response.close()
            location = response.headers.get("Location")
            if not location:
                raise RegistryError(f"{call.what}: {response.status_code} redirect without a Location",
                                    status=response.status_code, method=call.method, url=redact_url(url))
            target = url.join(location)
            self._check_scheme(call, url, target)
            url = target
        raise RegistryError(f"{call.what}: more than {_MAX_REDIRECTS} redirects", method=call.method,
                            url=redact_url(call.url))

    def _check_scheme(self, call: _Call, current: httpx.URL, target: httpx.URL) -> None:
        """Refuse a redirect or Location that would leave TLS (https→http) or use another scheme."""
        if target.scheme == "https":
            return
        plain_ok = current.scheme == "http" and self.plain_http_allowed(host_port(target))
        if target.scheme == "http" and plain_ok:
            return
        raise RegistryError(f"{call.what}: refusing to follow {redact_url(current)} to {redact_url(target)}: "
                            "it would leave HTTPS", method=call.method, url=redact_url(current))

    def _is_registry_origin(self, registry: str, url: httpx.URL) -> bool:
        base = self._url(registry, "/")
        return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)

    def _status_error(self, call: _Call, response: httpx.Response, *, hint: str = "") -> RegistryError:
        """The exception for an error status, with the registry's error code and message."""
        status = response.status_code
        code, message = ("", "") if call.method == "HEAD" else _error_details(response)
        response.close()
        text = f"{call.what}: {status} {code or response.reason_phrase}"
        if message:
            text += f": {message}"
        if hint:
            text += f" ({hint})"
        url = redact_url(response.request.url)
        if status in (401, 403):
            return AuthError(text, status=status, code=code, method=call.method, url=url)
        if status == 404:
            return NotFound(text, status=status, code=code, method=call.method, url=url)
        if status in TRANSIENT_STATUSES:
            return TemporaryRegistryError(text, status=status, code=code, method=call.method, url=url,
                                          retry_after=parse_retry_after(response.headers.get("Retry-After")))
        return RegistryError(text, status=status, code=code, method=call.method, url=url)

    def _next_page(self, call: _Call, response: httpx.Response) -> httpx.URL | None:
        """The ``rel="next"`` target of a Link header (RFC 8288), which must stay on the registry."""
        for target, params in _LINK_RE.findall(response.headers.get("Link", "")):
            if re.search(r'rel\s*=\s*"?next"?', params):
                url = response.request.url.join(target.strip())
                if not self._is_registry_origin(call.registry, url):
                    raise RegistryError(f"{call.what}: the next page is on another host", url=redact_url(url))
                return url
        return None


_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;[^,;]*)*)")


@dataclass(frozen=True, slots=True)
class _Session:
    location: httpx.URL | None
    mounted: bool
    min_chunk: int = 0


class _Upload:
    """One push_blob: each attempt checks the registry, opens a session and uploads from the start."""

    def __init__(self, client: RegistryClient, what: str, host: str, repository: str, digest: Digest,
                 size: int, stream: BinaryIO, scopes: Scopes, chunk_size: int | None,
                 mount_from: str | None) -> None:
        self.client, self.what, self.host, self.repository = client, what, host, repository
        self.digest, self.size, self.stream, self.scopes = digest, size, stream, scopes
        self.chunk_size, self.mount_from = chunk_size, mount_from
        self.seekable = stream.seekable()
        self.start = stream.tell() if self.seekable else 0
        self.consumed = False

    def should_retry(self, exc: BaseException) -> bool:
        # A stream we cannot rewind can only be retried if no byte of it was sent.
        return is_transient(exc) and (self.seekable or not self.consumed)

    def attempt(self) -> BlobPush:
        client = self.client
        # HEAD first: layers shared between images are usually there already (spec: "checking
        # if content exists"). Single tries inside: the whole attempt is the unit of retry.
        if client._head_blob(self.what, self.host, self.repository, self.digest, self.scopes,
                             retry=False) is not None:
            return BlobPush.EXISTS
        mount = (self.digest, self.mount_from) if self.mount_from else None
        session = client._start_upload(self.what, self.host, self.repository, self.scopes, mount=mount,
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
            client._cancel_upload(self.what, self.host, self.scopes, session.location)
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

        call = _Call(self.what, self.host, self.scopes, "PUT",
                     location.copy_merge_params({"digest": str(self.digest)}),
                     # An explicit length makes httpx send Content-Length instead of chunked
                     # transfer encoding, which some registries refuse for blob uploads.
                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(self.size)},
                     body=body)
        response, _ = self.client._fetch(call, limit=_ERROR_BODY_LIMIT, retry=False)
        _check_reported_digest(call, response, self.digest)

    def _put_chunked(self, location: httpx.URL, chunk: int) -> None:
        """PATCH chunks with Content-Range, then PUT ?digest= (spec: "pushing a blob in chunks")."""
        self._rewind()
        offset = 0
        while offset < self.size:
            count = min(chunk, self.size - offset)
            data = b"".join(self._read_exact(count))
            call = _Call(self.what, self.host, self.scopes, "PATCH", location,
                         headers={"Content-Type": "application/octet-stream", "Content-Length": str(count),
                                  # No "bytes=" prefix: the spec's (and distribution's) format.
                                  "Content-Range": f"{offset}-{offset + count - 1}"},
                         body=_constant(data))
            response, _ = self.client._fetch(call, limit=_ERROR_BODY_LIMIT, retry=False)
            location = self.client._location(call, response)
            _check_upload_range(call, response, offset + count)
            offset += count
        call = _Call(self.what, self.host, self.scopes, "PUT",
                     location.copy_merge_params({"digest": str(self.digest)}),
                     headers={"Content-Length": "0"}, body=lambda: b"")
        response, _ = self.client._fetch(call, limit=_ERROR_BODY_LIMIT, retry=False)
        _check_reported_digest(call, response, self.digest)


class BlobReader(io.BufferedReader):
    """A blob download as a buffered binary file: read it to EOF, then size and digest are verified.

    A size mismatch raises RegistryError and a digest mismatch ``DigestMismatch`` (temporary
    while the client's retry policy allows another download) from the read that reaches the
    end. If the connection drops
    mid-body the download continues from the current offset with a ``Range`` request; a server
    that ignores Range sends everything again and the bytes already delivered are skipped.
    Not thread-safe: one reader per consumer. Close it (``with``) to release the connection.
    """

    def __init__(self, stream: _BlobStream) -> None:
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


class _BlobStream(io.RawIOBase):
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


class _CancellableStream(httpcore.NetworkStream):
    """A connection whose blocking reads and writes the calling thread's ``CancelScope`` can end.

    While a read or write blocks, the scope holds a callback that shuts the socket down; a
    ``recv``/``send`` blocked in another thread returns at once (closing the socket would not
    wake it), and the operation raises ``RequestCancelled`` instead of a network error that
    would be retried. httpcore then closes the connection, as after any failed read.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._guarded(lambda: self._inner.read(max_bytes, timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._guarded(lambda: self._inner.write(buffer, timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _CancellableStream(self._guarded(lambda: self._inner.start_tls(ssl_context, server_hostname,
                                                                              timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def _guarded(self, operation: Callable[[], T]) -> T:
        scope = current_scope()
        if scope is None:
            return operation()
        sock = self._inner.get_extra_info("socket")
        try:
            with scope.blocking(lambda: _shutdown(sock), "registry connection", RequestCancelled):
                result = operation()
        except Exception as exc:
            if scope.cancelled and not isinstance(exc, RequestCancelled):
                raise RequestCancelled("registry connection: cancelled") from exc
            raise
        # A socket shut down mid-read reads as a clean EOF: do not hand that to httpcore as data.
        scope.check("registry connection", RequestCancelled)
        return result


def _shutdown(sock: object) -> None:
    """Shut ``sock`` down in both directions, waking any thread blocked on it.

    The plain ``socket.socket`` method, also for an ``SSLSocket`` (whose override would drop
    the TLS object under the thread using it); closing is left to the socket's owner.
    """
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _CancellableBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every connection wrapped in ``_CancellableStream``.

    Connecting itself is not interruptible (there is no socket to shut down until it is
    connected); it is bounded by the short connect timeout.
    """

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        check_cancelled("registry connection")
        return _CancellableStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        check_cancelled("registry connection")
        return _CancellableStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _make_cancellable(http: httpx.Client) -> bool:
    """Put ``_CancellableBackend`` under every connection pool of ``http``; False if one was missed.

    httpx has no public way to choose httpcore's network backend, so this reaches into its
    transports (the direct one and those it mounted for proxies from the environment) and
    their pools' ``_network_backend``, which httpcore reads whenever it opens a connection.
    Everything is checked first: if a future httpx or httpcore moves these, requests work as
    before and only prompt cancellation is lost (tests/pipeline/test_cancel.py notices).
    """
    transports = [getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()]
    complete = True
    for transport in transports:
        if transport is None:  # a mount of None: no proxy for those URLs
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not isinstance(backend, httpcore.NetworkBackend):
            complete = False
        elif not isinstance(backend, _CancellableBackend):
            pool._network_backend = _CancellableBackend(backend)
    return complete


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


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


def _read_limited(call: _Call, response: httpx.Response, limit: int) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise RegistryError(f"{call.what}: the answer is {length} bytes, more than the limit of {limit}",
                            method=call.method, url=redact_url(response.request.url))
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > limit:
                raise RegistryError(f"{call.what}: the answer is more than the limit of {limit} bytes",
                                    method=call.method, url=redact_url(response.request.url))
            parts.append(chunk)
    except httpx.HTTPError as exc:
        raise _transport_error(call, response.request.url, exc) from exc
    return b"".join(parts)


def _error_details(response: httpx.Response) -> tuple[str, str]:
    """(code, message) from the spec's ``{"errors": [{"code", "message", "detail"}]}`` body."""
    try:
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        return "", ""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        # Plain-text bodies (proxies, S3 XML/HTML are skipped) may still say something useful.
        return "", (scrub(text, 200) if text and not text.startswith("<") else "")
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return "", ""
    codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code")]
    messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    return scrub(",".join(codes), 100), scrub("; ".join(messages))


def _transport_error(call: _Call, url: httpx.URL, exc: httpx.HTTPError) -> RegistryError:
    """Convert an httpx failure; connection and timeout problems are transient, TLS failures not."""
    detail = scrub(str(exc)) or type(exc).__name__
    kinds: dict[type[httpx.HTTPError], str] = {
        httpx.ConnectError: "cannot connect",
        httpx.ConnectTimeout: "timed out connecting",
        httpx.ReadTimeout: "timed out reading",
        httpx.WriteTimeout: "timed out writing",
        httpx.PoolTimeout: "timed out waiting for a connection",
        httpx.ReadError: "connection lost",
        httpx.WriteError: "connection lost",
        httpx.RemoteProtocolError: "connection lost",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    message = f"{call.what}: {kind}: {detail}"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return RegistryError(f"{call.what}: TLS certificate verification failed: {scrub(str(cause))}",
                                 method=call.method, url=redact_url(url))
        cause = cause.__cause__ or cause.__context__
    if is_transient(exc):
        return TemporaryRegistryError(message, method=call.method, url=redact_url(url))
    return RegistryError(message, method=call.method, url=redact_url(url))


def _manifest_media_type(content_type: str | None, data: bytes) -> MediaType | str:
    """The media type from Content-Type, or from the document when the registry sends a generic one."""
    media_type = parse_media_type((content_type or "").lower())
    if media_type not in ("", "application/json", "text/plain", "application/octet-stream"):
        return media_type
    try:
        document = json.loads(data)
    except ValueError:
        return media_type
    if isinstance(document, dict):
        declared = document.get("mediaType")
        if isinstance(declared, str) and declared:
            return parse_media_type(declared)
        if document.get("schemaVersion") == 1:
            return MediaType.DOCKER_SCHEMA1_SIGNED if "signatures" in document else MediaType.DOCKER_SCHEMA1
    return media_type


def _verify_manifest_digest(call: _Call, response: httpx.Response, data: bytes,
                            expected: Digest | None) -> Digest:
    """Check the bytes against the requested digest and the Docker-Content-Digest header."""
    if expected is not None:
        actual = Digest.from_bytes(data, expected.algorithm)
        if actual != expected:
            raise RegistryError(f"{call.what}: the registry sent content with digest {actual}",
                                method=call.method, url=redact_url(response.request.url))
    _check_reported_digest(call, response, None, data=data)
    return expected if expected is not None else Digest.from_bytes(data)


def _check_reported_digest(call: _Call, response: httpx.Response, digest: Digest | None, *,
                           data: bytes | None = None) -> None:
    """Docker-Content-Digest (optional in the spec) must match what we sent or received."""
    header = response.headers.get("Docker-Content-Digest")
    if not header:
        return
    url = redact_url(response.request.url)
    try:
        claimed = Digest.parse(header.strip())
    except InvalidReference:
        raise RegistryError(f"{call.what}: malformed Docker-Content-Digest header", method=call.method,
                            url=url) from None
    if data is not None:
        actual = Digest.from_bytes(data, claimed.algorithm)
        if actual != claimed:
            raise RegistryError(f"{call.what}: Docker-Content-Digest says {claimed}, the content is {actual}",
                                method=call.method, url=url)
    elif digest is not None and claimed.algorithm == digest.algorithm and claimed != digest:
        raise RegistryError(f"{call.what}: the registry stored it as {claimed}", method=call.method, url=url)


def _check_upload_range(call: _Call, response: httpx.Response, expected_end: int) -> None:
    """After a PATCH the Range header ("0-N", inclusive) says how much the registry holds."""
    value = response.headers.get("Range")
    match = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", value or "")
    if match and int(match.group(1)) + 1 != expected_end:
        held = int(match.group(1)) + 1
        raise TemporaryRegistryError(
            f"{call.what}: the registry holds {held} bytes after a chunk, expected {expected_end}",
            method=call.method, url=redact_url(response.request.url))


def _parse_tags(call: _Call, body: bytes) -> list[str]:
    try:
        data = json.loads(body)
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
