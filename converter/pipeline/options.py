"""Options and results of an image conversion, and the default destination rule.

Kept apart from the engine so the CLI and mirror jobs can build options and compute
destinations without importing the thread machinery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from converter import __version__
from converter.blob.encoding import BlobEncoding
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED, Builder
from converter.erofs.target import TargetFormat
from converter.errors import UsageError
from converter.oci.mediatypes import MediaType, Profile
from converter.oci.model import Platform
from converter.pipeline.progress import PushOutcome
from converter.reference import ArchiveKind, ArchiveRef, DaemonRef, Digest, Location, OciLayoutRef, Reference

_MAX_TAG = 128


#: Build processes are on by default from this many CPUs. Measured on 2 cores (README.md,
#: Performance; 3 alternating rounds of the bench image, registry to registry): raw 5.68 s in
#: one process against 6.18 s with 2 build processes (5.60 s with 4), erofs+lz4 7.33 s against
#: 6.92 s (6.69 s); the processes cost ~1 s more CPU (fork server, tree hand-over) and ~100 MB
#: more memory, which two cores do not win back.
PROCESSES_MIN_CPUS = 4


def default_jobs() -> int:
    """Layers converted at once by default: min(4, CPU count)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """How to convert an image.

    ``platforms`` filters index entries (empty: all); ``jobs`` 0 means ``default_jobs()``;
    ``workdir`` is where a private temporary directory is made (default: the system temp
    dir); ``prepass`` forces the metadata pre-pass on or off (None: on when it can help, see
    ``converter.pipeline.graph``); ``run_ahead`` bounds how many downloaded layers may wait for
    their build (0: twice ``jobs``). ``build_time`` is the EROFS build time (the CLI passes
    ``SOURCE_DATE_EPOCH``; libraries never read the environment). ``max_expanded`` and
    ``max_entries`` bound what one layer may cost, as ``LayerOptions`` does for ``convert
    layer`` (same defaults; None: unlimited): layers come from registries we do not control.
    ``processes`` builds each layer in a process of its own (``pipeline/buildproc.py``), so
    that builds of several layers use several cores (None: when more than one job runs on at
    least ``PROCESSES_MIN_CPUS`` CPUs).
    ``referrer`` makes the source manifest the ``subject`` of what is pushed and lists the
    conversion among the source's referrers (OCI 1.1); off, the output has no ``subject``.
    """

    fmt: TargetFormat = field(default_factory=TargetFormat)
    profile: Profile = Profile.SPEC
    platforms: tuple[Platform, ...] = ()
    merge_index: bool = False
    jobs: int = 0
    builder: Builder = Builder.AUTO
    workdir: Path | None = None
    build_time: int = 0
    prepass: bool | None = None
    run_ahead: int = 0
    tool_version: str = __version__
    max_expanded: int | None = DEFAULT_MAX_EXPANDED
    max_entries: int | None = DEFAULT_MAX_ENTRIES
    referrer: bool = True
    encoding: BlobEncoding = field(default_factory=BlobEncoding)
    processes: bool | None = None

    def resolved_jobs(self) -> int:
        if self.jobs < 0:
            raise UsageError(f"--jobs must be at least 1, got {self.jobs}")
        return self.jobs or default_jobs()

    def resolved_processes(self) -> bool:
        if self.processes is not None:
            return self.processes
        return self.resolved_jobs() > 1 and (os.cpu_count() or 1) >= PROCESSES_MIN_CPUS

    def check_limits(self) -> None:
        """Refuse negative layer limits before anything is fetched (not after a layer's download)."""
        for flag, limit in (("--max-expanded", self.max_expanded), ("--max-entries", self.max_entries)):
            if limit is not None and limit < 0:
                raise UsageError(f"{flag} must not be negative, got {limit}")


@dataclass(frozen=True, slots=True)
class LayerOutcome:
    """One converted layer: source and result digests/sizes, and how its blob got there."""

    index: int
    source_digest: Digest
    source_size: int
    digest: Digest
    size: int
    media_type: MediaType
    push: PushOutcome


@dataclass(frozen=True, slots=True)
class PlatformResult:
    """One converted image manifest."""

    platform: Platform
    source_manifest: Digest
    manifest: Digest
    manifest_size: int
    config: Digest
    layers: tuple[LayerOutcome, ...]


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What was pushed: the top-level manifest or index (``digest``, ``media_type``, ``size``),
    the tag it went under, the source's top-level digest, and each converted platform."""

    digest: Digest
    media_type: MediaType
    size: int
    tag: str
    source_digest: Digest
    platforms: tuple[PlatformResult, ...]
    dropped: tuple[tuple[Digest, str], ...] = ()


def resolve_encoding(encoding: BlobEncoding, profile: Profile) -> BlobEncoding:
    """``encoding`` as the profile can carry it, or a UsageError saying why not.

    The containerd profiles name no dm-verity annotations that containerd reads from a layer
    (its EROFS differ builds its own tree), so ``--verity`` is refused there; containerd 2.3
    reads a ``+zstd`` EROFS layer as a plain zstd stream, so it gets one frame and no chunk
    index (docs/blob-encoding.md); containerd 2.1 has no zstd-wrapped EROFS type at all.
    """
    if profile is Profile.SPEC:
        return encoding
    if encoding.verity:
        raise UsageError(f"--verity needs --media-type-profile spec: profile {profile.value} has no dm-verity "
                         "annotations a containerd release reads from a layer")
    if encoding.zstd and profile is Profile.CONTAINERD_21:
        raise UsageError("--blob-compression zstd needs profile spec or containerd-2.3: containerd-2.1 has "
                         "no zstd-wrapped EROFS layer type")
    if encoding.zstd and encoding.chunk_size:
        raise UsageError(f"--chunk-size needs --media-type-profile spec: profile {profile.value} layers "
                         "are one zstd frame without a chunk index")
    if encoding.zstd and encoding.chunk_size is None:
        return replace(encoding, chunk_size=0)
    return encoding


def tag_suffix(fmt: TargetFormat, encoding: BlobEncoding | None = None) -> str:
    """The tag-safe name of everything that decides the output bytes: ``erofs-lz4``,
    ``erofs.zstd``, ``erofs-lz4.zstd-level-9.verity`` (see ``BlobEncoding.tag_suffix``)."""
    return fmt.tag_suffix + (encoding.tag_suffix if encoding is not None else "")


def default_destination(src_ref: Location, fmt: TargetFormat, encoding: BlobEncoding | None = None) -> Location:
    """Same repository (or layout directory), tag ``<tag>-<tag_suffix(fmt, encoding)>``."""
    if isinstance(src_ref, ArchiveRef | DaemonRef):
        raise UsageError(f"a {str(src_ref).split(':', 1)[0]}: source needs --dest")
    tag = src_ref.tag
    if tag is None:
        what = "a digest-only source" if isinstance(src_ref, Reference) else "an oci: source without a tag"
        raise UsageError(f"{what} needs --dest")
    new_tag = f"{tag}-{tag_suffix(fmt, encoding)}"
    if len(new_tag) > _MAX_TAG:
        raise UsageError(f"the default destination tag {new_tag!r} is longer than {_MAX_TAG} characters; "
                         "give --dest")
    if isinstance(src_ref, Reference):
        return src_ref.with_tag(new_tag)
    return OciLayoutRef(src_ref.path, new_tag)


def destination_tag(dest_ref: Location) -> str:
    """The tag the result goes under (``latest`` for an untagged ``oci:`` directory).

    A registry destination pinned to a digest is refused: the digest of the result is only
    known after the conversion.
    """
    if isinstance(dest_ref, OciLayoutRef):
        return dest_ref.tag or "latest"
    if isinstance(dest_ref, ArchiveRef) and dest_ref.kind is ArchiveKind.OCI:
        return dest_ref.ref or "latest"
    if isinstance(dest_ref, ArchiveRef | DaemonRef):
        raise UsageError(f"destination {dest_ref}: Docker cannot load or run EROFS layers, so "
                         "docker-archive: and docker-daemon: are sources only (use oci:, oci-archive: or a registry)")
    if dest_ref.digest is not None or dest_ref.tag is None:
        raise UsageError(f"destination {dest_ref}: give a tag, not a digest (the result's digest is "
                         "only known after converting)")
    return dest_ref.tag
