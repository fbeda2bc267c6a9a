"""A job → a plan: which images to convert, which are already done, which this shard owns.

Design: docs/mirror.md §2.
"""

from __future__ import annotations

import collections
import enum
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import structlog

from converter import __version__
from converter.blob.encoding import BlobEncoding
from converter.cancel import CancelScope, Completions, current_scope
from converter.convert.layer import Builder, LayerOptions
from converter.erofs.target import TargetFormat
from converter.errors import ConverterError, ImageError, NotFound, UsageError
from converter.oci.mediatypes import Profile
from converter.oci.model import (
    MAX_CONFIG_SIZE,
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_image_manifest,
    parse_manifest,
)
from converter.oci.rewrite import Provenance, check_source_layers, is_erofs_entry, plan_index, platform_selection
from converter.pipeline.options import resolve_encoding
from converter.reference import Digest, Reference, is_valid_tag
from converter.registry.client import RegistryClient
from converter.transports.base import ImageSource
from converter.transports.registry import RegistrySource

if TYPE_CHECKING:  # annotations only: the image command plans without importing job files' parser (yaml)
    from converter.mirror.jobs import ImageEntry, Job, Repository, Settings

log = structlog.get_logger()

REFERRERS_TAG = re.compile(r"sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128}")
_POLL = 0.25  # seconds between checks for a signal while images are looked up
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
    estimated_layers: tuple[tuple[Digest, int], ...] = ()  # those layers (digest, size): shared ones count once
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


def _valid_tags(entry: ImageEntry, tags: Iterable[str]) -> Iterator[str]:
    """The tags of a listing that the tag grammar allows; the others (a registry may send anything)
    are skipped with one warning per entry, naming a few of them (escaped)."""
    invalid: list[str] = []
    for tag in tags:
        if is_valid_tag(tag):
            yield tag
        else:
            invalid.append(tag)
    if invalid:
        log.warning("mirror_invalid_tags_skipped", entry=entry.label, count=len(invalid),
                    examples=[ascii(t[:80]) for t in invalid[:3]])


def _counted(tags: Iterable[str], count: list[int]) -> Iterator[str]:
    for tag in tags:
        count[0] += 1
        yield tag


def _planning_failure(entry: ImageEntry, source: Reference, exc: ConverterError) -> PlannedImage:
    """A listed tag that cannot become a work item (e.g. its destination is not a valid reference)."""
    return PlannedImage(entry=entry, source=str(source), dest=entry.settings.dest.text, status=Status.FAILED,
                        reason="planning failed", error=str(exc))


def expand_job(job: Job, client: RegistryClient, *, page_size: int | None = None,
               ) -> tuple[list[WorkItem], list[PlannedImage]]:
    """Every work item of the job (tags listed and filtered), and the images that failed already:
    entries whose listing failed, listed tags without a valid destination, and listed tags
    whose destination another image already has.

    Raises JobFileError when two images named in the job file share a destination.
    """
    listings: dict[Repository, list[str] | ConverterError] = {}
    # A repository listed by one entry only is streamed through its filter, never held whole.
    listed_by = collections.Counter(e.repository for e in job.images if e.ref is None)
    items: list[WorkItem] = []
    failures: list[PlannedImage] = []
    for entry in job.images:
        if entry.ref is not None:
            sources = [entry.ref]
        else:
            assert entry.tags is not None
            listing = listings.get(entry.repository)
            listed = [0]
            try:
                if listing is None and listed_by[entry.repository] > 1:
                    listing = client.list_tags(entry.repository.registry, entry.repository.repository,
                                               page_size=page_size)
                    listings[entry.repository] = listing
                if isinstance(listing, ConverterError):
                    raise listing
                tags = listing if listing is not None else client.iter_tags(
                    entry.repository.registry, entry.repository.repository, page_size=page_size)
                # Referrers fallback tags (sha256-<hex>, distribution spec) hold lists, not images.
                chosen = entry.tags.select(_valid_tags(entry, (t for t in _counted(tags, listed)
                                                               if not REFERRERS_TAG.fullmatch(t))))
            except ConverterError as exc:
                if listed_by[entry.repository] > 1:
                    listings[entry.repository] = exc
                failures.append(_listing_failure(entry, exc))
                continue
            log.info("mirror_tags_selected", entry=entry.label, listed=listed[0], selected=len(chosen),
                     tags=chosen)
            sources = [entry.repository.with_tag(tag) for tag in chosen]
        for source in sources:
            try:
                dest = entry.settings.dest.render(source, entry.settings.fmt, entry.settings.encoding)
            except ConverterError as exc:
                if entry.ref is not None:
                    raise  # the job file's own mistake (checked when it was read)
                failures.append(_planning_failure(entry, source, exc))
                continue
            items.append(WorkItem(entry=entry, source=source, dest=dest))
    items, collided = _check_collisions(items)
    return items, failures + collided


def _check_collisions(items: Sequence[WorkItem]) -> tuple[list[WorkItem], list[PlannedImage]]:
    """Items with a destination of their own, and the listed ones that lost theirs to another.

    Two images named in the job file with one destination are the job's error (JobFileError);
    when a listed tag collides, the image named in the job file (else the first) keeps the
    destination and the others fail: a registry's tag list must not stop the whole job.
    """
    groups: dict[str, list[WorkItem]] = {}
    for item in items:
        groups.setdefault(f"{item.dest.name}:{item.dest.tag}", []).append(item)
    losers: set[int] = set()
    failed: list[PlannedImage] = []
    for group in groups.values():
        if len(group) < 2:
            continue
        named = [i for i in group if i.entry.ref is not None]
        if len(named) > 1:
            first, item = named[0], named[1]
            raise item.settings.dest.where.error(
                f"{item.dest} is the destination of both {first.source} ({first.entry.where.field}, line "
                f"{first.entry.where.line}) and {item.source} ({item.entry.where.field}); make dest tell them "
                "apart (e.g. with {tag} or {format})")
        keeper = named[0] if named else group[0]
        for item in group:
            if item is not keeper:
                losers.add(id(item))
                failed.append(PlannedImage(
                    entry=item.entry, source=str(item.source), dest=str(item.dest), status=Status.FAILED,
                    reason="planning failed",
                    error=f"planning {item.source}: {item.dest} is also the destination of {keeper.source} "
                          f"({keeper.entry.where.field})"))
    return [i for i in items if id(i) not in losers], failed


# --- resolving --------------------------------------------------------------------------------


class Wanted(Protocol):
    """The options of a request that a conversion's provenance and shape must match (a job's
    ``Settings`` or the CLI's ``ConvertOptions``)."""

    @property
    def fmt(self) -> TargetFormat: ...
    @property
    def profile(self) -> Profile: ...
    @property
    def platforms(self) -> tuple[Platform, ...]: ...
    @property
    def merge_index(self) -> bool: ...
    @property
    def encoding(self) -> BlobEncoding: ...


def selected_manifests(doc: Manifest | Index, digest: Digest, wanted: Wanted, image: str) -> tuple[Digest, ...]:
    """The source manifests a conversion as ``wanted`` converts (one for a single manifest)."""
    if isinstance(doc, Manifest):
        return (digest,)
    plan = plan_index(doc, platforms=wanted.platforms, merge=wanted.merge_index, image=image)
    return tuple(d.digest for d in plan.convert)


def _estimate(client: RegistryClient, source: Reference, doc: Manifest | Index, selected: Sequence[Digest],
              wanted: Wanted) -> tuple[tuple[Digest, int], ...]:
    """The source layers a conversion would pull; raises what the conversion would certainly
    fail with (a layer already EROFS or not convertible, a single image of another platform)."""
    manifests: list[tuple[Manifest, str]] = []
    if isinstance(doc, Manifest):
        manifests.append((doc, str(source)))
        if wanted.platforms:
            raw = client.get_blob_bytes(source.registry, source.repository, doc.config.digest,
                                        max_size=MAX_CONFIG_SIZE)
            platform = parse_config(raw, descriptor=doc.config, what=f"config of {source}").platform
            if not any(platform.matches(p) for p in wanted.platforms):
                want = ", ".join(str(p) for p in wanted.platforms)
                raise ImageError(f"converting {source}: the image is {platform}, not {want}")
    else:
        for digest in dict.fromkeys(selected):  # an index may list one manifest many times
            data, media_type, _ = client.get_manifest(source.registry, source.repository, digest)
            what = f"manifest {source.name}@{digest}"
            manifests.append((parse_image_manifest(data, str(media_type), digest=digest, what=what),
                              f"{source.name}@{digest}"))
    layers: list[tuple[Digest, int]] = []
    for manifest, image in manifests:
        check_source_layers(manifest, image=image)
        layers.extend((layer.digest, layer.size) for layer in manifest.layers)
    return tuple(layers)


@dataclass(frozen=True, slots=True)
class Recipe:
    """What decides a conversion's bytes besides the job's settings: the run's options."""

    tool_version: str = __version__
    builder: Builder = Builder.AUTO
    build_time: int = 0


def _same_options(prov: Provenance, wanted: Wanted, recipe: Recipe) -> str:
    """Why an existing conversion's provenance differs from what we would make ("" if it does not)."""
    # The builder that really writes (``auto`` resolves by the format): what the provenance records.
    builder = LayerOptions(fmt=wanted.fmt, builder=recipe.builder).resolved_builder()
    want = Provenance(source_digest=prov.source_digest, fmt=str(wanted.fmt),
                      profile=wanted.profile, version=recipe.tool_version,
                      platforms=platform_selection(wanted.platforms), builder=builder,
                      build_time=recipe.build_time,
                      encoding=resolve_encoding(wanted.encoding, wanted.profile).canonical())
    return want.differs(prov)


def _source_of(doc: Manifest | Index, prov: Provenance) -> Digest | None:
    """The source a conversion names: its ``subject`` and source-digest annotation must agree
    (None when they do not: not a conversion we can trust)."""
    if doc.subject is not None and doc.subject.digest != prov.source_digest:
        return None
    return prov.source_digest


def existing_conversion(dest: ImageSource, *, source_digest: Digest, selected: Sequence[Digest],
                        source_is_index: bool, wanted: Wanted, recipe: Recipe) -> tuple[Digest | None, str]:
    """(digest of the destination, "") if ``dest`` (read as a source) holds this very conversion,
    else (None, why not)."""
    try:
        data, media_type, digest = dest.get_manifest()
    except NotFound:
        return None, "the destination had no image"  # when planned: true in a report written later too
    what = f"manifest {dest.name}"
    doc = parse_manifest(data, str(media_type), digest=digest, what=what)
    prov = Provenance.from_annotations(doc.annotations)
    if prov is None:
        return None, "the destination was not made by erofs-converter"
    if _source_of(doc, prov) is None:
        return None, "the destination's subject and source-digest annotation disagree"
    if prov.source_digest != source_digest:
        return None, f"the source changed (converted {prov.source_digest.short}, now {source_digest.short})"
    differs = _same_options(prov, wanted, recipe)
    if differs:
        return None, differs
    want_index = source_is_index or wanted.merge_index
    if isinstance(doc, Manifest):
        return (digest, "") if not want_index else (None, "an index is wanted, the destination is a manifest")
    if not want_index:
        return None, "a manifest is wanted, the destination is an index"
    merged = any(not is_erofs_entry(entry) for entry in doc.manifests)
    if merged != wanted.merge_index:
        return None, f"merge_index changed to {str(wanted.merge_index).lower()}"
    converted: set[Digest] = set()
    checked: set[Digest] = set()
    for entry in doc.manifests:
        if not is_erofs_entry(entry) or entry.digest in checked:
            continue
        checked.add(entry.digest)
        child_data, child_type, _ = dest.get_manifest(entry.digest)
        child = parse_manifest(child_data, str(child_type), digest=entry.digest, what=f"{what}@{entry.digest}")
        child_prov = Provenance.from_annotations(child.annotations)
        if child_prov is None or _source_of(child, child_prov) is None:
            return None, f"platform manifest {entry.digest.short} has no provenance"
        differs = _same_options(child_prov, wanted, recipe)
        if differs:
            return None, f"platform manifest {entry.digest.short} {differs}"
        converted.add(child_prov.source_digest)
    if converted != set(selected):
        return None, "the selected platforms changed"
    return digest, ""


def resolve_item(item: WorkItem, client: RegistryClient, *, estimate: bool = False,
                 tool_version: str = __version__, recipe: Recipe | None = None) -> PlannedImage:
    """The verdict for one work item; registry and image errors make it FAILED, not raise."""
    base = PlannedImage(entry=item.entry, source=str(item.source), dest=str(item.dest), status=Status.FAILED,
                        item=item)
    source_digest: Digest | None = None
    try:
        data, media_type, source_digest = client.get_manifest(item.source)
        doc = parse_manifest(data, str(media_type), digest=source_digest, what=f"manifest {item.source}")
        selected = selected_manifests(doc, source_digest, item.settings, str(item.source))
        existing, reason = existing_conversion(
            RegistrySource(client, item.dest), source_digest=source_digest, selected=selected,
            source_is_index=isinstance(doc, Index), wanted=item.settings,
            recipe=recipe or Recipe(tool_version=tool_version))
        layers = _estimate(client, item.source, doc, selected, item.settings) if estimate and existing is None else ()
    except ConverterError as exc:
        return replace(base, source_digest=source_digest, reason="planning failed", error=str(exc))
    except Exception as exc:  # a bug must not take the other images down; it is logged in full
        log.exception("mirror_image_planning_crashed", source=str(item.source))
        return replace(base, source_digest=source_digest, reason="planning failed",
                       error=f"internal error: planning {item.source}: {type(exc).__name__}: {exc}")
    size = sum(n for _, n in layers) if estimate else None
    if existing is not None:
        return replace(base, status=Status.SKIP, source_digest=source_digest, dest_digest=existing,
                        reason="already converted")
    return replace(base, status=Status.CONVERT, source_digest=source_digest, estimated_bytes=size,
                   estimated_layers=layers, reason=reason)


def make_plan(job: Job, client: RegistryClient, *, shard: Shard | None = None, estimate: bool = False,
              page_size: int | None = None, workers: int = 4, tool_version: str = __version__,
              recipe: Recipe | None = None,
              on_resolved: Callable[[PlannedImage], None] | None = None) -> Plan:
    """Expand, shard and resolve ``job``; see the module docstring.

    ``estimate`` also sums the source layer bytes of images to convert (dry runs);
    ``workers`` bounds the concurrent registry look-ups; ``on_resolved`` is called per image.
    """
    items, failures = expand_job(job, client, page_size=page_size)
    total = len(items) + len(failures)
    if shard is not None:
        items = [i for i in items if shard.owns(i.key)]
        failures = [f for f in failures if shard.owns(f.source)]  # the key: a repository or a source
    recipe = recipe or Recipe(tool_version=tool_version)
    # Look-ups run in a scope of their own (a child of the caller's): on Ctrl-C/SIGTERM it is
    # cancelled, which ends look-ups blocked on a stalled registry at once.
    scope = CancelScope(parent=current_scope())

    def resolve(item: WorkItem) -> PlannedImage:
        with scope.entered():
            return resolve_item(item, client, estimate=estimate, recipe=recipe)

    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="plan")
    done: Completions[PlannedImage] = Completions()  # not futures.wait: see Completions
    found: list[PlannedImage | None] = [None] * len(items)
    try:
        for n, item in enumerate(items):
            done.submit(pool, n, functools.partial(resolve, item))
        while done.pending:  # woken regularly, so that a signal reaches the main thread
            if (got := done.next(_POLL)) is not None:
                found[got[0]] = got[1]
    except BaseException:
        scope.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
    resolved = [p for p in found if p is not None]
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
    "selected_manifests",
    "shard_of",
    "source_key",
]
