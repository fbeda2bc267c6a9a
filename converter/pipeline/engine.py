"""``convert_image``: one image (a manifest or an index) from an ImageSource to an ImageSink.

The reusable engine behind ``convert SOURCE`` and mirror jobs. It resolves the source,
chooses the platform manifests (``converter.oci.rewrite.plan_index``), runs one
``LayerGraph`` per platform (platforms one after another; the layers of each in parallel),
rewrites config and manifest with the pure functions of ``converter.oci.rewrite``, and pushes
in an order that never tags anything incomplete:

1. per platform: layer blobs (in the graph), then the config blob, then the EROFS manifest —
   by digest when it will be part of an index, else under the tag;
2. with ``merge_index``: every kept source manifest (and its blobs, mounted or copied when
   the destination is another repository) by digest;
3. last, the index under the tag.

All temporary files live in one private directory (``tempfile.mkdtemp``, mode 0700) made
inside ``options.workdir`` (or the system temp dir) and removed on success, failure and
Ctrl-C; the files in it are created 0600.

A failed manifest or config push raises ``PushFailed``, whose message names the source image
as well as the destination (the registry's error names only what was being pushed).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from converter.cancel import current_scope
from converter.convert.layer import LayerOptions
from converter.convert.layer import convert_layer as default_convert_layer
from converter.errors import ConverterError, ImageError, PushFailed
from converter.oci.mediatypes import MediaType
from converter.oci.model import (
    MAX_CONFIG_SIZE,
    Descriptor,
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_image_manifest,
    parse_manifest,
)
from converter.oci.referrers import subject_descriptor
from converter.oci.rewrite import (
    ConvertedEntry,
    IndexPlan,
    NewLayer,
    Provenance,
    build_index,
    build_manifest,
    check_source_layers,
    erofs_entry,
    plan_index,
    platform_selection,
    rewrite_config,
)
from converter.pipeline.buildproc import ProcessConvert, builds_apart
from converter.pipeline.graph import (
    ConvertLayerFn,
    GraphSettings,
    LayerGraph,
    LayerReuse,
    create_private,
    fetch_blob,
)
from converter.pipeline.lower import NormaliseFn, normalise_layer
from converter.pipeline.options import (
    ConvertOptions,
    ConvertResult,
    LayerOutcome,
    PlatformResult,
    destination_tag,
    resolve_encoding,
)
from converter.pipeline.progress import ProgressCallback
from converter.reference import Digest, Location
from converter.transports.base import ImageSink, ImageSource, ReferrerSink


@contextlib.contextmanager
def private_workdir(parent: Path | None) -> Iterator[Path]:
    """A fresh 0700 directory under ``parent`` (or the temp dir), removed on any exit."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="erofs-convert-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def layer_engine(convert: ConvertLayerFn, options: ConvertOptions) -> ConvertLayerFn:
    """The layer engine to run: ``convert``, or for the default engine with
    ``options.resolved_processes()``, the same engine in build processes of its own."""
    if convert is default_convert_layer and options.resolved_processes():
        return ProcessConvert()
    return convert


class _Run:
    """State of one ``convert_image`` call."""

    def __init__(self, source: ImageSource, src_ref: Location, sink: ImageSink, dest_ref: Location, *,
                 options: ConvertOptions, progress: ProgressCallback | None, log: Any, workdir: Path,
                 convert: ConvertLayerFn, normalise: NormaliseFn) -> None:
        self.source = source
        self.src_ref = src_ref
        self.sink = sink
        self.dest_ref = dest_ref
        self.options = options
        self.progress = progress
        self.log = log
        self.workdir = workdir
        self.convert = layer_engine(convert, options)
        self.normalise = normalise
        self.image = str(src_ref)
        self._cancel = threading.Event()
        self._blob_seq = 0
        # Each digest is visited once per run: a hostile index can list one child many times at
        # every level (fan-out ** depth visits otherwise). ``_manifests`` keeps the source
        # manifests already fetched for conversion, so --merge-index does not fetch them again.
        self._copied: set[Digest] = set()
        self._copied_blobs: set[Digest] = set()
        self._manifests: dict[Digest, tuple[bytes, str]] = {}
        self.encoding = resolve_encoding(options.encoding, options.profile)

    def provenance(self, digest: Digest) -> Provenance:
        return Provenance(source_digest=digest, fmt=str(self.options.fmt),
                          profile=self.options.profile, version=self.options.tool_version,
                          platforms=platform_selection(self.options.platforms),
                          builder=LayerOptions(fmt=self.options.fmt, builder=self.options.builder).resolved_builder(),
                          build_time=self.options.build_time, encoding=self.encoding.canonical())

    # -- one platform -------------------------------------------------------------------------

    def subject(self, media_type: str, digest: Digest, size: int) -> Descriptor | None:
        """The source as the ``subject`` of what we push, unless ``options.referrer`` is off."""
        return subject_descriptor(media_type, digest, size) if self.options.referrer else None

    def convert_platform(self, manifest: Manifest, digest: Digest, platform: Platform | None,
                         subject: Descriptor | None) -> tuple[PlatformResult, bytes]:
        """Convert one image manifest; blobs and config are pushed, the manifest is returned."""
        what = f"{self.image}@{digest}"
        check_source_layers(manifest, image=what)
        config_bytes = self.source.get_blob_bytes(manifest.config.digest, max_size=MAX_CONFIG_SIZE)
        config = parse_config(config_bytes, descriptor=manifest.config, what=f"config of {what}")
        if len(config.diff_ids) != len(manifest.layers):
            # Checked here, before any layer is pulled, and again by rewrite_config.
            raise ImageError(f"parsing config of {what}: rootfs.diff_ids has {len(config.diff_ids)} entries "
                             f"but the manifest has {len(manifest.layers)} layers")
        platform = platform or config.platform
        label = str(platform)
        log = self.log.bind(platform=label, manifest=digest.short)
        log.info("platform_conversion_started", layers=len(manifest.layers))
        settings = GraphSettings(
            source=self.source, sink=self.sink, image=self.image, platform=label, fmt=self.options.fmt,
            builder=self.options.builder, build_time=self.options.build_time,
            jobs=self.options.resolved_jobs(), run_ahead=self.options.run_ahead, prepass=self.options.prepass,
            convert=self.convert, normalise=self.normalise, progress=self.progress, log=log,
            max_expanded=self.options.max_expanded, max_entries=self.options.max_entries,
            encoding=self.encoding, source_diff_ids=tuple(str(d) for d in config.diff_ids),
            reuse=self.convert if isinstance(self.convert, LayerReuse) else None,
            overlap_builds=builds_apart(self.convert),
        )
        graph_dir = self.workdir / f"m-{digest.hex[:16]}"
        built = LayerGraph(settings, manifest.layers, workdir=graph_dir).run()
        zstd = self.encoding.zstd
        layers = [NewLayer(digest=b.digest, size=b.size, zstd=zstd,
                           uncompressed_digest=(b.diff_id or b.digest) if zstd else None,
                           annotations=b.annotations) for b in built]
        new_config = rewrite_config(config_bytes, descriptor=manifest.config, layers=layers,
                                    source_layers=len(manifest.layers), image=what)
        new_manifest = build_manifest(manifest, config=new_config, layers=layers,
                                      profile=self.options.profile, provenance=self.provenance(digest),
                                      subject=subject)
        self.push_bytes(new_config, new_manifest.config.digest)
        data = new_manifest.to_bytes()
        media_type = self.options.profile.layer_media_type(zstd=zstd)
        result = PlatformResult(
            platform=platform, source_manifest=digest, manifest=Digest.from_bytes(data),
            manifest_size=len(data), config=new_manifest.config.digest,
            layers=tuple(LayerOutcome(index=b.index, source_digest=b.source.digest, source_size=b.source.size,
                                      digest=b.digest, size=b.size, media_type=media_type, push=b.push)
                         for b in built),
        )
        log.info("platform_converted", digest=str(result.manifest), config=str(result.config),
                 layers=len(built), size=sum(b.size for b in built),
                 source_size=sum(b.source.size for b in built))
        return result, data

    # -- pushing ------------------------------------------------------------------------------

    def _tmp(self, stem: str) -> Path:
        self._blob_seq += 1
        return self.workdir / f"{stem}-{self._blob_seq:04d}"

    @contextlib.contextmanager
    def _pushing(self) -> Iterator[None]:
        """Name the source image in a push's error: the sink's message names only the destination."""
        try:
            yield
        except ConverterError as exc:
            raise PushFailed(f"converting {self.image}: {exc}", image=self.image, cause=exc) from exc

    def put_manifest(self, data: bytes, media_type: str, tag: str | None, subject: Descriptor | None = None
                     ) -> Digest:
        """``sink.put_manifest``, with a failure naming the source image; a manifest with a
        ``subject`` is then listed among the subject's referrers where the sink must do that.
        Nothing is pushed once the calling thread's ``CancelScope`` is cancelled (a mirror run
        that got SIGTERM)."""
        scope = current_scope()
        if scope is not None:
            scope.check(f"converting {self.image}: pushing to {self.dest_ref}")
        with self._pushing():
            pushed = self.sink.put_manifest(data, media_type, tag)
            if subject is not None and isinstance(self.sink, ReferrerSink):
                self.sink.index_referrer(subject, data, media_type)
            return pushed

    def push_bytes(self, data: bytes, digest: Digest) -> None:
        """Push a small blob we made (a config) unless the sink has it."""
        with self._pushing():
            if self.sink.has_blob(digest):
                return
            path = self._tmp("blob")
            try:
                with create_private(path) as out:
                    out.write(data)
                self.sink.push_blob(path, digest, len(data))
            finally:
                path.unlink(missing_ok=True)

    def ensure_blob(self, desc: Descriptor) -> None:
        """Make an unchanged source blob available in the sink: exists, mount, else copy (once per run)."""
        if desc.digest in self._copied_blobs:
            return
        self._copied_blobs.add(desc.digest)
        if self.sink.has_blob(desc.digest):
            return
        origin = self.source.origin
        if origin is not None and self.sink.mount_blob(desc.digest, origin):
            self.log.debug("blob_mounted", digest=str(desc.digest),
                           origin=f"{origin.registry}/{origin.repository}")
            return
        if desc.urls and (desc.known_type is None or desc.known_type.is_foreign):
            # A foreign blob lives at its URLs; registries do not need (or want) it.
            self.log.info("foreign_blob_not_copied", digest=str(desc.digest))
            return
        path = self._tmp("copy")
        try:
            fetch_blob(self.source, desc, path, cancel=self._cancel, log=self.log)
            self.sink.push_blob(path, desc.digest, desc.size)
        finally:
            path.unlink(missing_ok=True)
        self.log.debug("blob_copied", digest=str(desc.digest), size=desc.size)

    def source_manifest(self, digest: Digest) -> tuple[bytes, str]:
        """A source manifest by digest: fetched once per run."""
        known = self._manifests.get(digest)
        if known is not None:
            return known
        data, media_type, _ = self.source.get_manifest(digest)
        return data, media_type

    def ensure_manifest(self, desc: Descriptor, depth: int = 0) -> None:
        """Copy a source manifest (or nested index) and everything it references into the sink,
        each digest once per run (however often indexes list it)."""
        if depth > 4:
            raise ImageError(f"copying {self.image}: indexes nested more than 4 deep")
        if desc.digest in self._copied:
            return
        self._copied.add(desc.digest)
        data, media_type = self.source_manifest(desc.digest)
        doc = parse_manifest(data, str(desc.media_type) or media_type, digest=desc.digest,
                             what=f"manifest {self.image}@{desc.digest}")
        if isinstance(doc, Index):
            for child in doc.manifests:
                self.ensure_manifest(child, depth + 1)
        else:
            for blob in (doc.config, *doc.layers):
                self.ensure_blob(blob)
        self.put_manifest(data, str(desc.media_type), None)

    # -- the image ----------------------------------------------------------------------------

    def run(self) -> ConvertResult:
        # Usage errors first, before anything is fetched.
        tag = destination_tag(self.dest_ref)
        self.options.resolved_jobs()
        self.options.check_limits()
        LayerOptions(fmt=self.options.fmt, builder=self.options.builder).resolved_builder()
        data, media_type, digest = self.source.get_manifest(None)
        doc = parse_manifest(data, media_type, digest=digest, what=f"manifest {self.image}")
        self.log.info("image_conversion_started", digest=str(digest), media_type=str(doc.media_type),
                      dest=str(self.dest_ref), format=str(self.options.fmt),
                      profile=self.options.profile.value)
        if isinstance(doc, Index):
            return self.run_index(doc, digest, len(data), tag)
        return self.run_manifest(doc, digest, data, media_type, tag)

    def run_manifest(self, manifest: Manifest, digest: Digest, source_data: bytes, media_type: str, tag: str
                     ) -> ConvertResult:
        config_platform = None
        if self.options.platforms:
            raw = self.source.get_blob_bytes(manifest.config.digest, max_size=MAX_CONFIG_SIZE)
            config_platform = parse_config(raw, descriptor=manifest.config,
                                           what=f"config of {self.image}").platform
            if not any(config_platform.matches(p) for p in self.options.platforms):
                wanted = ", ".join(str(p) for p in self.options.platforms)
                raise ImageError(f"converting {self.image}: the image is {config_platform}, not {wanted}")
        subject = self.subject(str(manifest.media_type), digest, len(source_data))
        result, data = self.convert_platform(manifest, digest, config_platform, subject)
        if not self.options.merge_index:
            pushed = self.put_manifest(data, MediaType.OCI_MANIFEST, tag, subject)
            return self.finish(pushed, MediaType.OCI_MANIFEST, len(data), tag, digest, (result,))
        # --merge-index on a single manifest: an index holding the source, then the EROFS one.
        self.put_manifest(data, MediaType.OCI_MANIFEST, None, subject)
        source_desc = Descriptor(media_type=str(manifest.media_type), digest=digest, size=len(source_data),
                                 platform=result.platform)
        self._manifests[digest] = (source_data, media_type)
        self.ensure_manifest(source_desc)
        entry = ConvertedEntry(source=source_desc, manifest=erofs_entry(data, platform=result.platform))
        index = build_index(None, [entry], merge=True, provenance=self.provenance(digest), subject=subject)
        return self.push_index(index, tag, digest, (result,), IndexPlan(convert=(source_desc,)))

    def run_index(self, index: Index, digest: Digest, size: int, tag: str) -> ConvertResult:
        plan = plan_index(index, platforms=self.options.platforms, merge=self.options.merge_index,
                          image=self.image)
        for desc, reason in plan.dropped:
            self.log.info("index_entry_dropped", digest=str(desc.digest), media_type=str(desc.media_type),
                          platform=str(desc.platform) if desc.platform else None, reason=reason)
        results: list[PlatformResult] = []
        entries: list[ConvertedEntry] = []
        done: dict[Digest, bytes] = {}  # an index listing one manifest twice gets it converted once
        for desc in plan.convert:
            assert desc.platform is not None  # plan_index converts only entries with a platform
            new = done.get(desc.digest)
            if new is None:
                data, mt, mdigest = self.source.get_manifest(desc.digest)
                self._manifests[desc.digest] = (data, mt)
                manifest = parse_image_manifest(data, str(desc.media_type), digest=desc.digest,
                                                what=f"manifest {self.image}@{desc.digest}")
                subject = self.subject(str(manifest.media_type), mdigest, len(data))
                result, new = self.convert_platform(manifest, mdigest, desc.platform, subject)
                self.put_manifest(new, MediaType.OCI_MANIFEST, None, subject)
                results.append(result)
                done[desc.digest] = new
            entries.append(ConvertedEntry(source=desc, manifest=erofs_entry(new, platform=desc.platform)))
        if self.options.merge_index:
            dropped = {str(d.digest) for d, _ in plan.dropped}
            for desc in index.manifests:
                if str(desc.digest) not in dropped:
                    self.ensure_manifest(desc)
        subject = self.subject(str(index.media_type), digest, size)
        new_index = build_index(index, entries, plan=plan, merge=self.options.merge_index,
                                provenance=self.provenance(digest), subject=subject)
        return self.push_index(new_index, tag, digest, tuple(results), plan)

    def push_index(self, index: Index, tag: str, source_digest: Digest, results: tuple[PlatformResult, ...],
                   plan: IndexPlan) -> ConvertResult:
        data = index.to_bytes()
        pushed = self.put_manifest(data, MediaType.OCI_INDEX, tag, index.subject)
        return self.finish(pushed, MediaType.OCI_INDEX, len(data), tag, source_digest, results,
                           tuple((d.digest, reason) for d, reason in plan.dropped))

    def finish(self, digest: Digest, media_type: MediaType, size: int, tag: str, source_digest: Digest,
               results: tuple[PlatformResult, ...],
               dropped: tuple[tuple[Digest, str], ...] = ()) -> ConvertResult:
        self.log.info("image_converted", digest=str(digest), media_type=media_type.value, tag=tag,
                      platforms=len(results), dest=str(self.dest_ref))
        return ConvertResult(digest=digest, media_type=media_type, size=size, tag=tag,
                             source_digest=source_digest, platforms=results, dropped=dropped)


def convert_image(
    source: ImageSource,
    src_ref: Location,
    sink: ImageSink,
    dest_ref: Location,
    *,
    options: ConvertOptions,
    progress: ProgressCallback | None = None,
    log: Any = None,
    convert_layer: ConvertLayerFn = default_convert_layer,
    normalise: NormaliseFn = normalise_layer,
) -> ConvertResult:
    """Convert the image ``src_ref`` read from ``source`` and write it to ``dest_ref`` in ``sink``.

    ``convert_layer`` and ``normalise`` are seams for tests (defaults: the real layer engine).
    Raises ``ConverterError`` subclasses; a layer failure is a ``LayerFailed`` naming the
    image and the layer digest.
    """
    bound = (log or structlog.get_logger()).bind(image=str(src_ref))
    with private_workdir(options.workdir) as workdir:
        run = _Run(source, src_ref, sink, dest_ref, options=options, progress=progress, log=bound,
                   workdir=workdir, convert=convert_layer, normalise=normalise)
        try:
            return run.run()
        except ConverterError:
            raise
        except OSError as exc:
            raise ConverterError(f"converting {src_ref}: {exc.strerror or exc}") from exc
