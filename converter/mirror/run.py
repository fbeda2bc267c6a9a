"""Runs a mirror plan: the images to convert go through ``convert_image`` a few at a time.

Design and the JSON report: docs/mirror.md §4.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from converter import __version__
from converter.cancel import CancelScope, Completions
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED, Builder
from converter.convert.layer import convert_layer as default_convert_layer
from converter.errors import Cancelled, ConverterError
from converter.mirror.cache import (
    CachingConverter,
    CountingConverter,
    LayerCache,
    LayerStats,
    LocalCacheFile,
    layer_chains,
)
from converter.mirror.jobs import Job, Repository
from converter.mirror.plan import Plan, PlannedImage, Recipe, Shard, Status, make_plan
from converter.pipeline import ConvertOptions, convert_image
from converter.pipeline.engine import layer_engine
from converter.pipeline.graph import ConvertLayerFn
from converter.reference import OciLayoutRef, Reference, parse_location
from converter.registry.client import RegistryClient
from converter.transports import ImageSource, RegistrySink, RegistrySource
from converter.transports.registry import BlobLocks, check_push_access
from converter.units import human_bytes

log = structlog.get_logger()

_POLL = 0.25  # seconds between checks for a signal while images convert

class ImageStatus(enum.StrEnum):
    """What became of one image in a run (the report's ``status``)."""

    CONVERTED = "converted"
    SKIPPED = "skipped"  # the destination already held this conversion
    FAILED = "failed"
    PENDING = "pending"  # dry runs: would be converted
    INTERRUPTED = "interrupted"  # the run was stopped (SIGTERM, Ctrl-C) before this image was done


CONVERTED, SKIPPED, FAILED, PENDING, INTERRUPTED = (ImageStatus.CONVERTED, ImageStatus.SKIPPED, ImageStatus.FAILED,
                                                    ImageStatus.PENDING, ImageStatus.INTERRUPTED)


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a plan. ``jobs``: images at once; ``layer_jobs``: layers at once per image
    (0: the pipeline's default); ``local_cache``: the optional JSON file in front of the layer
    cache; ``page_size``: tags per page when listing (None: the registry's default)."""

    jobs: int = 2
    layer_jobs: int = 0
    builder: Builder = Builder.AUTO
    workdir: Path | None = None
    build_time: int = 0
    local_cache: Path | None = None
    page_size: int | None = None
    tool_version: str = __version__
    max_expanded: int | None = DEFAULT_MAX_EXPANDED  # the layer limits (None: unlimited)
    max_entries: int | None = DEFAULT_MAX_ENTRIES
    verify: bool = False  # verify every image after pushing it (as if each had ``verify: true``)
    build_processes: bool | None = None  # ConvertOptions.processes

    @property
    def recipe(self) -> Recipe:
        """What of these options is in a conversion's provenance (decides whether to skip)."""
        return Recipe(tool_version=self.tool_version, builder=self.builder, build_time=self.build_time)


@dataclass(frozen=True, slots=True)
class ImageReport:
    """One image's line in the report."""

    source: str
    dest: str
    status: ImageStatus
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
    internal: bool = False  # failed by a bug (an exception that is no ConverterError/OSError)

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
    interrupted: bool = False  # stopped by SIGTERM/SIGINT; unfinished images are INTERRUPTED
    pull_bytes: int | None = None  # dry runs: the bytes to pull, a layer shared by images counted once

    def count(self, status: ImageStatus) -> int:
        return sum(1 for i in self.images if i.status == status)

    @property
    def failed(self) -> bool:
        return self.count(FAILED) > 0

    @property
    def internal_error(self) -> bool:
        """True if a bug (not a user, image or registry problem) failed any image."""
        return any(i.internal for i in self.images)

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "job": self.job, "shard": self.shard, "dry_run": self.dry_run,
            "images": len(self.images), "images_all_shards": self.total_images,
            "converted": self.count(CONVERTED), "skipped": self.count(SKIPPED), "failed": self.count(FAILED),
            "pending": self.count(PENDING), "interrupted": self.count(INTERRUPTED),
            "layers_converted": sum(i.layers_converted for i in self.images),
            "layers_reused": sum(i.layers_reused for i in self.images),
            "layers_mounted": sum(i.layers_mounted for i in self.images),
            "cache_fallbacks": sum(i.cache_fallbacks for i in self.images),
            "bytes": self.pull_bytes if self.pull_bytes is not None else sum(i.bytes for i in self.images),
            "dest_bytes": sum(i.dest_bytes for i in self.images),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self) -> dict[str, Any]:
        return {"images": [i.to_json() for i in self.images], "summary": self.summary,
                "interrupted": self.interrupted}


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
    unique = {digest: size for image in plan.images for digest, size in image.estimated_layers}
    return MirrorReport(job=plan.job.path, shard=str(plan.shard) if plan.shard else None, dry_run=True,
                        images=tuple(_not_converted(i, dry_run=True) for i in plan.images), seconds=seconds,
                        total_images=plan.total, pull_bytes=sum(unique.values()))


# --- converting -----------------------------------------------------------------------------------


class _Runner:
    """One run of a plan: the shared client, layer caches and options."""

    def __init__(self, client: RegistryClient, options: RunOptions, convert_layer: ConvertLayerFn,
                 engine_log: Any) -> None:
        # Every image converts inside this scope: cancelling it (on SIGTERM/SIGINT) aborts their
        # transfers, mkfs.erofs runs and layer graphs, and refuses any further push or tag.
        self.scope = CancelScope()
        self.client = client
        self.options = options
        self.convert_layer = layer_engine(convert_layer, ConvertOptions(jobs=options.layer_jobs,
                                                                        processes=options.build_processes))
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
                                 processes=self.options.build_processes,
                                 builder=self.options.builder, workdir=self.options.workdir,
                                 build_time=self.options.build_time, tool_version=self.options.tool_version,
                                 max_expanded=self.options.max_expanded, max_entries=self.options.max_entries)
        base = ImageReport(source=image.source, dest=image.dest, status=FAILED,
                           source_digest=str(image.source_digest), reason=image.reason)
        try:
            if self.scope.cancelled:
                raise Cancelled(f"converting {image.source}: cancelled")
            with self.scope.entered():
                check_push_access(self.client, item.dest)  # before pulling anything
                convert_fn = self.layer_converter(image, source, sink, stats, bound)
                result = convert_image(source, src_ref, sink, item.dest, options=options,
                                       convert_layer=convert_fn, log=self.engine_log)
        except Exception as exc:
            if not self.scope.cancelled:
                return self._crashed(exc, base, stats, started, bound, image)
            bound.warning("mirror_image_interrupted", error=str(exc))
            failed = self._failed(base, stats, started, "interrupted before the image was tagged", bound,
                                  log_it=False)
            return dataclasses.replace(failed, status=INTERRUPTED)
        if settings.verify or self.options.verify:
            problem = self._verify(item.dest.with_digest(result.digest), src_ref, bound)
            if problem:
                return self._failed(base, stats, started, problem, bound)
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

    def _crashed(self, exc: Exception, base: ImageReport, stats: LayerStats, started: float, bound: Any,
                 image: PlannedImage) -> ImageReport:
        """The report of an image whose conversion raised ``exc`` (the run was not interrupted)."""
        if isinstance(exc, ConverterError):
            return self._failed(base, stats, started, str(exc), bound)
        if isinstance(exc, OSError):
            where = f"{exc.filename}: " if exc.filename else ""
            return self._failed(base, stats, started, f"converting {image.source}: {where}{exc.strerror or exc}",
                                bound)
        # A bug: the other images go on, the run reports it as one (exit 70) with its traceback.
        bound.error("mirror_image_crashed", exc_info=exc)
        failed = self._failed(base, stats, started, f"internal error: {type(exc).__name__}: {exc}", bound)
        return dataclasses.replace(failed, internal=True)

    def _verify(self, dest: Reference, source: Reference, bound: Any) -> str:
        """Run ``convert verify`` on the pushed image against its source; "" if it holds."""
        from converter.verify.run import VerifyOptions, verify_image

        def opener(text: str) -> tuple[ImageSource, Reference | OciLayoutRef]:
            loc = parse_location(text)
            if not isinstance(loc, Reference):
                raise ConverterError(f"opening {text}: mirror jobs verify against registry sources only")
            return RegistrySource(self.client, loc), loc

        try:
            report = verify_image(RegistrySource(self.client, dest), str(dest),
                                  options=VerifyOptions(source=str(source), workdir=self.options.workdir),
                                  open_location=opener)
        except ConverterError as exc:
            return f"verifying {dest}: {exc}"
        if report.ok:
            bound.info("mirror_image_verified", files=report.files_compared, layers=report.layers_checked)
            return ""
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        return f"verifying {dest}: {report.problems[0].line()}{more}"

    @staticmethod
    def _failed(base: ImageReport, stats: LayerStats, started: float, error: str, bound: Any, *,
                log_it: bool = True) -> ImageReport:
        counts = stats.as_dict()
        if log_it:
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
    is called with each converted (or failed) image's report as it finishes (overall progress).

    On KeyboardInterrupt (Ctrl-C, or SIGTERM as the CLI maps it) no new image starts, the images
    converting are stopped at once (their transfers and mkfs.erofs runs aborted, nothing more
    pushed or tagged), and the report comes back with ``interrupted`` set and every unfinished
    image ``INTERRUPTED``.
    """
    started = time.monotonic()
    runner = _Runner(client, options, convert_layer, engine_log)
    reports: list[ImageReport | None] = [None] * len(plan.images)
    converting: list[int] = []
    outcomes: Completions[ImageReport] = Completions()  # not futures.wait: see Completions
    pool = ThreadPoolExecutor(max(1, options.jobs), thread_name_prefix="mirror")
    interrupted = False
    try:
        for n, image in enumerate(plan.images):
            if image.status is Status.CONVERT:
                outcomes.submit(pool, n, functools.partial(runner.convert, image))
                converting.append(n)
            else:
                reports[n] = _not_converted(image, dry_run=False)
                _log_not_converted(reports[n])
        while outcomes.pending:
            # Wake up regularly: a signal handler only runs when the main thread does, and a
            # wait without timeout would hold off SIGTERM until an image finishes.
            if (got := outcomes.next(_POLL)) is not None:
                n, finished = got
                reports[n] = finished
                if on_image is not None:
                    on_image(finished)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("mirror_interrupted", reason="signal: stopping the images in progress, starting no more")
        runner.scope.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        pool.shutdown(wait=True)  # the images that started end promptly (cancelled scope)
        while (got := outcomes.next(0)) is not None:
            reports[got[0]] = got[1]
        for n in converting:
            if reports[n] is None:  # never started (or its report was taken as the signal came)
                reports[n] = _interrupted(plan.images[n])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
    done = tuple(r for r in reports if r is not None)
    report = MirrorReport(job=plan.job.path, shard=str(plan.shard) if plan.shard else None, dry_run=False,
                          images=done, seconds=time.monotonic() - started, total_images=plan.total,
                          interrupted=interrupted)
    log.info("mirror_done", **{k: v for k, v in report.summary.items() if k not in ("job", "dry_run")})
    return report


def _interrupted(image: PlannedImage) -> ImageReport:
    """The report of an image the run never started because it was interrupted."""
    return ImageReport(source=image.source, dest=image.dest, status=INTERRUPTED,
                       source_digest=str(image.source_digest) if image.source_digest else None,
                       error="interrupted before the image was started", reason=image.reason)


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
                     workers=max(4, options.jobs), recipe=options.recipe)
    if dry_run:
        return plan_report(plan, seconds=time.monotonic() - started)
    return run_plan(plan, client=client, options=options, convert_layer=convert_layer, engine_log=engine_log,
                    on_image=on_image)


# --- text output ----------------------------------------------------------------------------------


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
                     note))  # never cut short: the cause comes last in an error, cutting loses it
    s = report.summary
    where = f" (shard {report.shard}, {s['images']} of {s['images_all_shards']} images)" if report.shard else ""
    kind = "dry run" if report.dry_run else "mirror"
    totals = (f"{kind} {report.job}{where}: {s['converted']} converted, {s['skipped']} skipped, "
              f"{s['failed']} failed" + (f", {s['pending']} to convert" if report.dry_run else "")
              + (f", {s['interrupted']} interrupted" if report.interrupted else "")
              + f"; layers {s['layers_converted']} converted, {s['layers_reused']} reused from the cache; "
              f"{human_bytes(s['bytes'])}{' to pull' if report.dry_run else ' pulled'} in {s['seconds']:.1f}s")
    return "\n".join([*_table(rows), totals])


__all__ = [
    "CONVERTED",
    "FAILED",
    "INTERRUPTED",
    "PENDING",
    "SKIPPED",
    "ImageReport",
    "ImageStatus",
    "MirrorReport",
    "RunOptions",
    "format_report",
    "human_bytes",
    "plan_report",
    "run_job",
    "run_plan",
]
