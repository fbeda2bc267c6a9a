"""A job → a plan: which images to convert, which are already done, which this shard owns.

Why a separate step: a mirror job runs again and again (nightly, or as N pods of a Kubernetes
Indexed Job), so before converting anything it must know, per image, (1) the exact source
digest the tag points at now, (2) whether the destination already holds a conversion of that
digest made with the same options — then the image is *skipped*, which makes reruns cheap and
lets a failed pod simply run again — and (3) which shard converts it, so N workers split a
job without talking to each other.

Steps, all read-only against the registries:

1. **Expand** (every shard does the same, so all agree): single sources as written;
   repository sources through ``list_tags`` (the client follows ``Link`` pagination) and the
   entry's ``TagFilter``. Each source gets its destination from the ``dest`` template. Two
   work items with one destination are a job error (one would overwrite the other).
2. **Shard**: item ``i`` belongs to shard ``shard_of(source_key(i), N)``, a stable hash
   (SHA-256) of the source repository and tag, so every image is in exactly one shard,
   whatever the order of the job file or the machine.
3. **Resolve** (only this shard's items, a few at a time): GET the source manifest (its digest
   is what will be converted), then GET the destination tag. The image is skipped when the
   destination's provenance annotations (``converter.oci.rewrite.Provenance``) name the same
   source digest, format, profile and tool version, and — for an index — each EROFS platform
   manifest's provenance names one of the source manifests these options select, all of them,
   and the index is merged exactly when ``merge_index`` asks for it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import structlog

from converter import __version__
from converter.errors import ConverterError, NotFound, UsageError
from converter.mirror.jobs import ImageEntry, Job, Repository, Settings
from converter.oci.model import Index, Manifest, parse_image_manifest, parse_manifest
from converter.oci.rewrite import Provenance, is_erofs_entry, plan_index
from converter.reference import Digest, Reference
from converter.registry.client import RegistryClient

log = structlog.get_logger()

COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in the pods of an Indexed Job


# --- shards -----------------------------------------------------------------------------------


def source_key(source: Reference) -> str:
    """What decides an image's shard: ``registry/repository:tag`` (``@digest`` if untagged)."""
    if source.tag is not None:
        return f"{source.name}:{source.tag}"
    return f"{source.name}@{source.digest}"


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) owning ``key``: SHA-256, so stable across processes and machines
    (Python's ``hash`` is salted per process)."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """``--shard I/N``: this worker converts the images whose key hashes to ``index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: want I/N with 0 <= I < N")

    def owns(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, *, env: Mapping[str, str] | None = None) -> Shard:
    """``I/N``; ``/N`` takes I from ``$JOB_COMPLETION_INDEX`` (in ``env``), as Kubernetes sets it."""
    index_text, slash, count_text = text.partition("/")
    if not slash:
        raise UsageError(f"--shard {text!r}: want I/N, e.g. 0/4 (or /4 to read I from {COMPLETION_INDEX_ENV})")
    if not index_text:
        index_text = (env or {}).get(COMPLETION_INDEX_ENV, "")
        if not index_text:
            raise UsageError(f"--shard {text!r}: no index before '/' and {COMPLETION_INDEX_ENV} is not set")
    if not (index_text.isdigit() and count_text.isdigit()):
        raise UsageError(f"--shard {text!r}: want two whole numbers I/N, e.g. 0/4")
    return Shard(int(index_text), int(count_text))


# --- the plan ---------------------------------------------------------------------------------


class Status(enum.StrEnum):
    """What the plan says about an image (the report uses converted/skipped/failed)."""

    CONVERT = "convert"
    SKIP = "skip"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One source image and where its conversion goes."""

    entry: ImageEntry
    source: Reference
    dest: Reference

    @property
    def settings(self) -> Settings:
        return self.entry.settings

    @property
    def key(self) -> str:
        return source_key(self.source)


@dataclass(frozen=True, slots=True)
class PlannedImage:
    """A work item with its verdict. ``item`` is None only when the entry's tags could not be
    listed (then ``source`` is the repository and the status FAILED)."""

    entry: ImageEntry
    source: str
    dest: str
    status: Status
    item: WorkItem | None = None
    source_digest: Digest | None = None
    dest_digest: Digest | None = None  # the existing conversion, when skipped
    estimated_bytes: int | None = None  # source layer bytes to pull (dry runs)
    reason: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """This shard's images in job order; ``total`` counts the images of every shard."""

    job: Job
    shard: Shard | None
    images: tuple[PlannedImage, ...]
    total: int

    def with_status(self, status: Status) -> tuple[PlannedImage, ...]:
        return tuple(p for p in self.images if p.status is status)


# --- expanding --------------------------------------------------------------------------------


def _listing_failure(entry: ImageEntry, exc: ConverterError) -> PlannedImage:
    return PlannedImage(entry=entry, source=str(entry.repository), dest=entry.settings.dest.text,
                        status=Status.FAILED, reason="listing tags failed", error=str(exc))


def expand_job(job: Job, client: RegistryClient, *, page_size: int | None = None,
               ) -> tuple[list[WorkItem], list[PlannedImage]]:
    """Every work item of the job (tags listed and filtered), and entries whose listing failed.

    Raises JobFileError when two items share a destination.
    """
    listings: dict[Repository, list[str] | ConverterError] = {}
    items: list[WorkItem] = []
    failures: list[PlannedImage] = []
    for entry in job.images:
        if entry.ref is not None:
            sources = [entry.ref]
        else:
            assert entry.tags is not None
            listing = listings.get(entry.repository)
            if listing is None:
                try:
                    listing = client.list_tags(entry.repository.registry, entry.repository.repository,
                                               page_size=page_size)
                except ConverterError as exc:
                    listing = exc
                listings[entry.repository] = listing
            if isinstance(listing, ConverterError):
                failures.append(_listing_failure(entry, listing))
                continue
            chosen = entry.tags.select(listing)
            log.info("mirror_tags_selected", entry=entry.label, listed=len(listing), selected=len(chosen),
                     tags=chosen)
            sources = [entry.repository.with_tag(tag) for tag in chosen]
        for source in sources:
            items.append(WorkItem(entry=entry, source=source, dest=entry.settings.dest.render(
                source, entry.settings.fmt, entry.settings.encoding)))
    _check_collisions(items)
    return items, failures


def _check_collisions(items: Sequence[WorkItem]) -> None:
    seen: dict[str, WorkItem] = {}
    for item in items:
        key = f"{item.dest.name}:{item.dest.tag}"
        first = seen.setdefault(key, item)
        if first is not item:
            raise item.settings.dest.where.error(
                f"{item.dest} is the destination of both {first.source} ({first.entry.where.field}, line "
                f"{first.entry.where.line}) and {item.source} ({item.entry.where.field}); make dest tell them "
                "apart (e.g. with {tag} or {format})")


# --- resolving --------------------------------------------------------------------------------


def _selected_manifests(doc: Manifest | Index, digest: Digest, settings: Settings, image: str,
                        ) -> tuple[Digest, ...]:
    """The source manifests a conversion with ``settings`` converts (one for a single manifest)."""
    if isinstance(doc, Manifest):
        return (digest,)
    plan = plan_index(doc, platforms=settings.platforms, merge=settings.merge_index, image=image)
    return tuple(d.digest for d in plan.convert)


def _estimate(client: RegistryClient, source: Reference, doc: Manifest | Index,
              selected: Sequence[Digest]) -> int:
    if isinstance(doc, Manifest):
        return sum(layer.size for layer in doc.layers)
    total = 0
    for digest in selected:
        data, media_type, _ = client.get_manifest(source.registry, source.repository, digest)
        manifest = parse_image_manifest(data, str(media_type), digest=digest, what=f"manifest {source.name}@{digest}")
        total += sum(layer.size for layer in manifest.layers)
    return total


def _same_options(prov: Provenance, settings: Settings, tool_version: str) -> str:
    """Why an existing conversion's provenance differs from what we would make ("" if it does not)."""
    if prov.fmt != str(settings.fmt):
        return f"made as {prov.fmt}, want {settings.fmt}"
    if prov.profile is not settings.profile:
        return f"made with profile {prov.profile.value}, want {settings.profile.value}"
    if prov.encoding != settings.encoding.canonical():
        return f"made with blob encoding {prov.encoding}, want {settings.encoding.canonical()}"
    if prov.version != tool_version:
        return f"made by erofs-converter {prov.version}, this is {tool_version}"
    return ""


def existing_conversion(client: RegistryClient, dest: Reference, *, source_digest: Digest,
                        selected: Sequence[Digest], source_is_index: bool, settings: Settings,
                        tool_version: str = __version__) -> tuple[Digest | None, str]:
    """(digest of the destination, "") if it holds this very conversion, else (None, why not)."""
    try:
        data, media_type, digest = client.get_manifest(dest)
    except NotFound:
        return None, "not converted yet"
    what = f"manifest {dest}"
    doc = parse_manifest(data, str(media_type), digest=digest, what=what)
    prov = Provenance.from_annotations(doc.annotations)
    if prov is None:
        return None, "the destination was not made by erofs-converter"
    if prov.source_digest != source_digest:
        return None, f"the source changed (converted {prov.source_digest.short}, now {source_digest.short})"
    differs = _same_options(prov, settings, tool_version)
    if differs:
        return None, differs
    want_index = source_is_index or settings.merge_index
    if isinstance(doc, Manifest):
        return (digest, "") if not want_index else (None, "an index is wanted, the destination is a manifest")
    if not want_index:
        return None, "a manifest is wanted, the destination is an index"
    merged = any(not is_erofs_entry(entry) for entry in doc.manifests)
    if merged != settings.merge_index:
        return None, f"merge_index changed to {str(settings.merge_index).lower()}"
    converted: set[Digest] = set()
    for entry in doc.manifests:
        if not is_erofs_entry(entry):
            continue
        child_data, child_type, _ = client.get_manifest(dest.registry, dest.repository, entry.digest)
        child = parse_manifest(child_data, str(child_type), digest=entry.digest, what=f"{what}@{entry.digest}")
        child_prov = Provenance.from_annotations(child.annotations)
        if child_prov is None:
            return None, f"platform manifest {entry.digest.short} has no provenance"
        differs = _same_options(child_prov, settings, tool_version)
        if differs:
            return None, f"platform manifest {entry.digest.short} {differs}"
        converted.add(child_prov.source_digest)
    if converted != set(selected):
        return None, "the selected platforms changed"
    return digest, ""


def resolve_item(item: WorkItem, client: RegistryClient, *, estimate: bool = False,
                 tool_version: str = __version__) -> PlannedImage:
    """The verdict for one work item; registry and image errors make it FAILED, not raise."""
    base = PlannedImage(entry=item.entry, source=str(item.source), dest=str(item.dest), status=Status.FAILED,
                        item=item)
    source_digest: Digest | None = None
    try:
        data, media_type, source_digest = client.get_manifest(item.source)
        doc = parse_manifest(data, str(media_type), digest=source_digest, what=f"manifest {item.source}")
        selected = _selected_manifests(doc, source_digest, item.settings, str(item.source))
        existing, reason = existing_conversion(
            client, item.dest, source_digest=source_digest, selected=selected,
            source_is_index=isinstance(doc, Index), settings=item.settings, tool_version=tool_version)
        size = _estimate(client, item.source, doc, selected) if estimate and existing is None else None
    except ConverterError as exc:
        return replace(base, source_digest=source_digest, reason="planning failed", error=str(exc))
    if existing is not None:
        return replace(base, status=Status.SKIP, source_digest=source_digest, dest_digest=existing,
                        reason="already converted")
    return replace(base, status=Status.CONVERT, source_digest=source_digest, estimated_bytes=size, reason=reason)


def make_plan(job: Job, client: RegistryClient, *, shard: Shard | None = None, estimate: bool = False,
              page_size: int | None = None, workers: int = 4, tool_version: str = __version__,
              on_resolved: Callable[[PlannedImage], None] | None = None) -> Plan:
    """Expand, shard and resolve ``job``; see the module docstring.

    ``estimate`` also sums the source layer bytes of images to convert (dry runs);
    ``workers`` bounds the concurrent registry look-ups; ``on_resolved`` is called per image.
    """
    items, failures = expand_job(job, client, page_size=page_size)
    total = len(items) + len(failures)
    if shard is not None:
        items = [i for i in items if shard.owns(i.key)]
        failures = [f for f in failures if shard.owns(str(f.entry.repository))]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="plan") as pool:
        resolved = list(pool.map(lambda i: resolve_item(i, client, estimate=estimate,
                                                         tool_version=tool_version), items))
    images = sorted([*resolved, *failures], key=lambda p: p.entry.index)
    for image in images:
        log.debug("mirror_image_planned", source=image.source, dest=image.dest, status=image.status.value,
                 reason=image.reason, **({"error": image.error} if image.error else {}))
        if on_resolved is not None:
            on_resolved(image)
    return Plan(job=job, shard=shard, images=tuple(images), total=total)


__all__ = [
    "COMPLETION_INDEX_ENV",
    "Plan",
    "PlannedImage",
    "Shard",
    "Status",
    "WorkItem",
    "existing_conversion",
    "expand_job",
    "make_plan",
    "parse_shard",
    "resolve_item",
    "shard_of",
    "source_key",
]
