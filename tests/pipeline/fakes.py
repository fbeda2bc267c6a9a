"""In-memory ImageSource/ImageSink and a fake layer engine, for pipeline tests without real layers.

The fake engine stands in for ``convert_layer`` and ``normalise_layer``: each "layer" is any
byte string; its "EROFS blob" is ``b"EROFS:" + source bytes`` and its tree is a root holding
one directory named after the layer. Every call is recorded (thread, bottom flag, how many
lower trees it saw, start/end times) and tests can inject hooks to block, fail or interrupt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from converter.convert.layer import LayerOptions, LayerResult
from converter.errors import ImageError
from converter.layers.model import DataSink, Inode, LowerView, NodeKind
from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor, Index, Manifest, Platform, canonical_json
from converter.pipeline.lower import StackedLower
from converter.reference import Digest
from converter.transports.base import BlobOrigin


class MemorySource:
    """An ImageSource over dicts; ``slow`` seconds of delay per 64 KiB read."""

    def __init__(self, *, origin: BlobOrigin | None = None, slow: float = 0.0) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.manifests: dict[Digest, tuple[bytes, str]] = {}
        self.tags: dict[str, Digest] = {}
        self.default: str | Digest = "latest"
        self._origin = origin
        self.slow = slow
        self.opened: list[Digest] = []
        self.lock = threading.Lock()

    name = "memory"

    @property
    def origin(self) -> BlobOrigin | None:
        return self._origin

    def add_blob(self, data: bytes) -> Descriptor:
        digest = Digest.from_bytes(data)
        self.blobs[digest] = data
        return Descriptor(MediaType.OCI_LAYER, digest, len(data))

    def add_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        digest = Digest.from_bytes(data)
        self.manifests[digest] = (data, media_type)
        if tag:
            self.tags[tag] = digest
        return digest

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        ref = self.default if reference is None else reference
        digest = ref if isinstance(ref, Digest) else self.tags[ref]
        data, media_type = self.manifests[digest]
        return data, media_type, digest

    @contextlib.contextmanager
    def open_blob(self, digest: Digest, *, size: int | None = None) -> Iterator[BinaryIO]:
        with self.lock:
            self.opened.append(digest)
        data = self.blobs[digest]
        yield _Slow(data, self.slow) if self.slow else io.BytesIO(data)  # type: ignore[misc]

    def get_blob_bytes(self, digest: Digest, *, max_size: int) -> bytes:
        data = self.blobs[digest]
        if len(data) > max_size:
            raise ImageError("too big")
        return data


class _Slow(io.BytesIO):
    def __init__(self, data: bytes, delay: float) -> None:
        super().__init__(data)
        self.delay = delay

    def read(self, n: int | None = -1) -> bytes:
        time.sleep(self.delay)
        return super().read(65536 if n is None or n < 0 else min(n, 65536))


class MemorySink:
    """An ImageSink over dicts that records every operation in order."""

    name = "memory-sink"

    def __init__(self, *, mountable: set[Digest] | None = None) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.manifests: dict[Digest, tuple[bytes, str]] = {}
        self.tags: dict[str, Digest] = {}
        self.ops: list[tuple[str, str]] = []
        self.mountable = mountable or set()
        self.lock = threading.Lock()

    def _op(self, kind: str, what: str) -> None:
        with self.lock:
            self.ops.append((kind, what))

    def has_blob(self, digest: Digest) -> bool:
        return digest in self.blobs

    def mount_blob(self, digest: Digest, origin: BlobOrigin) -> bool:
        if digest in self.mountable:
            self._op("mount", str(digest))
            self.blobs[digest] = b"<mounted>"
            return True
        return False

    def push_blob(self, path: Path, digest: Digest, size: int) -> None:
        data = path.read_bytes()
        assert len(data) == size and Digest.from_bytes(data) == digest
        self._op("blob", str(digest))
        self.blobs[digest] = data

    def put_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        digest = Digest.from_bytes(data)
        self.manifests[digest] = (data, media_type)
        self._op("manifest", str(digest))
        if tag is not None:
            self.tags[tag] = digest
            self._op("tag", tag)
        return digest


def tree(*names: str) -> Inode:
    root = Inode(NodeKind.DIR, 0o755, children={})
    assert root.children is not None
    for name in names:
        root.children[name.encode()] = Inode(NodeKind.DIR, 0o700, children={})
    return root


@dataclass
class Call:
    kind: str  # "convert" or "normalise"
    layer: str
    bottom: bool
    lower_trees: int  # how many lower layer trees the view stacked (-1: no view)
    thread: str
    start: float
    end: float = 0.0
    tree_at: float = 0.0  # when the (fake) engine reported the layer's tree (on_tree)
    limits: tuple[int | None, int | None] = (None, None)  # (max_expanded, max_entries) it was given


@dataclass
class FakeEngine:
    """Fake convert_layer/normalise_layer; ``before_convert`` hooks run inside the worker."""

    names: dict[str, str] = field(default_factory=dict)  # layer digest -> directory name
    calls: list[Call] = field(default_factory=list)
    before_convert: Callable[[str, BinaryIO], None] | None = None
    tree_delay: float = 0.0  # seconds spent 'writing the image' after reporting the tree
    lock: threading.Lock = field(default_factory=threading.Lock)
    active_builds: int = 0
    max_active_builds: int = 0

    def _record(self, kind: str, layer: str, bottom: bool, lower: LowerView | None,
                limits: tuple[int | None, int | None]) -> Call:
        n = len(lower) if isinstance(lower, StackedLower) else -1
        call = Call(kind, layer, bottom, n, threading.current_thread().name, time.monotonic(), limits=limits)
        with self.lock:
            self.calls.append(call)
        return call

    def tree_for(self, layer: str) -> Inode:
        return tree(self.names.get(layer, layer[7:19]))

    def convert(self, src: BinaryIO, out_path: Path, *, options: LayerOptions, lower: LowerView | None = None,
                media_type: str | None = None, layer: str = "", workdir: Path | None = None,
                progress: Callable[[int], None] | None = None,
                on_tree: Callable[[Inode], None] | None = None, source_digest: str | None = None,
                 on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult:
        call = self._record("convert", layer, options.bottom, lower, (options.max_expanded, options.max_entries))
        with self.lock:
            self.active_builds += 1
            self.max_active_builds = max(self.max_active_builds, self.active_builds)
        try:
            if self.before_convert is not None:
                self.before_convert(layer, src)
            data = b""
            while chunk := src.read(4096):
                data += chunk
                if progress is not None:
                    progress(len(data))
            if on_tree is not None:  # the real engine reports the tree before writing the image
                call.tree_at = time.monotonic()
                on_tree(self.tree_for(layer))
                time.sleep(self.tree_delay)
            out = b"EROFS:" + data
            out_path.write_bytes(out)
            return LayerResult(path=out_path, digest=str(Digest.from_bytes(out)), size=len(out),
                               # Like convert_layer: a digest the caller verified is reported as is.
                               source_digest=source_digest or "sha256:" + hashlib.sha256(data).hexdigest(),
                               source_size=len(data), root=self.tree_for(layer),
                               source_diff_id="sha256:" + hashlib.sha256(data).hexdigest())  # uncompressed in the fake
        finally:
            with self.lock:
                self.active_builds -= 1
            call.end = time.monotonic()

    def normalise(self, src: BinaryIO, *, sink: DataSink, media_type: str | None, layer: str, bottom: bool,
                  lower: LowerView | None, build_time: int, max_expanded: int | None = None,
                  max_entries: int | None = None) -> Inode:
        call = self._record("normalise", layer, bottom, lower, (max_expanded, max_entries))
        while src.read(65536):
            pass
        call.end = time.monotonic()
        return self.tree_for(layer)

    def converts(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "convert"]

    def scans(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "normalise"]


def add_image(source: MemorySource, layers: list[bytes], *, tag: str = "latest", arch: str = "amd64",
              media_type: str = MediaType.OCI_MANIFEST, layer_type: str = MediaType.OCI_LAYER,
              history: bool = True) -> tuple[Manifest, Digest]:
    """An image of raw 'layers' in ``source``: config with matching diff_ids, manifest, tag."""
    descs = []
    for data in layers:
        d = source.add_blob(data)
        descs.append(Descriptor(layer_type, d.digest, d.size))
    config: dict[str, Any] = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                              "rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in descs]}}
    if history:
        config["history"] = [{"created_by": f"layer {i}"} for i in range(len(layers))]
    config_bytes = canonical_json(config)
    cdesc = source.add_blob(config_bytes)
    manifest = Manifest(media_type=media_type, config=Descriptor(MediaType.OCI_CONFIG, cdesc.digest, cdesc.size),
                        layers=tuple(descs))
    data = manifest.to_bytes()
    return manifest, source.add_manifest(data, media_type, tag)


def add_index(source: MemorySource, entries: list[Descriptor], *, tag: str = "latest") -> tuple[Index, Digest]:
    index = Index(media_type=MediaType.OCI_INDEX, manifests=tuple(entries))
    return index, source.add_manifest(index.to_bytes(), MediaType.OCI_INDEX, tag)


def manifest_entry(source: MemorySource, digest: Digest, platform: Platform | None,
                   **annotations: str) -> Descriptor:
    data, media_type = source.manifests[digest]
    return Descriptor(media_type, digest, len(data), platform=platform, annotations=annotations)
