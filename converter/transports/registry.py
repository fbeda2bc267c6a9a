"""A registry repository as an ``ImageSource`` / ``ImageSink``, over ``RegistryClient``.

Thin by design: authentication, retries, redirects, digest verification of streamed blobs and
error mapping all live in ``converter.registry``; this module only binds the client to one
``registry/repository`` and adapts the call shapes to the transport Protocols. Cross-repo
mounts are offered only within one registry (the distribution API cannot mount across
registries).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from converter.errors import ImageError
from converter.oci.model import MAX_MANIFEST_SIZE
from converter.reference import Digest, Reference
from converter.transports.base import BlobOrigin

if TYPE_CHECKING:
    from converter.registry.client import RegistryClient


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
    """Reads manifests and blobs of one registry repository."""

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        ref = self.ref.manifest_reference if reference is None else reference
        data, media_type, digest = self.client.get_manifest(self.ref.registry, self.ref.repository, ref)
        if len(data) > MAX_MANIFEST_SIZE:
            raise ImageError(f"reading manifest {self.ref.name}@{digest}: {len(data)} bytes is more than "
                             f"the {MAX_MANIFEST_SIZE} byte limit")
        return data, str(media_type), digest

    def open_blob(self, digest: Digest, *, size: int | None = None) -> AbstractContextManager[BinaryIO]:
        return self.client.open_blob(self.ref.registry, self.ref.repository, digest, size=size)

    def get_blob_bytes(self, digest: Digest, *, max_size: int) -> bytes:
        return self.client.get_blob_bytes(self.ref.registry, self.ref.repository, digest, max_size=max_size)


class RegistrySink(_Repo):
    """Writes blobs and manifests into one registry repository."""

    def has_blob(self, digest: Digest) -> bool:
        return self.client.blob_exists(self.ref.registry, self.ref.repository, digest) is not None

    def mount_blob(self, digest: Digest, origin: BlobOrigin) -> bool:
        if origin.registry != self.ref.registry:
            return False
        if origin.repository == self.ref.repository:
            return self.has_blob(digest)
        return self.client.mount_blob(self.ref.registry, self.ref.repository, digest, origin.repository)

    def push_blob(self, path: Path, digest: Digest, size: int) -> None:
        self.client.push_blob(self.ref.registry, self.ref.repository, digest, size, path)

    def put_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        reference = tag if tag is not None else str(Digest.from_bytes(data))
        return self.client.put_manifest(self.ref.registry, self.ref.repository, reference, data, media_type)
