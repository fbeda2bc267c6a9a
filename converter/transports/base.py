"""The two seams every image location implements: ``ImageSource`` (read) and ``ImageSink`` (write).

Why Protocols: the pipeline and mirror jobs talk only to these, so a registry, an OCI layout
directory or an in-memory fake for tests are interchangeable (containers/image's
``ImageSource``/``ImageDestination``, ggcr's ``remote``/``layout``). A transport instance is
bound to one repository (or one layout directory) when it is opened.

Call order for a sink (as in containers/image): blobs first (``has_blob`` → ``mount_blob`` →
``push_blob``), then manifests by digest, and last the manifest or index under its tag, so
nothing is tagged before everything it references is in place.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from converter.oci.model import Descriptor
from converter.reference import Digest


@dataclass(frozen=True, slots=True)
class BlobOrigin:
    """Where a source's blobs live, so a sink on the same registry can mount them cross-repo."""

    registry: str
    repository: str


@runtime_checkable
class ImageSource(Protocol):
    """Reads manifests and blobs of one repository or layout directory."""

    @property
    def name(self) -> str:
        """Where this source reads from, for messages (``ghcr.io/a/b``, ``oci:/dir``)."""
        ...

    @property
    def origin(self) -> BlobOrigin | None:
        """The registry repository holding the blobs, or None when cross-repo mounting is impossible."""
        ...

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        """A manifest or index: (raw bytes, media type, digest of the bytes).

        ``reference`` is a tag or a digest; None means the image this source was opened for
        (the reference's tag/digest, or a layout's tag or only entry). The bytes are at most
        ``converter.oci.model.MAX_MANIFEST_SIZE`` long, and match a requested digest.
        """
        ...

    def open_blob(self, digest: Digest, *, size: int | None = None) -> AbstractContextManager[BinaryIO]:
        """A stream of the blob's bytes; reading it to the end verifies the digest (and ``size``,
        the descriptor's, when given). A stream that has a bool ``verified`` (true once the end
        was read and matched: the registry's ``BlobReader``, the layouts' ``VerifiedStream``) is
        trusted by the layer graph's pull, which otherwise hashes the blob itself."""
        ...

    def get_blob_bytes(self, digest: Digest, *, max_size: int) -> bytes:
        """A small blob (a config) in memory, digest-verified, refused above ``max_size``."""
        ...


@runtime_checkable
class ImageSink(Protocol):
    """Writes blobs and manifests into one repository or layout directory."""

    @property
    def name(self) -> str:
        ...

    def has_blob(self, digest: Digest) -> bool:
        """Whether the blob is already there (then pushing it is skipped)."""
        ...

    def mount_blob(self, digest: Digest, origin: BlobOrigin) -> bool:
        """Try to make ``digest`` available by reference to ``origin`` (registry cross-repo
        mount); False when not possible, and the caller pushes the bytes instead."""
        ...

    def push_blob(self, path: Path, digest: Digest, size: int) -> None:
        """Store the file at ``path`` as blob ``digest`` of ``size`` bytes (verified)."""
        ...

    def put_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        """Store a manifest or index; under ``tag`` if given, else by digest only. Its digest."""
        ...


class BlobUpload(Protocol):
    """A blob upload that starts before the blob is complete (``StreamingSink``)."""

    def send_first(self, first: bytes, fd: int, end: int) -> None:
        """Send the blob's first ``end`` bytes: ``first``, then ``fd``'s bytes from ``len(first)``."""
        ...

    def send_more(self, fd: int, end: int) -> None:
        """Send ``fd``'s bytes from where the last part ended up to ``end``."""
        ...

    def finish(self, path: Path, digest: Digest, size: int) -> bool:
        """Send the rest from the complete file at ``path`` and store the blob (verified); False
        when the sink had it already (what was sent is then dropped)."""
        ...

    def cancel(self) -> None:
        """Drop what was sent (best effort)."""
        ...


@runtime_checkable
class StreamingSink(Protocol):
    """A sink that can take a blob's first part while the rest is still being written (a
    registry: the image pipeline sends a layer's data while its metadata is written)."""

    def streamed_upload(self) -> BlobUpload:
        ...


@runtime_checkable
class ReferrerSink(Protocol):
    """A sink where a manifest with a ``subject`` must also be added to the subject's referrers
    list by the client (a registry without the referrers API: the fallback tag)."""

    def index_referrer(self, subject: Descriptor, data: bytes, media_type: str) -> None:
        """List the pushed manifest ``data`` among ``subject``'s referrers."""
        ...
