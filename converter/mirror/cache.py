"""The shared layer cache: a converted layer is built once, then mounted wherever it is needed.

Why: mirrored images share base layers (every ``debian:bookworm`` derivative starts with the
same one), and building EROFS from a layer costs far more than moving a blob. Workers on
different machines must share what they built, so the cache lives in the destination
registry itself, in a ``cache_repo`` repository: one small OCI artifact manifest per key,
tagged ``cache-<sha256 of the key>``::

    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
     "artifactType": "application/vnd.io.github.erofs-converter.layer-cache.v1",
     "config": <the empty descriptor, {}>,
     "layers": [<the converted EROFS blob: digest, size, the profile's media type>],
     "annotations": {"io.github.erofs-converter.cache.key": <the key as canonical JSON>,
                     "io.github.erofs-converter.cache.diff-id": <the blob's DiffID>,
                     "io.github.erofs-converter.cache.source-diff-id": <the source layer's DiffID>}}

Listing the blob as the artifact's layer keeps it alive in the cache repository (registry
garbage collection keeps referenced blobs) and makes it mountable from there.

**The key** is what determines the bytes of a converted layer: the source layer digest, the
*chain* of source layers below it (an upper layer's implicit directories take their metadata
from the lower layers, and a cross-layer hard link copies a lower file, so the same tar on a
different base converts differently: keyed by its own digest alone, a hit could be wrong),
the format with its options, the profile, the builder, the build time (SOURCE_DATE_EPOCH),
the tool version and the mkfs.erofs version (when mkfs.erofs builds). A layer that appears
on different chains within one image is not cached at all.

**A hit** is only used after checks, so a stale or mixed-up entry can never make an image
wrong — at worst it is not used. (The checks compare public data: they are no defence against
someone who can push to the cache repository, which must be as trusted as the destination;
see docs/security.md.) The entry must be ours and carry exactly our key; the blob must exist
(HEAD in the destination, else a cross-repository mount from the cache repository, which
fails when the blob is gone) with the entry's size; its EROFS superblock (read from the first bytes of
the blob) must carry the volume UUID derived from the entry's source DiffID
(``converter.convert.layer.layer_uuid``), which catches an entry pointing at another layer's
blob. Any failure is logged and the layer is converted as if there were no entry; the new
result then overwrites the bad entry. Registry errors talking to the cache are misses too.
Once the source layer has been read (a hit still reads it for its tree), its DiffID must be
the entry's, or the layer fails: the source stream is spent by then, so it cannot be rebuilt
(only a tampered entry gets there, since the key holds the source blob digest).

**Integration** is through the pipeline's ``convert_layer`` seam (``convert_image(...,
convert_layer=...)``): ``CachingConverter`` wraps the real converter. On a hit it reads the
source stream once, metadata only, for the layer's tree (the graph needs it for the layers
above) and returns the cached digest and size without writing a file; the graph's push stage
then finds the blob by HEAD. On a miss it builds, pushes the blob to the destination itself
(so recording the entry is a cheap mount into the cache repository, not a second upload) and
records the entry. Within one process, two images needing the same key at the same time do
not both build it: the second waits for the first (``LayerCache.claim``). Limits of the seam:
the graph pulls every source layer before it calls the converter, so a hit saves the build
and the upload but not the download (skipping it needs the graph to ask before pulling);
and a hit's blob is only checked, not held, so a registry garbage collection between the
check and the graph's push stage fails that layer (it is never replaced by wrong content).

A local JSON file (optional) remembers entries between runs on one machine; it only saves
the look-up, every check above still runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog
import zstandard

from converter.convert.layer import Builder, LayerOptions, LayerResult, LayerTree, layer_uuid, read_layer
from converter.erofs.format import EROFS_MAGIC, SUPERBLOCK, SUPERBLOCK_OFFSET, Superblock
from converter.erofs.tools import erofs_utils
from converter.erofs.zcodec import Codec, library_version
from converter.errors import CacheEntryInvalid, ConverterError, ErofsFormatError, NotFound, RegistryError
from converter.layers.filedata import FileData
from converter.layers.model import DirMeta, Inode, LowerView, NodeKind
from converter.mirror.jobs import Repository
from converter.oci.mediatypes import MediaType, Profile
from converter.oci.model import Descriptor, Manifest, canonical_json, parse_image_manifest, parse_manifest
from converter.oci.rewrite import ANNOTATION_PREFIX
from converter.pipeline.buildproc import builds_apart
from converter.pipeline.graph import ConvertLayerFn
from converter.pipeline.lower import DiscardSink, EmptyData, NodeFinder
from converter.reference import Digest, Reference
from converter.registry.client import RegistryClient
from converter.transports.base import ImageSink, ImageSource
from converter.transports.registry import retry_blob_unknown

log = structlog.get_logger()

ARTIFACT_TYPE = "application/vnd.io.github.erofs-converter.layer-cache.v1"
ANN_CACHE_KEY = ANNOTATION_PREFIX + "cache.key"
ANN_CACHE_DIFF_ID = ANNOTATION_PREFIX + "cache.diff-id"
ANN_CACHE_SOURCE_DIFF_ID = ANNOTATION_PREFIX + "cache.source-diff-id"
TAG_PREFIX = "cache-"
#: 2: the volume UUID comes from the source DiffID, not the blob digest (version 1 blobs differ).
KEY_VERSION = 2
EMPTY_CONFIG = b"{}"  # image-spec's empty descriptor content (manifest.md, "guidance for an empty descriptor")
EMPTY_DESCRIPTOR = Descriptor(media_type=MediaType.OCI_EMPTY, digest=Digest.from_bytes(EMPTY_CONFIG),
                              size=len(EMPTY_CONFIG))
LOCAL_FILE_VERSION = 2
_HEAD_BYTES = SUPERBLOCK_OFFSET + SUPERBLOCK.size


# --- keys and chains --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Everything that decides a converted layer's bytes (see the module docstring)."""

    layer: Digest
    lower: str  # chain ID of the source layers below, "" for the bottom layer
    fmt: str
    profile: str
    builder: str
    build_time: int
    tool_version: str
    erofs_utils: str  # mkfs.erofs version when it builds, the python builder's compression library, or ""
    encoding: str = "none"  # BlobEncoding.canonical(): zstd wrapping, chunk size, dm-verity

    @property
    def zstd(self) -> bool:
        return self.encoding.split(",", 1)[0] == "zstd"

    def canonical(self) -> str:
        """The key as canonical JSON (sorted keys): what the entry carries and what is hashed.

        ``encoding`` is part of it only when not "none", so keys of plain raw layers stay what
        they were before blob encodings existed.
        """
        doc: dict[str, Any] = {"v": KEY_VERSION, "layer": str(self.layer), "lower": self.lower, "format": self.fmt,
                               "profile": self.profile, "builder": self.builder, "build_time": self.build_time,
                               "tool": self.tool_version, "erofs_utils": self.erofs_utils}
        if self.encoding != "none":
            doc["encoding"] = self.encoding
        return canonical_json(dict(sorted(doc.items()))).decode("utf-8")

    @property
    def hex(self) -> str:
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    @property
    def tag(self) -> str:
        """The cache repository tag of this key's entry."""
        return TAG_PREFIX + self.hex


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached result: the converted blob's digest, size and DiffID, the DiffID of the source
    layer it was made from (its volume UUID derives from that) and the layer descriptor's
    encoding annotations (dm-verity, chunk index)."""

    digest: Digest
    size: int
    diff_id: Digest
    source_diff_id: Digest
    annotations: Mapping[str, str] = field(default_factory=dict)


def next_chain(lower: str, layer: str) -> str:
    """The chain ID after ``layer`` on top of ``lower`` (OCI ChainID, over source blob digests)."""
    if not lower:
        return layer
    return "sha256:" + hashlib.sha256(f"{lower} {layer}".encode("ascii")).hexdigest()


def layer_chains(source: ImageSource, *, image: str) -> dict[str, str | None]:
    """Source layer digest → chain ID of the layers below it, for every image manifest of
    ``source``'s image; None for a layer found on two different chains (it is not cached)."""
    data, media_type, digest = source.get_manifest(None)
    doc = parse_manifest(data, media_type, digest=digest, what=f"manifest {image}")
    manifests: list[Manifest] = []
    if isinstance(doc, Manifest):
        manifests.append(doc)
    else:
        for entry in doc.manifests:
            if entry.known_type is None or not entry.known_type.is_manifest:
                continue
            child, child_type, _ = source.get_manifest(entry.digest)
            manifests.append(parse_image_manifest(child, str(entry.media_type) or child_type, digest=entry.digest,
                                                  what=f"manifest {image}@{entry.digest}"))
    chains: dict[str, str | None] = {}
    for manifest in manifests:
        lower = ""
        for desc in manifest.layers:
            layer = str(desc.digest)
            if layer in chains and chains[layer] != lower:
                chains[layer] = None
            else:
                chains[layer] = lower
            lower = next_chain(lower, layer)
    return chains


# --- the local file ---------------------------------------------------------------------------


class LocalCacheFile:
    """Entries remembered on this machine, as JSON: ``{"version": 1, "entries": {REPO: {HEX: …}}}``.

    Written atomically (temporary file, then rename) and merged with what is on disk at each
    save, so concurrent processes may lose an entry but never corrupt the file. An unreadable
    file is ignored (and replaced at the next save): it is only a shortcut.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self, repo: Repository) -> dict[str, CacheEntry]:
        entries: dict[str, CacheEntry] = {}
        for hex_, raw in self._read().get(str(repo), {}).items():
            try:
                annotations = raw.get("annotations", {})
                if not isinstance(annotations, dict) or not all(
                        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
                    raise ValueError("annotations")
                entries[hex_] = CacheEntry(digest=Digest.parse(raw["digest"]), size=int(raw["size"]),
                                           diff_id=Digest.parse(raw["diff_id"]),
                                           source_diff_id=Digest.parse(raw["source_diff_id"]), annotations=annotations)
            except (KeyError, TypeError, ValueError, ConverterError):
                log.warning("layer_cache_local_entry_ignored", path=str(self.path), key=hex_)
        return entries

    def update(self, repo: Repository, hex_: str, entry: CacheEntry | None) -> None:
        """Set (or with None remove) one entry."""
        with self._lock:
            data = self._read()
            repo_entries = data.setdefault(str(repo), {})
            if entry is None:
                repo_entries.pop(hex_, None)
            else:
                repo_entries[hex_] = {"digest": str(entry.digest), "size": entry.size,
                                      "diff_id": str(entry.diff_id), "source_diff_id": str(entry.source_diff_id)}
                if entry.annotations:
                    repo_entries[hex_]["annotations"] = dict(entry.annotations)
            self._write(data)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("layer_cache_local_file_unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(doc, dict) or doc.get("version") != LOCAL_FILE_VERSION:
            return {}
        entries = doc.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".layer-cache-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": LOCAL_FILE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning("layer_cache_local_file_unwritable", path=str(self.path), error=str(exc))


# --- the cache --------------------------------------------------------------------------------


class LayerCache:
    """The cache in repository ``repo`` (see the module docstring); share one per process.

    Thread-safe: entries found or stored are remembered in memory, ``claim`` makes builds of
    one key within the process happen once.
    """

    def __init__(self, client: RegistryClient, repo: Repository, *, local: LocalCacheFile | None = None,
                 verify_superblock: bool = True) -> None:
        self.client = client
        self.repo = repo
        self.local = local
        self.verify_superblock = verify_superblock
        self._lock = threading.Lock()
        self._memory: dict[str, CacheEntry] = local.load(repo) if local is not None else {}
        self._inflight: dict[str, threading.Event] = {}
        self._empty_lock = threading.Lock()
        self._empty_pushed = False

    def __repr__(self) -> str:
        return f"LayerCache({self.repo})"

    # -- look-up ----------------------------------------------------------------------------

    def remembered(self, key: CacheKey) -> CacheEntry | None:
        """The entry this process (or the local file) knows, unchecked."""
        with self._lock:
            return self._memory.get(key.hex)

    def fetch(self, key: CacheKey) -> CacheEntry | None:
        """The entry stored in the registry, or None; CacheEntryInvalid if it is not a valid entry
        for ``key``. Registry errors other than 404 propagate (callers treat them as misses)."""
        try:
            data, media_type, digest = self.client.get_manifest(self.repo.registry, self.repo.repository, key.tag)
        except NotFound:
            return None
        try:
            manifest = parse_image_manifest(data, str(media_type), digest=digest,
                                            what=f"cache entry {self.repo}:{key.tag}")
        except ConverterError as exc:
            raise CacheEntryInvalid(str(exc)) from exc
        if manifest.artifact_type != ARTIFACT_TYPE:
            raise CacheEntryInvalid(f"artifactType is {manifest.artifact_type!r}, not {ARTIFACT_TYPE}")
        if manifest.annotations.get(ANN_CACHE_KEY) != key.canonical():
            raise CacheEntryInvalid("the entry was stored for another key")
        if len(manifest.layers) != 1:
            raise CacheEntryInvalid(f"the entry lists {len(manifest.layers)} blobs, not 1")
        blob = manifest.layers[0]
        diff_id_text = manifest.annotations.get(ANN_CACHE_DIFF_ID, "")
        try:
            diff_id = Digest.parse(diff_id_text)
        except ConverterError:
            raise CacheEntryInvalid(f"malformed DiffID {diff_id_text!r}") from None
        # A raw EROFS blob's DiffID is its own digest (also with internal compression, spec §5.2);
        # a +zstd blob's is the digest of its decompressed image data, never the blob's.
        if (diff_id == blob.digest) == key.zstd:
            raise CacheEntryInvalid(f"DiffID {diff_id.short} does not fit the blob {blob.digest.short}")
        source_text = manifest.annotations.get(ANN_CACHE_SOURCE_DIFF_ID, "")
        try:
            source_diff_id = Digest.parse(source_text)
        except ConverterError:
            raise CacheEntryInvalid(f"malformed source DiffID {source_text!r}") from None
        return CacheEntry(digest=blob.digest, size=blob.size, diff_id=diff_id, source_diff_id=source_diff_id,
                          annotations=dict(blob.annotations))

    def check_blob(self, key: CacheKey, entry: CacheEntry, *, registry: str, repository: str) -> None:
        """Read the blob's superblock from ``registry/repository``: EROFS, with this layer's UUID."""
        if not self.verify_superblock:
            return
        with self.client.open_blob(registry, repository, entry.digest, size=entry.size) as reader:
            if key.zstd:
                try:
                    with zstandard.ZstdDecompressor().stream_reader(reader, closefd=False) as plain:
                        head = _read_up_to(plain, _HEAD_BYTES)
                except zstandard.ZstdError:
                    raise CacheEntryInvalid(f"blob {entry.digest.short} is not zstd") from None
            else:
                head = _read_up_to(reader, _HEAD_BYTES)
        try:
            superblock = Superblock.unpack(head[SUPERBLOCK_OFFSET:])
        except ErofsFormatError:
            raise CacheEntryInvalid(f"blob {entry.digest.short} is too small to be an EROFS image") from None
        if superblock.magic != EROFS_MAGIC:
            raise CacheEntryInvalid(f"blob {entry.digest.short} is not an EROFS image")
        if superblock.uuid != layer_uuid(str(entry.source_diff_id)).bytes:
            raise CacheEntryInvalid(f"blob {entry.digest.short} was not converted from layer {key.layer.short}")

    def materialise(self, key: CacheKey, entry: CacheEntry, dest: Reference) -> str:
        """Make the entry's blob available in ``dest``'s repository: "exists" (HEAD) or "mounted".

        Raises CacheEntryInvalid when the blob is gone, has another size or fails the superblock
        check; nothing unchecked is ever mounted into the destination.
        """
        size = self.client.blob_exists(dest.registry, dest.repository, entry.digest)
        if size is not None:
            if size not in (-1, entry.size):
                raise CacheEntryInvalid(f"blob {entry.digest.short} has {size} bytes, the entry says {entry.size}")
            self.check_blob(key, entry, registry=dest.registry, repository=dest.repository)
            return "exists"
        if dest.registry != self.repo.registry:
            raise CacheEntryInvalid(f"the cache is on {self.repo.registry}, the destination on {dest.registry}")
        size = self.client.blob_exists(self.repo.registry, self.repo.repository, entry.digest)
        if size is None:
            raise CacheEntryInvalid(f"blob {entry.digest.short} is gone from {self.repo}")
        if size not in (-1, entry.size):
            raise CacheEntryInvalid(f"blob {entry.digest.short} has {size} bytes, the entry says {entry.size}")
        self.check_blob(key, entry, registry=self.repo.registry, repository=self.repo.repository)
        if not self.client.mount_blob(dest.registry, dest.repository, entry.digest, self.repo.repository):
            raise CacheEntryInvalid(f"the registry would not mount blob {entry.digest.short} from {self.repo}")
        return "mounted"

    def forget(self, key: CacheKey) -> None:
        """Drop a rejected entry from memory and the local file (the registry's is overwritten later)."""
        with self._lock:
            dropped = self._memory.pop(key.hex, None)
        if dropped is not None and self.local is not None:
            self.local.update(self.repo, key.hex, None)

    def remember(self, key: CacheKey, entry: CacheEntry) -> None:
        with self._lock:
            known = self._memory.get(key.hex)
            self._memory[key.hex] = entry
        if known != entry and self.local is not None:
            self.local.update(self.repo, key.hex, entry)

    # -- storing ----------------------------------------------------------------------------

    def store(self, key: CacheKey, entry: CacheEntry, *, media_type: str, origin: Reference,
              path: Path) -> None:
        """Record ``entry``: put its blob into the cache repository (mounted from ``origin``'s
        repository, else uploaded from ``path``), then the entry manifest under the key's tag."""
        registry, repository = self.repo.registry, self.repo.repository
        mounted = origin.registry == registry and self.client.mount_blob(
            registry, repository, entry.digest, origin.repository)
        if not mounted:
            self.client.push_blob(registry, repository, entry.digest, entry.size, path)
        with self._empty_lock:  # one push of the empty config (see retry_blob_unknown for why)
            if not self._empty_pushed:
                self.client.push_blob(registry, repository, EMPTY_DESCRIPTOR.digest, EMPTY_DESCRIPTOR.size,
                                      io.BytesIO(EMPTY_CONFIG))
                self._empty_pushed = True
        manifest = Manifest(
            media_type=MediaType.OCI_MANIFEST,
            artifact_type=ARTIFACT_TYPE,
            config=EMPTY_DESCRIPTOR,
            layers=(Descriptor(media_type=media_type, digest=entry.digest, size=entry.size,
                               annotations=dict(entry.annotations)),),
            annotations={ANN_CACHE_KEY: key.canonical(), ANN_CACHE_DIFF_ID: str(entry.diff_id),
                         ANN_CACHE_SOURCE_DIFF_ID: str(entry.source_diff_id)},
        )
        data = manifest.to_bytes()
        retry_blob_unknown(lambda: self.client.put_manifest(registry, repository, key.tag, data,
                                                            MediaType.OCI_MANIFEST),
                           what=f"pushing cache entry {self.repo}:{key.tag}")
        self.remember(key, entry)

    # -- single flight ----------------------------------------------------------------------

    @contextlib.contextmanager
    def claim(self, key: CacheKey) -> Iterator[None]:
        """Hold ``key`` while looking it up and, on a miss, building it; another thread asking for
        the same key waits here until the holder is done (then usually finds its entry)."""
        while True:
            with self._lock:
                event = self._inflight.get(key.hex)
                if event is None:
                    event = threading.Event()
                    self._inflight[key.hex] = event
                    break
            event.wait()
        try:
            yield
        finally:
            with self._lock:
                del self._inflight[key.hex]
            event.set()


def _read_up_to(reader: BinaryIO, count: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < count:
        chunk = reader.read(count - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


# --- per-image statistics ---------------------------------------------------------------------


class LayerStats:
    """What happened to the layers of one image (thread-safe counters for the report)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.built = 0  # converted here
        self.reused = 0  # cache hits: mounted or found, not rebuilt
        self.mounted = 0  # hits whose blob was mounted from the cache repository
        self.fallbacks = 0  # entries rejected by a check (then built)
        self.stored = 0  # entries recorded

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"built": self.built, "reused": self.reused, "mounted": self.mounted,
                    "fallbacks": self.fallbacks, "stored": self.stored}


class _Wrapper:
    """A ``convert_layer`` wrapped around another (``inner``), which may build apart."""

    inner: ConvertLayerFn

    @property
    def separate_process(self) -> bool:
        """Whether the wrapped engine builds in processes of its own (the graph overlaps builds)."""
        return builds_apart(self.inner)


class CountingConverter(_Wrapper):
    """``convert_layer`` counting builds, for images converted without a cache."""

    def __init__(self, inner: ConvertLayerFn, stats: LayerStats) -> None:
        self.inner = inner
        self.stats = stats

    def __call__(self, src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
                 media_type: str | None = None, layer: str = "", workdir: Path | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_tree: Callable[[Inode], None] | None = None, source_digest: str | None = None,
                 on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
        result = self.inner(src, out_path, options=options, lower=lower, media_type=media_type, layer=layer,
                            workdir=workdir, progress=progress, on_tree=on_tree, source_digest=source_digest,
                            on_data_final=on_data_final)
        self.stats.add(built=1)
        return result


# --- the convert_layer wrapper ----------------------------------------------------------------


class _MetadataLower:
    """A lower view whose files have no contents: reading a reused layer's tree needs a
    cross-layer hard link's metadata only, not the lower layer's bytes (what the pre-pass does)."""

    def __init__(self, inner: LowerView) -> None:
        self._inner = inner

    def dir_meta(self, path: bytes) -> DirMeta | None:
        return self._inner.dir_meta(path)

    def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
        if isinstance(self._inner, NodeFinder):  # the graph's views: the node without its bytes
            found = self._inner.find(path)
            if found is None or found[1].kind is not NodeKind.REG:
                return None
            return found[1], EmptyData()
        return self._inner.open_file(path)


def read_tree(src: BinaryIO, *, options: LayerOptions, lower: LowerView | None, media_type: str | None,
              layer: str, progress: Callable[[int], None] | None = None,
              source_digest: str | None = None) -> LayerTree:
    """A layer's normalised tree, metadata only, with the digest and size of the bytes read and
    its DiffID (read under the same limits as a build: a cache hit must not let a hostile layer
    through). ``source_digest``: as for ``read_layer``, a digest the caller already verified."""
    return read_layer(src, sink=DiscardSink(), options=options,
                      lower=_MetadataLower(lower) if lower is not None else None,
                      media_type=media_type, layer=layer, progress=progress, source_digest=source_digest)


def mkfs_version() -> str:
    """The mkfs.erofs version, for keys of layers it builds."""
    return erofs_utils(feature="the layer cache").version_str


def cache_key(layer: str, options: LayerOptions, *, chains: Mapping[str, str | None], profile: Profile,
              tool_version: str, mkfs_version: Callable[[], str] = mkfs_version) -> CacheKey | None:
    """The key of source layer ``layer`` built with ``options`` in an image whose layer chains are
    ``chains`` (``layer_chains``); None when the layer must not be cached (unknown, or on two chains)."""
    if layer not in chains:
        return None
    lower = chains[layer]
    if lower is None or (lower == "") != options.bottom:
        return None
    try:
        digest = Digest.parse(layer)
    except ConverterError:
        return None
    builder = options.resolved_builder()
    return CacheKey(layer=digest, lower=lower, fmt=str(options.fmt), profile=profile.value, builder=builder,
                    build_time=options.build_time, tool_version=tool_version,
                    erofs_utils=mkfs_version() if builder is Builder.MKFS else _compressor_version(options),
                    encoding=options.encoding.canonical())


def _compressor_version(options: LayerOptions) -> str:
    """For the python builder's compressed formats, the library whose version decides the bytes."""
    algorithm = options.fmt.algorithm
    return "" if algorithm is None else library_version(Codec(algorithm))


class CachingConverter(_Wrapper):
    """The ``convert_layer`` of one image conversion, in front of a LayerCache.

    ``dest`` is the image's destination (where hits are mounted and builds pushed, through
    ``sink`` when given: the same sink the pipeline pushes through), ``chains`` comes from
    ``layer_chains``; ``stats`` collects what happened. See the module docstring.
    """

    def __init__(self, cache: LayerCache, *, dest: Reference, chains: Mapping[str, str | None], profile: Profile,
                 tool_version: str, inner: ConvertLayerFn, stats: LayerStats, sink: ImageSink | None = None,
                 mkfs_version: Callable[[], str] = mkfs_version, log: Any = None) -> None:
        self.cache = cache
        self.dest = dest
        self.sink = sink
        self.chains = chains
        self.profile = profile
        self.tool_version = tool_version
        self.inner = inner
        self.stats = stats
        self.mkfs_version = mkfs_version
        self.log = log if log is not None else structlog.get_logger()
        self._rejected: set[CacheKey] = set()  # bad entries: __call__ builds without asking again

    def key(self, layer: str, options: LayerOptions) -> CacheKey | None:
        """The key of ``layer`` built with ``options``, or None when it must not be cached."""
        return cache_key(layer, options, chains=self.chains, profile=self.profile, tool_version=self.tool_version,
                         mkfs_version=self.mkfs_version)

    def __call__(self, src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
                 media_type: str | None = None, layer: str = "", workdir: Path | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_tree: Callable[[Inode], None] | None = None, source_digest: str | None = None,
                 on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
        key = self.key(layer, options)
        if key is None:
            self.log.debug("layer_cache_not_applicable", layer=layer)
            return self._build(src, out_path, options=options, lower=lower, media_type=media_type, layer=layer,
                               workdir=workdir, progress=progress, on_tree=on_tree, source_digest=source_digest,
                               on_data_final=on_data_final)
        with self.cache.claim(key):
            entry = None if key in self._rejected else self._find(key, layer)
            if entry is not None:
                tree = read_tree(src, options=options, lower=lower, media_type=media_type, layer=layer,
                                 progress=progress, source_digest=source_digest)
                if tree.diff_id != str(entry.source_diff_id):
                    raise ConverterError(f"reusing cached layer {entry.digest.short} for layer {layer}: it was "
                                         f"made from DiffID {entry.source_diff_id.short}, the layer has "
                                         f"{Digest.parse(tree.diff_id).short} (cache entry {key.tag})")
                if on_tree is not None:
                    on_tree(tree.root)
                return LayerResult(path=out_path, digest=str(entry.digest), size=entry.size,
                                   source_digest=tree.source_digest, source_size=tree.source_size, root=tree.root,
                                   source_diff_id=tree.diff_id,
                                   diff_id=str(entry.diff_id) if entry.diff_id != entry.digest else None,
                                   annotations=dict(entry.annotations))
            result = self._build(src, out_path, options=options, lower=lower, media_type=media_type, layer=layer,
                                 workdir=workdir, progress=progress, on_tree=on_tree, source_digest=source_digest,
                                 on_data_final=on_data_final)
            self._store(key, result, layer)
            return result

    def reuse(self, layer: str, options: LayerOptions, *, source_diff_id: str, source_size: int,
              out_path: Path) -> LayerResult | None:
        """The stored conversion of ``layer``, now in the destination, without reading the layer
        (pipeline.graph.LayerReuse): only if it was made from a tar with DiffID ``source_diff_id``
        (the source config's). Otherwise None, and the layer is pulled and goes through ``__call__``."""
        key = self.key(layer, options)
        if key is None:
            return None
        with self.cache.claim(key):
            entry = self._find(key, layer, source_diff_id=source_diff_id)
        if entry is None:
            return None
        return LayerResult(path=out_path, digest=str(entry.digest), size=entry.size, source_digest=layer,
                           source_size=source_size, root=None, source_diff_id=str(entry.source_diff_id),
                           diff_id=str(entry.diff_id) if entry.diff_id != entry.digest else None,
                           annotations=dict(entry.annotations))

    def _build(self, src: BinaryIO, out_path: Path, **kwargs: Any) -> LayerResult:
        result = self.inner(src, out_path, **kwargs)
        self.stats.add(built=1)
        return result

    def _find(self, key: CacheKey, layer: str, *, source_diff_id: str | None = None) -> CacheEntry | None:
        """A checked entry whose blob is now in the destination, or None (a miss or a fallback).
        With ``source_diff_id``, an entry made from another DiffID is a miss (nothing is mounted)."""
        tried: set[Digest] = set()
        for origin in ("memory", "registry"):
            try:
                entry = self.cache.remembered(key) if origin == "memory" else self.cache.fetch(key)
                if entry is None or entry.digest in tried:
                    continue
                tried.add(entry.digest)
                if source_diff_id is not None and str(entry.source_diff_id) != source_diff_id:
                    raise CacheEntryInvalid(f"it was made from DiffID {entry.source_diff_id.short}, the image "
                                            f"config gives the layer {Digest.parse(source_diff_id).short}")
                how = self.cache.materialise(key, entry, self.dest)
            except CacheEntryInvalid as exc:
                self.log.warning("layer_cache_entry_rejected", layer=layer, key=key.tag, origin=origin,
                                 reason=str(exc))
                self.stats.add(fallbacks=1)
                self.cache.forget(key)
                self._rejected.add(key)
                continue
            except RegistryError as exc:
                self.log.warning("layer_cache_unavailable", layer=layer, key=key.tag, error=str(exc))
                return None
            self.cache.remember(key, entry)
            self.stats.add(reused=1, mounted=1 if how == "mounted" else 0)
            self.log.debug("layer_cache_hit", layer=layer, digest=str(entry.digest), how=how, origin=origin)
            return entry
        self.log.debug("layer_cache_miss", layer=layer, key=key.tag)
        return None

    def _store(self, key: CacheKey, result: LayerResult, layer: str) -> None:
        digest = Digest.parse(result.digest)
        # Push to the destination now: the graph's push stage then only HEADs it, and the
        # entry's blob is mounted from here instead of being uploaded a second time.
        if self.sink is not None:
            self.sink.push_blob(result.path, digest, result.size)
        else:
            self.cache.client.push_blob(self.dest.registry, self.dest.repository, digest, result.size, result.path)
        entry = CacheEntry(digest=digest, size=result.size, diff_id=Digest.parse(result.layer_diff_id),
                           source_diff_id=Digest.parse(result.source_diff_id), annotations=dict(result.annotations))
        try:
            self.cache.store(key, entry, media_type=self.profile.layer_media_type(zstd=key.zstd), origin=self.dest,
                             path=result.path)
        except RegistryError as exc:
            self.log.warning("layer_cache_store_failed", layer=layer, key=key.tag, error=str(exc))
            return
        self.stats.add(stored=1)
        self.log.debug("layer_cache_stored", layer=layer, key=key.tag, digest=str(digest))


__all__ = [
    "ANN_CACHE_DIFF_ID",
    "ANN_CACHE_KEY",
    "ANN_CACHE_SOURCE_DIFF_ID",
    "ARTIFACT_TYPE",
    "CacheEntry",
    "CacheEntryInvalid",
    "CacheKey",
    "CachingConverter",
    "CountingConverter",
    "LayerCache",
    "LayerStats",
    "LocalCacheFile",
    "cache_key",
    "layer_chains",
    "mkfs_version",
    "next_chain",
    "read_tree",
]
