"""A registry repository as an ``ImageSource`` / ``ImageSink``, over ``RegistryClient``.

Design (and the registry race the per-digest locks avoid): docs/architecture.md §5.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import structlog

from converter.errors import AuthError, ImageError, RegistryError
from converter.oci.mediatypes import MediaType
from converter.oci.model import MAX_MANIFEST_SIZE, Descriptor
from converter.oci.referrers import referrer_entry
from converter.reference import Digest, Reference
from converter.registry.retry import RetryPolicy, run_with_retry
from converter.transports.base import BlobOrigin, BlobUpload
from converter.transports.referrers import add_referrer

if TYPE_CHECKING:
    from converter.registry.client import RegistryClient
    from converter.registry.streamed import StreamedUpload


log = structlog.get_logger()
T = TypeVar("T")
# The link file is whole again within milliseconds: two more tries, about 0.2-0.4 s and 0.4-0.8 s later.
BLOB_UNKNOWN_RETRY = RetryPolicy(attempts=3, base_delay=0.4, max_delay=1.0, budget=10.0)


def retry_blob_unknown(put: Callable[[], T], *, what: str, policy: RetryPolicy = BLOB_UNKNOWN_RETRY) -> T:
    """``put()`` (a manifest PUT), tried again under ``policy`` (backoff, cancellation) while the
    registry answers MANIFEST_BLOB_UNKNOWN; any other error, or the last one, propagates.
    (``put`` retries transient failures itself.)"""
    return run_with_retry(put, policy=policy, what=what, should_retry=_blob_unknown)


def _blob_unknown(exc: BaseException) -> bool:
    return isinstance(exc, RegistryError) and "MANIFEST_BLOB_UNKNOWN" in exc.code


class BlobLocks:
    """One lock per (registry, repository, digest); share one instance between sinks that may
    push the same blobs at once (the images of a mirror run)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, Digest], threading.Lock] = {}

    def __call__(self, registry: str, repository: str, digest: Digest) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((registry, repository, digest), threading.Lock())


class _Repo:
    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def origin(self) -> BlobOrigin | None:
        return BlobOrigin(self.ref.registry, self.ref.repository)


class RegistrySource(_Repo):
    """Reads manifests and blobs of one registry repository.

    The manifest its reference names is fetched once and then remembered: every reader in one
    run (the already-converted check, the conversion) sees the same image even if the tag moves,
    and asks the registry once."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        super().__init__(client, ref)
        self._named: tuple[bytes, str, Digest] | None = None

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        if reference is None and self._named is not None:
            return self._named
        ref = self.ref.manifest_reference if reference is None else reference
        data, media_type, digest = self.client.get_manifest(self.ref.registry, self.ref.repository, ref)
        if len(data) > MAX_MANIFEST_SIZE:
            raise ImageError(f"reading manifest {self.ref.name}@{digest}: {len(data)} bytes is more than "
                             f"the {MAX_MANIFEST_SIZE} byte limit")
        if reference is None:
            self._named = (data, str(media_type), digest)
        return data, str(media_type), digest

    def open_blob(self, digest: Digest, *, size: int | None = None) -> AbstractContextManager[BinaryIO]:
        return self.client.open_blob(self.ref.registry, self.ref.repository, digest, size=size)

    def get_blob_bytes(self, digest: Digest, *, max_size: int) -> bytes:
        return self.client.get_blob_bytes(self.ref.registry, self.ref.repository, digest, max_size=max_size)


class RegistrySink(_Repo):
    """Writes blobs and manifests into one registry repository (see the module docstring for
    the per-digest locks and the MANIFEST_BLOB_UNKNOWN retry)."""

    def __init__(self, client: RegistryClient, ref: Reference, locks: BlobLocks | None = None) -> None:
        super().__init__(client, ref)
        self._locks = locks if locks is not None else BlobLocks()

    def _lock(self, digest: Digest) -> threading.Lock:
        return self._locks(self.ref.registry, self.ref.repository, digest)

    def has_blob(self, digest: Digest) -> bool:
        return self.client.blob_exists(self.ref.registry, self.ref.repository, digest) is not None

    def mount_blob(self, digest: Digest, origin: BlobOrigin) -> bool:
        if origin.registry != self.ref.registry:
            return False
        if origin.repository == self.ref.repository:
            return self.has_blob(digest)
        with self._lock(digest):
            return self.has_blob(digest) or self.client.mount_blob(self.ref.registry, self.ref.repository, digest,
                                                                   origin.repository)

    def push_blob(self, path: Path, digest: Digest, size: int) -> None:
        with self._lock(digest):  # a concurrent pusher of the same blob may have finished meanwhile
            self.client.push_blob(self.ref.registry, self.ref.repository, digest, size, path)

    def streamed_upload(self) -> BlobUpload:
        return _LockedUpload(self.client.streamed_upload(self.ref.registry, self.ref.repository), self._lock)

    def put_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        reference = tag if tag is not None else str(Digest.from_bytes(data))
        return retry_blob_unknown(
            lambda: self.client.put_manifest(self.ref.registry, self.ref.repository, reference, data, media_type),
            what=f"pushing manifest {self.ref.name}:{reference}")

    def index_referrer(self, subject: Descriptor, data: bytes, media_type: str) -> None:
        def put(tag: str, index: bytes) -> None:
            # A racing writer pushing the same converted manifest rewrites its link file.
            self.put_manifest(index, MediaType.OCI_INDEX.value, tag)

        kept = add_referrer(self.client, self.ref.registry, self.ref.repository, subject.digest,
                            referrer_entry(data, media_type), locks=self._locks, put=put)
        log.debug("referrer_listed", subject=str(subject.digest), referrer=str(Digest.from_bytes(data)),
                  by=kept.value, repository=self.ref.name)


# A digest no repository holds: asking to mount it opens an upload session (push access needed),
# which the client cancels at once, as go-containerregistry's remote.CheckPushPermission does.
_PROBE = Digest.from_bytes(b"erofs-converter: may we push here?")


def check_push_access(client: RegistryClient, dest: Reference) -> None:
    """Fail now, before anything is pulled, if ``dest`` is unreachable or refuses us a push
    (401/403, or 405 from a read-only registry). Any other answer to the probe (a registry that
    handles a mount of an unknown blob its own way) is no proof either way: the push will tell."""
    try:
        client.mount_blob(dest.registry, dest.repository, _PROBE, dest.repository)
    except RegistryError as exc:
        if exc.status is not None and not isinstance(exc, AuthError) and exc.status != 405:
            log.debug("push_access_unknown", dest=dest.name, error=str(exc))
            return
        kind = AuthError if isinstance(exc, AuthError) else RegistryError
        raise kind(f"checking push access to {dest.name} before converting: {exc}", status=exc.status,
                   code=exc.code, method=exc.method, url=exc.url) from exc


class _LockedUpload:
    """A ``StreamedUpload`` finished under the sink's per-digest lock, as ``push_blob`` is."""

    def __init__(self, upload: StreamedUpload, lock: Callable[[Digest], threading.Lock]) -> None:
        self._upload = upload
        self._lock = lock

    def send_first(self, first: bytes, fd: int, end: int) -> None:
        self._upload.send_first(first, fd, end)

    def send_more(self, fd: int, end: int) -> None:
        self._upload.send_more(fd, end)

    def finish(self, path: Path, digest: Digest, size: int) -> bool:
        with self._lock(digest):  # a concurrent pusher of the same blob may have finished meanwhile
            return self._upload.finish(path, digest, size)

    def cancel(self) -> None:
        self._upload.cancel()
