"""``convert verify``: fetch a converted image, check its structure and, with a source, its contents."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from converter.convert.imagehash import sha256_file
from converter.erofs.reader import ErofsImage
from converter.errors import ConverterError
from converter.layers.model import Inode
from converter.oci.model import (
    MAX_CONFIG_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_image_manifest,
    parse_manifest,
)
from converter.oci.rewrite import Provenance, is_attestation
from converter.reference import Digest, Location, OciLayoutRef, Reference, parse_location
from converter.transports.base import ImageSource
from converter.transports.layout import LayoutSource
from converter.verify.content import FsckReader, SourceTree, TreeComparer, expected_tree
from converter.verify.report import Problem, Report
from converter.verify.structure import LayerFacts, check_image, image_profile, layer_profile

_CHUNK = 1 << 20
#: Opens an image location given as text (``REF`` or ``oci:DIR[:TAG]``): (source, display name).
SourceOpener = Callable[[str], tuple[ImageSource, Location]]


def provenance_source(image_name: str, digest: Digest) -> str | None:
    """Where a converted image's source is, going by its provenance (source digest and OCI
    ``subject``, both location-free): the converted image's own repository, by digest, which is
    where the default destination puts it. None when ``image_name`` is no such location."""
    try:
        loc = parse_location(image_name)
    except ConverterError:
        return None
    if isinstance(loc, Reference):
        return f"{loc.registry}/{loc.repository}@{digest}"
    if isinstance(loc, OciLayoutRef):
        return f"oci:{loc.path}"
    return None


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """What to verify: platforms (empty: all), the source (None: from the provenance; "" : none),
    the layer limits used to read source layers, and where temporary files go."""

    platforms: tuple[Platform, ...] = ()
    source: str | None = None
    max_expanded: int | None = None
    max_entries: int | None = None
    workdir: Path | None = None
    max_problems_per_layer: int = 100


@dataclass(slots=True)
class _Target:
    """One platform manifest to verify."""

    label: str
    manifest: Manifest
    digest: Digest
    entry: Descriptor | None


def verify_image(image: ImageSource, name: str, *, options: VerifyOptions, open_location: SourceOpener,
                 log: Any = None) -> Report:
    """Verify the image ``image`` (shown as ``name``); never raises for what it finds, only for
    what stops it (the image cannot be read at all)."""
    report = Report(image=name)
    raw, media_type, digest = image.get_manifest()
    report.digest = str(digest)
    doc = parse_manifest(raw, media_type, digest=digest, what=f"manifest of {name}")
    targets = list(_targets(image, doc, digest, options, report))
    if not targets:
        report.add(Problem(platform="", where="index", what="no EROFS manifest to verify (platform filter?)"))
    index_prov = Provenance.from_annotations(doc.annotations) if isinstance(doc, Index) else None
    with _workdir(options.workdir) as work:
        for target in targets:
            _verify_platform(image, target, report, options=options, open_location=open_location, work=work,
                             index_prov=index_prov)
            if log is not None:
                log.info("verify_platform_done", image=name, platform=target.label or "(single manifest)",
                         problems=len(report.problems), layers=report.layers_checked, files=report.files_compared)
    return report


def _targets(image: ImageSource, doc: Manifest | Index, digest: Digest, options: VerifyOptions,
             report: Report) -> Iterator[_Target]:
    if isinstance(doc, Manifest):
        yield _Target("", doc, digest, None)
        return
    for i, entry in enumerate(doc.manifests):
        plat = entry.platform
        if is_attestation(entry) or (plat is not None and plat.is_unknown):
            report.notes.append(f"index entry {i} ({entry.digest}): attestation, not checked")
            continue
        if options.platforms and (plat is None or not any(plat.matches(p) for p in options.platforms)):
            continue
        raw, mt, d = image.get_manifest(entry.digest)
        label = str(plat) if plat is not None else f"entry {i}"
        manifest = parse_image_manifest(raw, mt, digest=entry.digest, what=f"manifest {label} ({d})")
        kinds = [layer_profile(layer) for layer in manifest.layers]
        tar_only = manifest.layers and all(
            k is None and (layer.known_type is not None and layer.known_type.is_tar_layer)
            for k, layer in zip(kinds, manifest.layers, strict=True))
        if tar_only:
            report.notes.append(f"index entry {i} {label} ({entry.digest}): a tar image kept in the index, not checked")
            continue
        yield _Target(label, manifest, entry.digest, entry)


@contextmanager
def _workdir(base: Path | None) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="erofs-verify-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _fetch_blob(image: ImageSource, desc: Descriptor, out: Path) -> tuple[Digest, int]:
    """Copy a blob to ``out``; its sha256 and size as read."""
    h = hashlib.sha256()
    n = 0
    with image.open_blob(desc.digest, size=desc.size) as src, open(out, "wb") as f:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            f.write(chunk)
            n += len(chunk)
    return Digest("sha256", h.hexdigest()), n


def _unzstd(path: Path, out: Path) -> Digest:
    h = hashlib.sha256()
    with open(path, "rb") as src, open(out, "wb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
        while chunk := reader.read(_CHUNK):
            h.update(chunk)
            f.write(chunk)
    return Digest("sha256", h.hexdigest())


def source_manifest(src: ImageSource, ref: Location, digest: Digest | None,
                    config: ImageConfig) -> Manifest:
    """The source's manifest for the converted image's platform (``digest`` pins it, if given)."""
    raw, mt, _ = src.get_manifest(digest) if digest is not None else src.get_manifest()
    doc = parse_manifest(raw, mt, digest=digest, what=f"source manifest {ref}")
    if isinstance(doc, Manifest):
        return doc
    want = config.platform
    for entry in doc.manifests:
        p = entry.platform
        if p is not None and p.matches(Platform(want.os, want.architecture, want.variant)):
            raw, mt, _ = src.get_manifest(entry.digest)
            return parse_image_manifest(raw, mt, digest=entry.digest, what=f"source manifest {ref} {p}")
    raise ConverterError(f"source {ref} has no manifest for {want}")


def _verify_platform(image: ImageSource, target: _Target, report: Report, *, options: VerifyOptions,
                     open_location: SourceOpener, work: Path, index_prov: Provenance | None) -> None:
    label = target.label
    manifest = target.manifest

    def add(where: str, what: str, got: object = "", want: object = "", path: str = "") -> None:
        report.add(Problem(platform=label, where=where, what=what, got=str(got), want=str(want), path=path))

    try:
        config_bytes = image.get_blob_bytes(manifest.config.digest, max_size=MAX_CONFIG_SIZE)
        config = parse_config(config_bytes, descriptor=manifest.config, what=f"config {manifest.config.digest}")
    except ConverterError as exc:
        add("config", f"unreadable: {exc}")
        return
    if not label:
        cp = config.platform
        label = "/".join(x for x in (cp.os, cp.architecture, cp.variant) if x)
    profile = image_profile(manifest)
    count = len(manifest.layers)

    # The source, if there is one to compare with.
    source_layers: Sequence[Descriptor] | None = None
    source: ImageSource | None = None
    prov = Provenance.from_annotations(manifest.annotations) or index_prov
    source_text = options.source
    if source_text is None and prov is not None:
        source_text = provenance_source(report.image, prov.source_digest)
    if source_text:
        try:
            source, ref = open_location(source_text)
            pinned = prov.source_digest if (prov is not None and options.source is None) else None
            src_manifest = source_manifest(source, ref, pinned, config)
            source_layers = src_manifest.layers
            report.source = f"{source_text}" + (f"@{pinned}" if pinned else "")
        except ConverterError as exc:
            add("source", f"cannot be read ({source_text}): {exc}")
        if source_layers is not None and len(source_layers) != count:
            add("manifest", "layer count", count, f"{len(source_layers)} (source)")
            source_layers = None
    elif source_text is None:
        report.notes.append(f"{label or 'image'}: no source given or recorded; contents not compared")

    facts_list: list[LayerFacts] = []
    trees = _Trees(source, source_layers, options) if source is not None and source_layers is not None else None
    # The source tree of layer i is built in a worker thread while layer i-1 is compared (hashing,
    # decompression and file reads release the GIL), so verify costs about max(source, image).
    pending: tuple[int, str, Path, bool, Future[SourceTree | None]] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-source") as pool:
        try:
            for i, desc in enumerate(manifest.layers):
                where = f"layer {i + 1}/{count} {desc.digest}"
                fs_path, owned, facts = _fetch_layer(image, desc, i, count, work, report=report, label=label,
                                                     where=where)
                facts_list.append(facts)
                if trees is None:
                    _check_readable(fs_path, report=report, label=label, where=where)
                    if owned:
                        fs_path.unlink(missing_ok=True)
                    report.layers_checked += 1
                    continue
                future = pool.submit(trees.build, i, _epoch(fs_path))
                if pending is not None:
                    _finish_layer(*pending, report=report, label=label, options=options, trees=trees)
                pending = (i, where, fs_path, owned, future)
            if pending is not None and trees is not None:
                _finish_layer(*pending, report=report, label=label, options=options, trees=trees)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for problem in check_image(platform=label, manifest=manifest, config=config, layers=facts_list,
                               entry=target.entry, profile=profile):
        report.add(problem)


def _fetch_layer(image: ImageSource, desc: Descriptor, i: int, count: int, work: Path, *, report: Report,
                 label: str, where: str) -> tuple[Path, bool, LayerFacts]:
    """Layer ``i`` as an EROFS image file, whether that file is ours to delete, and what was
    measured on the way. Blobs are downloaded (an outer zstd unwrapped); a raw blob of a local
    OCI layout is read where it is."""
    found = layer_profile(desc)
    zstd = bool(found and found[1])
    blob = work / f"blob-{i}"
    fs_path = work / f"erofs-{i}"
    blob_digest: Digest | None = None
    blob_size = 0
    erofs_digest: Digest | None = None
    in_place = image.blob_path(desc.digest) if isinstance(image, LayoutSource) and not zstd else None
    try:
        if in_place is not None and in_place.is_file():
            blob_digest, blob_size = _hash_file(in_place)
            erofs_digest = blob_digest
            return in_place, False, LayerFacts(index=i, count=count, descriptor=desc, blob_digest=blob_digest,
                                               blob_size=blob_size, erofs_digest=erofs_digest, zstd=zstd)
        blob_digest, blob_size = _fetch_blob(image, desc, blob)
        if zstd:
            erofs_digest = _unzstd(blob, fs_path)
            blob.unlink()
        else:
            blob.rename(fs_path)
            erofs_digest = blob_digest
    except (ConverterError, zstandard.ZstdError, OSError) as exc:
        report.add(Problem(platform=label, where=where, what=f"blob unreadable: {exc}"))
    return fs_path, True, LayerFacts(index=i, count=count, descriptor=desc, blob_digest=blob_digest,
                                     blob_size=blob_size, erofs_digest=erofs_digest, zstd=zstd)


def _hash_file(path: Path) -> tuple[Digest, int]:
    digest, size = sha256_file(path)
    return Digest.parse(digest), size


def _epoch(fs_path: Path) -> int:
    """The build time in an EROFS superblock (what implicit directories get), 0 if unreadable."""
    try:
        with ErofsImage.open(fs_path) as img:
            return img.superblock.epoch
    except (ConverterError, OSError):
        return 0


class _Trees:
    """Builds the expected trees of the source layers in order, each over the ones below it."""

    def __init__(self, source: ImageSource, layers: Sequence[Descriptor], options: VerifyOptions) -> None:
        self._source = source
        self._layers = layers
        self._options = options
        self._lowers: list[Inode] = []
        self.failed: str | None = None
        self.failed_at = -1

    def digest(self, i: int) -> str:
        return str(self._layers[i].digest)

    def build(self, i: int, build_time: int) -> SourceTree | None:
        """The tree of source layer ``i``; None once a layer could not be read (``failed`` says why)."""
        if self.failed is not None:
            return None
        desc = self._layers[i]
        mt = desc.known_type
        try:
            with self._source.open_blob(desc.digest, size=desc.size) as src:
                tree = expected_tree(src, lowers=list(self._lowers), media_type=str(mt) if mt is not None else None,
                                     layer=str(desc.digest), build_time=build_time,
                                     max_expanded=self._options.max_expanded, max_entries=self._options.max_entries)
        except ConverterError as exc:
            self.failed = f"source layer {desc.digest} unreadable: {exc}"
            self.failed_at = i
            return None
        self._lowers.append(tree.root)
        return tree


def _finish_layer(i: int, where: str, fs_path: Path, owned: bool, future: Future[SourceTree | None], *,
                  report: Report,
                  label: str, options: VerifyOptions, trees: _Trees) -> None:
    try:
        tree = future.result()
        if tree is None:
            what = trees.failed if i == trees.failed_at else \
                f"contents not compared: source layer {trees.failed_at + 1} below could not be read"
            report.add(Problem(platform=label, where=where, what=what or "contents not compared"))
            _check_readable(fs_path, report=report, label=label, where=where)
        else:
            src_digest = trees.digest(i)
            if tree.digest != src_digest:
                report.add(Problem(platform=label, where=where, what="source layer digest", got=tree.digest,
                                   want=src_digest))
            _compare_layer(tree, fs_path, report=report, label=label, where=where, options=options)
    finally:
        if owned:
            fs_path.unlink(missing_ok=True)
        report.layers_checked += 1


def _check_readable(fs_path: Path, *, report: Report, label: str, where: str) -> None:
    if not fs_path.exists():
        return
    try:
        with ErofsImage.open(fs_path) as img:
            for _ in img.walk():
                pass
    except ConverterError as exc:
        report.add(Problem(platform=label, where=where, what=f"not a readable EROFS image: {exc}"))


def _compare_layer(tree: SourceTree, fs_path: Path, *, report: Report, label: str, where: str,
                   options: VerifyOptions) -> None:
    """Compare one EROFS layer with the expected tree of its source layer, entry by entry."""
    try:
        img = ErofsImage.open(fs_path)
    except (ConverterError, OSError) as exc:
        report.add(Problem(platform=label, where=where, what=f"not a readable EROFS image: {exc}"))
        return
    with img:
        fallback = FsckReader(fs_path, workdir=options.workdir)
        comparer = TreeComparer(img, tree.root, fallback=fallback)
        shown = 0
        try:
            for diff in comparer.differences():
                shown += 1
                if shown <= options.max_problems_per_layer:
                    report.add(Problem(platform=label, where=where, what=diff.what, got=diff.got, want=diff.want,
                                       path=diff.path))
        except ConverterError as exc:
            report.add(Problem(platform=label, where=where, what=f"reading the EROFS image failed: {exc}"))
        if shown > options.max_problems_per_layer:
            report.add(Problem(platform=label, where=where,
                               what=f"... and {shown - options.max_problems_per_layer} more differences"))
        report.files_compared += comparer.files
        if fallback.used:
            shown_paths = ", ".join(fallback.used[:5]) + (" ..." if len(fallback.used) > 5 else "")
            report.notes.append(f"{label} {where}: {len(fallback.used)} file(s) our reader does not decode were "
                                f"read with fsck.erofs --extract: {shown_paths}")


__all__ = ["SourceOpener", "VerifyOptions", "verify_image"]
