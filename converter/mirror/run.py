"""Runs a mirror plan: the images to convert go through ``convert_image`` a few at a time.

Why it is its own module: the CLI, the demo and the tests all run plans, and each needs the
same guarantees — a failing image never stops the others (its error lands in the report),
at most ``jobs`` images convert at once, every image gives one progress line, the layer
cache is shared by all images of the process (one ``LayerCache`` per cache repository),
and the result is one ``MirrorReport`` that serialises to the JSON report::

    {"images": [{"source", "dest", "status": "converted"|"skipped"|"failed"|"pending",
                 "source_digest", "dest_digest", "layers_converted", "layers_reused",
                 "bytes", "seconds", "error", ...}],
     "summary": {"images", "converted", "skipped", "failed", "pending", "layers_converted",
                 "layers_reused", "cache_fallbacks", "bytes", "dest_bytes", "seconds", ...}}

``bytes`` are source layer bytes pulled (for ``pending``, the dry run's estimate);
``dest_bytes`` the size of the EROFS layers pushed. ``pending`` only appears in dry runs.
``layers_reused`` counts layers served by the layer cache instead of being rebuilt.

Images go to their destination through ``RegistrySink``s that share one ``BlobLocks``, which
keeps parallel images from pushing the same blob into one repository at once (see
``converter.transports.registry`` for the registry race).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from converter import __version__
from converter.convert.layer import convert_layer as default_convert_layer
from converter.errors import ConverterError
from converter.mirror.cache import (
    CachingConverter,
    CountingConverter,
    LayerCache,
    LayerStats,
    LocalCacheFile,
    layer_chains,
)
from converter.mirror.jobs import Job, Repository
from converter.mirror.plan import Plan, PlannedImage, Shard, Status, make_plan
from converter.pipeline import ConvertOptions, convert_image
from converter.pipeline.graph import ConvertLayerFn
from converter.registry.client import RegistryClient
from converter.transports import RegistrySink, RegistrySource
from converter.transports.registry import BlobLocks

log = structlog.get_logger()

CONVERTED = "converted"
SKIPPED = "skipped"
FAILED = "failed"
PENDING = "pending"  # dry runs: would be converted


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a plan. ``jobs``: images at once; ``layer_jobs``: layers at once per image
    (0: the pipeline's default); ``local_cache``: the optional JSON file in front of the layer
    cache; ``page_size``: tags per page when listing (None: the registry's default)."""

    jobs: int = 2
    layer_jobs: int = 0
    builder: str = "python"
    workdir: Path | None = None
    build_time: int = 0
    local_cache: Path | None = None
    page_size: int | None = None
    tool_version: str = __version__


@dataclass(frozen=True, slots=True)
class ImageReport:
    """One image's line in the report."""

    source: str
    dest: str
    status: str
    source_digest: str | None = None
    dest_digest: str | None = None
    layers_converted: int = 0
    layers_reused: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    reason: str = ""
    dest_bytes: int = 0
    layers_mounted: int = 0
    cache_fallbacks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "dest": self.dest, "status": self.status,
            "source_digest": self.source_digest, "dest_digest": self.dest_digest,
            "layers_converted": self.layers_converted, "layers_reused": self.layers_reused,
            "bytes": self.bytes, "seconds": round(self.seconds, 3), "error": self.error,
            "reason": self.reason, "dest_bytes": self.dest_bytes, "layers_mounted": self.layers_mounted,
            "cache_fallbacks": self.cache_fallbacks,
        }


@dataclass(frozen=True, slots=True)
class MirrorReport:
    """The outcome of a run (or a dry run) of one job on one shard."""

    job: str
    shard: str | None
    dry_run: bool
    images: tuple[ImageReport, ...]
    seconds: float = 0.0
    total_images: int = 0  # in every shard

    def count(self, status: str) -> int:
        return sum(1 for i in self.images if i.status == status)

    @property
    def failed(self) -> bool:
        return self.count(FAILED) > 0

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "job": self.job, "shard": self.shard, "dry_run": self.dry_run,
            "images": len(self.images), "images_all_shards": self.total_images,
            "converted": self.count(CONVERTED), "skipped": self.count(SKIPPED), "failed": self.count(FAILED),
            "pending": self.count(PENDING),
            "layers_converted": sum(i.layers_converted for i in self.images),
            "layers_reused": sum(i.layers_reused for i in self.images),
            "layers_mounted": sum(i.layers_mounted for i in self.images),
            "cache_fallbacks": sum(i.cache_fallbacks for i in self.images),
            "bytes": sum(i.bytes for i in self.images),
            "dest_bytes": sum(i.dest_bytes for i in self.images),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> dict[str, Any]:
        return {"images": [i.to_json() for i in self.images], "summary": self.summary}


# --- reports of planned images ------------------------------------------------------------------


def _not_converted(image: PlannedImage, *, dry_run: bool) -> ImageReport:
    status = {Status.SKIP: SKIPPED, Status.FAILED: FAILED, Status.CONVERT: PENDING}[image.status]
    return ImageReport(
        source=image.source, dest=image.dest, status=status,
        source_digest=str(image.source_digest) if image.source_digest else None,
        dest_digest=str(image.dest_digest) if image.dest_digest else None,
        bytes=(image.estimated_bytes or 0) if dry_run else 0,
        error=image.error or None, reason=image.reason,
    )


def plan_report(plan: Plan, *, seconds: float = 0.0) -> MirrorReport:
    """The dry-run report of a plan: ``pending`` for what a run would convert."""
    return MirrorReport(job=plan.job.path, shard=str(plan.shard) if plan.shard else None, dry_run=True,
                        images=tuple(_not_converted(i, dry_run=True) for i in plan.images), seconds=seconds,
                        total_images=plan.total)


# --- converting -----------------------------------------------------------------------------------


class _Runner:
    """One run of a plan: the shared client, layer caches and options."""

    def __init__(self, client: RegistryClient, options: RunOptions, convert_layer: ConvertLayerFn,
                 engine_log: Any) -> None:
        self.client = client
        self.options = options
        self.convert_layer = convert_layer
        self.engine_log = engine_log
        self._caches: dict[Repository, LayerCache] = {}
        self._lock = threading.Lock()
        self.blob_locks = BlobLocks()
        self._local = LocalCacheFile(options.local_cache) if options.local_cache is not None else None

    def cache(self, repo: Repository) -> LayerCache:
        with self._lock:
            found = self._caches.get(repo)
            if found is None:
                found = self._caches[repo] = LayerCache(self.client, repo, local=self._local)
            return found

    def layer_converter(self, image: PlannedImage, source: RegistrySource, sink: RegistrySink, stats: LayerStats,
                        bound: Any) -> ConvertLayerFn:
        """The cache in front of the layer engine when the image has a usable cache repository."""
        assert image.item is not None
        item = image.item
        repo = item.settings.cache_repo
        if repo is None:
            return CountingConverter(self.convert_layer, stats)
        if repo.registry != item.dest.registry:
            bound.warning("layer_cache_not_used", cache_repo=str(repo),
                          reason="cross-repository mounts need the cache on the destination's registry")
            return CountingConverter(self.convert_layer, stats)
        try:
            chains = layer_chains(source, image=image.source)
        except ConverterError as exc:
            bound.warning("layer_cache_not_used", cache_repo=str(repo), reason=str(exc))
            return CountingConverter(self.convert_layer, stats)
        return CachingConverter(self.cache(repo), dest=item.dest, chains=chains, profile=item.settings.profile,
                                tool_version=self.options.tool_version, inner=self.convert_layer, stats=stats,
                                sink=sink, log=bound)

    def convert(self, image: PlannedImage) -> ImageReport:
        assert image.item is not None and image.source_digest is not None
        item = image.item
        settings = item.settings
        started = time.monotonic()
        stats = LayerStats()
        bound = log.bind(source=image.source, dest=image.dest)
        src_ref = item.source.with_digest(image.source_digest)
        source = RegistrySource(self.client, src_ref)
        sink = RegistrySink(self.client, item.dest, self.blob_locks)
        options = ConvertOptions(fmt=settings.fmt, profile=settings.profile, encoding=settings.encoding,
                                 platforms=settings.platforms,
                                 merge_index=settings.merge_index, jobs=self.options.layer_jobs,
                                 builder=self.options.builder, workdir=self.options.workdir,
                                 build_time=self.options.build_time, tool_version=self.options.tool_version)
        base = ImageReport(source=image.source, dest=image.dest, status=FAILED,
                           source_digest=str(image.source_digest), reason=image.reason)
        try:
            convert_fn = self.layer_converter(image, source, sink, stats, bound)
            result = convert_image(source, src_ref, sink, item.dest, options=options, convert_layer=convert_fn,
                                   log=self.engine_log)
        except ConverterError as exc:
            return self._failed(base, stats, started, str(exc), bound)
        except Exception as exc:  # a bug must not take the other images down; it is logged in full
            bound.exception("mirror_image_crashed")
            return self._failed(base, stats, started, f"{type(exc).__name__}: {exc}", bound)
        counts = stats.as_dict()
        layers = [layer for platform in result.platforms for layer in platform.layers]
        report = ImageReport(
            source=image.source, dest=image.dest, status=CONVERTED, source_digest=str(image.source_digest),
            dest_digest=str(result.digest), layers_converted=counts["built"], layers_reused=counts["reused"],
            bytes=sum(layer.source_size for layer in layers), seconds=time.monotonic() - started,
            reason=image.reason, dest_bytes=sum(layer.size for layer in layers), layers_mounted=counts["mounted"],
            cache_fallbacks=counts["fallbacks"],
        )
        bound.info("mirror_image_converted", digest=report.dest_digest, layers_converted=report.layers_converted,
                   layers_reused=report.layers_reused, bytes=report.bytes, seconds=round(report.seconds, 2))
        return report

    @staticmethod
    def _failed(base: ImageReport, stats: LayerStats, started: float, error: str, bound: Any) -> ImageReport:
        counts = stats.as_dict()
        bound.error("mirror_image_failed", error=error)
        return ImageReport(source=base.source, dest=base.dest, status=FAILED, source_digest=base.source_digest,
                           layers_converted=counts["built"], layers_reused=counts["reused"],
                           seconds=time.monotonic() - started, error=error, reason=base.reason,
                           layers_mounted=counts["mounted"], cache_fallbacks=counts["fallbacks"])


def run_plan(plan: Plan, *, client: RegistryClient, options: RunOptions = RunOptions(),
             convert_layer: ConvertLayerFn = default_convert_layer, engine_log: Any = None,
             on_image: Callable[[ImageReport], None] | None = None) -> MirrorReport:
    """Convert the plan's CONVERT images (``options.jobs`` at once); report every image of the plan.

    ``convert_layer`` is the layer engine (a seam for tests); ``engine_log`` the logger handed to
    ``convert_image`` (the CLI passes a quieter one so each image gives one line); ``on_image``
    is called with each converted (or failed) image's report as it finishes (overall progress). On Ctrl-C no
    new image starts; images already converting run to their end (``convert_image`` has no
    cancel hook), then KeyboardInterrupt propagates.
    """
    started = time.monotonic()
    runner = _Runner(client, options, convert_layer, engine_log)
    reports: list[ImageReport | None] = [None] * len(plan.images)
    futures: dict[int, Future[ImageReport]] = {}
    pool = ThreadPoolExecutor(max(1, options.jobs), thread_name_prefix="mirror")
    try:
        for n, image in enumerate(plan.images):
            if image.status is Status.CONVERT:
                futures[n] = pool.submit(runner.convert, image)
            else:
                reports[n] = _not_converted(image, dry_run=False)
                _log_not_converted(reports[n])
        index_of = {future: n for n, future in futures.items()}
        for future in as_completed(futures.values()):
            n = index_of[future]
            reports[n] = finished = future.result()
            if on_image is not None:
                on_image(finished)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
    done = tuple(r for r in reports if r is not None)
    report = MirrorReport(job=plan.job.path, shard=str(plan.shard) if plan.shard else None, dry_run=False,
                          images=done, seconds=time.monotonic() - started, total_images=plan.total)
    log.info("mirror_done", **{k: v for k, v in report.summary.items() if k not in ("job", "dry_run")})
    return report


def _log_not_converted(report: ImageReport | None) -> None:
    assert report is not None
    if report.status == SKIPPED:
        log.info("mirror_image_skipped", source=report.source, dest=report.dest, digest=report.dest_digest,
                 reason=report.reason)
    else:
        log.error("mirror_image_failed", source=report.source, dest=report.dest, error=report.error)


def run_job(job: Job, *, client: RegistryClient, options: RunOptions = RunOptions(), shard: Shard | None = None,
            dry_run: bool = False, convert_layer: ConvertLayerFn = default_convert_layer,
            engine_log: Any = None, on_image: Callable[[ImageReport], None] | None = None) -> MirrorReport:
    """Plan ``job`` (this ``shard`` of it) and run the plan, or only report it with ``dry_run``."""
    started = time.monotonic()
    plan = make_plan(job, client, shard=shard, estimate=dry_run, page_size=options.page_size,
                     workers=max(4, options.jobs), tool_version=options.tool_version)
    if dry_run:
        return plan_report(plan, seconds=time.monotonic() - started)
    return run_plan(plan, client=client, options=options, convert_layer=convert_layer, engine_log=engine_log,
                    on_image=on_image)


# --- text output ----------------------------------------------------------------------------------


def human_bytes(count: int) -> str:
    """``1.5 MB`` (decimal units, as registries and Docker print sizes)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def format_report(report: MirrorReport) -> str:
    """The summary table (the CLI prints it on stderr): one row per image, then the totals."""
    header = ("STATUS", "SOURCE", "DEST", "BUILT", "REUSED", "BYTES", "TIME", "NOTE")
    rows = [header]
    for image in report.images:
        note = image.error or (image.reason if image.status != CONVERTED else "")
        rows.append((image.status, image.source, image.dest, str(image.layers_converted),
                     str(image.layers_reused), human_bytes(image.bytes), f"{image.seconds:.1f}s",
                     note if len(note) <= 200 else note[:197] + "..."))
    s = report.summary
    where = f" (shard {report.shard}, {s['images']} of {s['images_all_shards']} images)" if report.shard else ""
    kind = "dry run" if report.dry_run else "mirror"
    totals = (f"{kind} {report.job}{where}: {s['converted']} converted, {s['skipped']} skipped, "
              f"{s['failed']} failed" + (f", {s['pending']} to convert" if report.dry_run else "")
              + f"; layers {s['layers_converted']} converted, {s['layers_reused']} reused from the cache; "
              f"{human_bytes(s['bytes'])}{' to pull' if report.dry_run else ' pulled'} in {s['seconds']:.1f}s")
    return "\n".join([*_table(rows), totals])


__all__ = [
    "CONVERTED",
    "FAILED",
    "PENDING",
    "SKIPPED",
    "ImageReport",
    "MirrorReport",
    "RunOptions",
    "format_report",
    "human_bytes",
    "plan_report",
    "run_job",
    "run_plan",
]
