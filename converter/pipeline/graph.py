"""The per-manifest layer graph: pull → (scan) → build → push, several layers at once.

Stages and their dependencies, for layer ``i`` of ``n``:

* **pull**: stream the source blob into a new 0600 file in the workdir while hashing; size and
  digest must match the descriptor, and a download corrupted on the way (``DigestMismatch``)
  is made again, as often as the registry client's retry policy allows. Pulls run ahead of
  the builds, in layer order, but at most ``run_ahead``
  pulled-but-not-yet-built layers sit on disk at a time (the window always contains the
  lowest unbuilt layer, so it cannot deadlock).
* **scan** (the metadata pre-pass, optional): read the layer once more, metadata only — same
  decompressor, tar parser and ``LayerNormaliser`` as the build, contents discarded — to get
  its ``Inode`` tree. Scans run one at a time in layer order, since layer ``i``'s tree
  depends on the trees below (implicit parents inherit lower metadata).
* **build**: ``convert_layer`` with ``bottom=(i == 0)``, the image's layer limits
  (``max_expanded``, ``max_entries``; the scan applies them too) and ``lower`` = a ``StackedLower`` over
  the trees of layers ``< i``. With the pre-pass, those trees come from the scans, so builds
  of different layers overlap freely; without it, they come from the builds themselves and
  builds run strictly one after another. Without the pre-pass a build also need not wait
  for its pull: it reads the pulled file as it arrives (``arrival.py``; its source ends only
  once the blob matched its digest), and is made again if the download is.
* **push**: HEAD (``has_blob``) and skip, else upload; overlaps with later builds. Into a
  registry (a ``StreamingSink``), a layer our writer builds starts its upload early: once its
  layout is planned, block 0 and the file data are final (``convert_layer``'s
  ``on_data_final``), and a **stream** task sends them, then follows the metadata as the
  writer appends it (every ``STREAM_STEP`` bytes) until the build is over; the push then
  checks (HEAD) and sends only the rest (``registry/streamed.py``). A
  layer with less than ``STREAM_MIN`` bytes of data is pushed the usual way, and so is one
  whose early part failed: that session is cancelled and the whole blob uploaded again, with
  the usual retries. A blob the registry turns out to have already cost the early part's
  bytes (the digest is only known at the end); a build that fails leaves its session for the
  registry to purge.

Why a pre-pass: building a layer costs far more than reading its metadata (contents are
written, hashed and, for ``erofs+ALGO``, compressed by mkfs.erofs in another process), while
the only thing an upper layer needs from the lower ones is their directory metadata. Reading
each tar twice buys parallel builds at the price of one extra decompress+parse per layer,
which pays off with ``jobs > 1``, several layers and at least ``PREPASS_MIN_CPUS`` cores; with
one job, one layer or a 2-core machine it is overhead and is skipped by default. (Python threads
share the GIL, so parallel builds gain most where the work happens outside it: zlib/zstd,
hashing, file I/O and mkfs.erofs.)

Cross-layer hard links (spec §3.7) need a lower *file's bytes*. They are rare, so instead of
keeping every lower layer on disk the graph fetches that lower layer again, normalises it
into a spool once, and serves the file from there (``_open_lower``).

Scheduling: one coordinator (the calling thread) owns all state and reacts to completion
events from the worker pools; workers never wait on each other, except a build waiting for
a re-fetched lower layer, which takes per-layer locks in descending order (no cycles).
Builds are submitted in layer order. The first failure sets the cancel flag, which makes
every stream read in the workers raise at once, and cancels the graph's ``CancelScope``, which
every worker task runs in: that shuts down the registry sockets workers are blocked on (a
stalled download or upload) and cuts their retry sleeps short. Then queued work is cancelled,
the workers are joined (promptly: none is left waiting on the network) and one ``LayerFailed``
names the image, the layer digest and the stage (only for a ``ConverterError`` or ``OSError``:
any other exception is a bug and propagates unchanged). Ctrl-C takes the same path and re-raises
``KeyboardInterrupt``. Not interruptible: a TCP connect (bounded by the client's short connect
timeout) and a running mkfs.erofs (the layer engine owns that process; it finishes its layer).
The graph's files live in its own directory, removed whatever happens.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import structlog

from converter.blob.encoding import BlobEncoding
from converter.cancel import CancelScope, current_scope
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED, Builder, LayerOptions, LayerResult
from converter.erofs.target import TargetFormat
from converter.errors import Cancelled, ConverterError, DigestMismatch, ImageError, LayerFailed
from converter.layers.filedata import FileData
from converter.layers.model import DirMeta, Inode, LowerView, NodeKind
from converter.layers.spool import SpoolSink
from converter.oci.model import Descriptor
from converter.pipeline.arrival import Arrival, FollowingReader, SourceLost, SourceRestarted
from converter.pipeline.lower import (
    DiscardSink,
    EmptyData,
    NormaliseFn,
    StackedLower,
    lookup,
    metadata_opener,
)
from converter.pipeline.progress import ProgressCallback, ProgressEvent, PushOutcome, Stage
from converter.reference import Digest
from converter.transports.base import BlobUpload, ImageSink, ImageSource, StreamingSink

_CHUNK = 1 << 20
_POLL = 0.25  # seconds; how often waits wake up to notice cancellation or Ctrl-C


PREPASS_MIN_CPUS = 4
#: A layer's first part is uploaded early (stream stage) only when it holds at least this many
#: bytes: below, the overlap saves nothing worth a changed request sequence.
STREAM_MIN = 1 << 20
#: While the build writes the metadata, the stream sends it in parts of at least this size
#: (each a PATCH), looking for new bytes every ``STREAM_POLL`` seconds.
STREAM_STEP = 8 << 20
STREAM_POLL = 0.02


@runtime_checkable
class LayerReuse(Protocol):
    """A converter that can tell, without reading a layer, that its conversion already exists.

    ``reuse`` returns the result for layer ``layer`` (blob digest) built with ``options`` if a
    stored conversion of it is now in the destination and was made from a tar with DiffID
    ``source_diff_id`` (the image config's), else None. The result has no tree (``root`` None).
    """

    def reuse(self, layer: str, options: LayerOptions, *, source_diff_id: str, source_size: int,
              out_path: Path) -> LayerResult | None: ...


class ConvertLayerFn(Protocol):
    """The signature of ``converter.convert.layer.convert_layer`` (the pipeline's main seam)."""

    def __call__(self, src: BinaryIO, out_path: Path, *, options: LayerOptions,
                 lower: LowerView | None = None, media_type: str | None = None, layer: str = "",
                 workdir: Path | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_tree: Callable[[Inode], None] | None = None,
                 source_digest: str | None = None,
                 on_data_final: Callable[[Path, bytes, int], object] | None = None) -> LayerResult: ...


def _resolved(value: Any) -> Future[Any]:
    """A finished future carrying ``value``, for events that come from inside a running task."""
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


class CancellableReader(io.RawIOBase):
    """A read-only stream that raises ``Cancelled`` as soon as the graph is cancelled; closing
    it closes the stream it reads."""

    def __init__(self, raw: BinaryIO, cancel: threading.Event) -> None:
        super().__init__()
        self._raw = raw
        self._cancel = cancel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._cancel.is_set():
            raise Cancelled("reading a layer: cancelled")
        n: int | None = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def create_private(path: Path) -> BinaryIO:
    """Create ``path`` for writing, mode 0600, failing if it exists.

    Blobs and configs in the workdir may hold an image's secrets, so no other user may read
    them even if the workdir's mode is relaxed; ``O_EXCL`` refuses to write through a file or
    symlink that someone else put there.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        return open(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def fetch_blob(source: ImageSource, desc: Descriptor, dest: Path, *, cancel: threading.Event,
               on_bytes: Callable[[int], None] | None = None, on_restart: Callable[[], None] | None = None,
               log: Any = None) -> None:
    """Download blob ``desc`` into ``dest``, a new private file, hashing as it arrives.

    ``on_bytes(n)``: the file's first ``n`` bytes are written (flushed: a reader of the file sees
    them). ``on_restart()``: the download so far is thrown away, before the file is emptied.

    Size and digest must match ``desc``. A download whose bytes do not match the digest
    (``DigestMismatch``, temporary: a transfer corrupted on the way) is thrown away and made
    again, up to the number of downloads the source's retry policy allows (the error's
    ``attempts``); after the last one the mismatch is permanent and says how many were made.
    ``dest`` must not exist (see ``create_private``) and is removed if the download fails.
    """
    out = create_private(dest)  # before the try: a file that was already there is not ours to remove
    try:
        with out:
            downloads = 1
            while True:
                try:
                    _download(source, desc, out, cancel=cancel, on_bytes=on_bytes)
                    return
                except DigestMismatch as exc:
                    if not exc.temporary or downloads >= exc.attempts:
                        raise exc.exhausted(downloads) from exc
                    (log or structlog.get_logger()).info("blob_refetched", digest=str(desc.digest),
                                                         attempt=downloads, reason="digest mismatch")
                    if on_restart is not None:
                        on_restart()
                    out.seek(0)
                    out.truncate()
                    downloads += 1
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _download(source: ImageSource, desc: Descriptor, out: BinaryIO, *, cancel: threading.Event,
              on_bytes: Callable[[int], None] | None) -> None:
    """One download of ``desc`` into ``out`` (at its start), checked against the descriptor.

    A stream that checks the digest itself and says so (a registry download's ``verified``,
    true once it was read to the end and matched) is not hashed a second time here."""
    got = 0
    with source.open_blob(desc.digest, size=desc.size) as stream:
        h = None if isinstance(getattr(stream, "verified", None), bool) else desc.digest.hasher()
        while True:
            if cancel.is_set():
                raise Cancelled("reading a layer: cancelled")
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            got += len(chunk)
            if got > desc.size:
                raise ImageError(f"pulling blob {desc.digest}: more than the {desc.size} bytes "
                                 "its descriptor declares")
            if h is not None:
                h.update(chunk)
            out.write(chunk)
            if on_bytes is not None:
                out.flush()
                on_bytes(got)
        # The stream's own check, or ours.
        matches = (getattr(stream, "verified", False) is True) if h is None else (h.hexdigest() == desc.digest.hex)
    if got != desc.size:
        raise ImageError(f"pulling blob {desc.digest}: got {got} bytes, its descriptor declares {desc.size}")
    if not matches:
        raise ImageError(f"pulling blob {desc.digest}: content does not match the digest")


@dataclass(frozen=True, slots=True)
class BuiltLayer:
    """A layer converted and in the sink."""

    index: int
    source: Descriptor
    digest: Digest
    size: int
    push: PushOutcome
    diff_id: Digest | None = None  # an encoded (+zstd) blob's DiffID; None: the blob digest
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GraphSettings:
    """Everything a graph needs besides the layers (built once per image by the engine)."""

    source: ImageSource
    sink: ImageSink
    image: str
    platform: str
    fmt: TargetFormat
    builder: Builder
    build_time: int
    jobs: int
    run_ahead: int
    prepass: bool | None
    convert: ConvertLayerFn
    normalise: NormaliseFn
    progress: ProgressCallback | None
    log: Any
    # LayerOptions' limits for every layer of the image (None: unlimited).
    max_expanded: int | None = DEFAULT_MAX_EXPANDED
    max_entries: int | None = DEFAULT_MAX_ENTRIES
    encoding: BlobEncoding = field(default_factory=BlobEncoding)
    #: The source config's rootfs.diff_ids and a reuse hook (the mirror's layer cache): layers
    #: above the highest one that must be built are taken from it without being pulled.
    source_diff_ids: Sequence[str] = ()
    reuse: LayerReuse | None = None
    #: Start a layer's build without waiting for the trees below it (``convert`` builds in a
    #: process of its own; see ``_DeferredLower``). Ignored with the pre-pass.
    overlap_builds: bool = False
    #: Start a layer's build while its pull is still writing the blob (``arrival.py``). Ignored
    #: with the pre-pass, whose scans read whole pulled files.
    follow_pulls: bool = True


class _StageFailed(Exception):
    def __init__(self, stage: str, index: int, exc: BaseException) -> None:
        super().__init__(stage, index)
        self.stage = stage
        self.index = index
        self.exc = exc


class LayerGraph:
    """Runs the stage graph for the layers of one manifest; see the module docstring."""

    def __init__(self, settings: GraphSettings, layers: Sequence[Descriptor], *, workdir: Path) -> None:
        self.s = settings
        self.layers = tuple(layers)
        self.n = len(self.layers)
        self.dir = workdir
        self.jobs = max(1, settings.jobs)
        self.run_ahead = max(1, settings.run_ahead or 2 * self.jobs)
        # The pre-pass costs one extra decompress+parse per layer; it only pays off when there
        # are cores to run the parallel builds it enables. Measured on 2 cores (bench/README.md):
        # the image-mode benchmark took 10.1 s with it and 7.7-8.1 s without.
        auto = self.jobs > 1 and self.n > 1 and (os.cpu_count() or 1) >= PREPASS_MIN_CPUS
        self.prepass = auto if settings.prepass is None else settings.prepass
        self.overlap = settings.overlap_builds and not self.prepass
        self.follow = settings.follow_pulls and not self.prepass
        self.cancel = threading.Event()
        # Every worker task runs in this scope; cancelling it ends their blocked registry I/O.
        # A child of the calling thread's scope (a mirror run's), which can so stop this graph too.
        self._scope = CancelScope(parent=current_scope())
        self.log = settings.log
        self._events: queue.SimpleQueue[tuple[str, int, Future[Any]]] = queue.SimpleQueue()
        # coordinator state
        self._downloaded = [False] * self.n
        self._arrivals = [Arrival() for _ in range(self.n)]  # each pull's progress, for a build following it
        self._rebuild: set[int] = set()  # builds to make again once their layer's new download is verified
        self._next_download = 0
        self._on_disk = 0  # pulled (or being pulled) source files not yet released
        self._released = [False] * self.n
        # Written under ``_trees`` (by the coordinator, or by a build's on_tree when builds
        # overlap); build threads wait on it for the trees below them.
        self._roots: list[Inode | None] = [None] * self.n
        self._trees = threading.Condition()
        self._scanned = 0  # layers 0.._scanned-1 have trees from the pre-pass
        self._scanning = False
        self._next_build = 0
        self._building: set[int] = set()  # builds submitted and not finished
        self._failed_builds: dict[int, BaseException] = {}  # overlapping builds: failures held back
        self._built_upto = 0  # layers 0.._built_upto-1 are built (chain mode)
        self._results: list[LayerResult | None] = [None] * self.n
        self._done: list[BuiltLayer | None] = [None] * self.n
        self._timings: list[dict[str, float]] = [{} for _ in range(self.n)]
        # lower files for cross-layer hard links
        self._lower_locks: dict[int, threading.Lock] = {}
        self._lower_locks_guard = threading.Lock()
        self._lower_cache: dict[int, tuple[Inode, SpoolSink]] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        # streamed uploads: the early part's task per layer (its result: None when it failed)
        self._streaming = isinstance(settings.sink, StreamingSink)
        self._streams: dict[int, Future[BlobUpload | None]] = {}
        self._build_over = [threading.Event() for _ in range(self.n)]  # set when a build returns
        self._limit = self.n  # layers below this are pulled and built; the rest were reused

    # -- public -----------------------------------------------------------------------------

    def run(self) -> list[BuiltLayer]:
        if self.n == 0:
            return []
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        workers = min(self.jobs, self.n)
        self._pools = {
            "pull": ThreadPoolExecutor(workers, thread_name_prefix="pull"),
            "build": ThreadPoolExecutor(workers, thread_name_prefix="build"),
            "push": ThreadPoolExecutor(workers, thread_name_prefix="push"),
        }
        if self.prepass:
            self._pools["scan"] = ThreadPoolExecutor(1, thread_name_prefix="scan")
        if self._streaming:
            self._pools["stream"] = ThreadPoolExecutor(workers, thread_name_prefix="stream")
        if self.follow:
            # A layer built again (its download was made again) must not queue behind the builds
            # above it, which may be waiting for its tree (overlapping builds): a thread each.
            self._pools["again"] = ThreadPoolExecutor(self.n, thread_name_prefix="build-again")
        self.log.debug("layer_graph_started", layers=self.n, jobs=self.jobs, prepass=self.prepass,
                       run_ahead=self.run_ahead)
        bug: BaseException | None = None
        try:
            with self._scope.entered():
                self._reuse_from_the_top()
            self._loop()
        except _StageFailed as failed:
            self._stop()
            error = self._wrap(failed)
            if error is not failed.exc:
                raise error from failed.exc
            bug = error  # raised below, outside this handler, so its own cause and context stay
        except BaseException:
            self._stop()
            raise
        finally:
            self._cleanup()
        if bug is not None:
            raise bug
        done = [d for d in self._done if d is not None]
        assert len(done) == self.n
        return done

    # -- coordinator ------------------------------------------------------------------------

    def _reuse_from_the_top(self) -> None:
        """Take the top layers from ``settings.reuse`` before anything is pulled.

        Only a layer none of whose upper layers must be built can go unread: a build needs the
        trees of every layer below it, and a tree needs the layer's bytes. So the layers are
        asked from the top down, and the first that cannot be reused ends the walk.
        """
        reuse, diff_ids = self.s.reuse, self.s.source_diff_ids
        if reuse is None or len(diff_ids) != self.n:
            return
        for i in reversed(range(self.n)):
            desc = self.layers[i]
            try:
                result = reuse.reuse(str(desc.digest), self._options(i), source_diff_id=diff_ids[i],
                                     source_size=desc.size, out_path=self._out_path(i))
            except BaseException as exc:
                raise _StageFailed("cache", i, exc) from exc
            if result is None:
                break
            self._results[i] = result
            self._limit = i
            self._report(Stage.CONVERT, i, desc.size, desc.size, done=True, note="cached")
        if self._limit < self.n:
            self.log.debug("layers_reused_unread", layers=self.n - self._limit, built=self._limit)

    def _loop(self) -> None:
        # The scope of the calling thread (a mirror run's), if any: cancelling it stops the graph.
        outer = current_scope()
        finished = 0
        for i in range(self._limit, self.n):
            self._submit("push", i, self._push, i)
        self._pump()
        while finished < self.n:
            if outer is not None and outer.cancelled:
                raise Cancelled(f"converting {self.s.image}: cancelled")
            try:
                kind, i, fut = self._events.get(timeout=_POLL)
            except queue.Empty:
                continue
            if fut.cancelled():
                continue
            exc = fut.exception()
            if kind == "build":
                if isinstance(exc, SourceRestarted):  # the download it followed is made again
                    self._rebuild.add(i)
                    self._pump()
                    continue
                self._building.discard(i)
                if isinstance(exc, SourceLost):
                    continue  # the pull it followed failed: that failure's own event follows
            if exc is not None:
                if kind != "build" or not self.overlap:
                    raise _StageFailed(kind, i, exc)
                self._failed_builds[i] = exc
            if self._failed_builds:
                self._raise_lowest_failure()
                continue
            if kind == "pull":
                self._downloaded[i] = True
            elif kind == "scan":
                self._set_tree(i, fut.result())
                self._scanned = i + 1
                self._scanning = False
                self._maybe_release(i)
            elif kind == "tree":
                # Chain mode: the layer's metadata is final before its image is written, so the
                # layer above may start now (its parse overlaps this layer's mkfs or metadata write).
                if not self.prepass:
                    self._set_tree(i, fut.result())
                    self._built_upto = max(self._built_upto, i + 1)
            elif kind == "build":
                result: LayerResult = fut.result()
                self._results[i] = result
                if not self.prepass:
                    if result.root is not None:  # a build in a process of its own sent it as "tree"
                        self._set_tree(i, result.root)
                    self._built_upto = max(self._built_upto, i + 1)
                self._maybe_release(i)
                self._submit("push", i, self._push, i)
            elif kind == "push":
                self._done[i] = fut.result()
                finished += 1
            self._pump()

    def _pump(self) -> None:
        """Start every task whose inputs are ready."""
        while self._next_download < self._limit and self._on_disk < self.run_ahead:
            i = self._next_download
            self._next_download += 1
            self._on_disk += 1
            self._submit("pull", i, self._pull, i)
        if self.prepass and not self._scanning and self._scanned < self._limit and self._downloaded[self._scanned]:
            i = self._scanned
            self._scanning = True
            self._submit("scan", i, self._scan, i, StackedLower(self._tree_slice(i), opener=metadata_opener))
        for i in sorted(self._rebuild):
            if self._downloaded[i]:
                self._rebuild.discard(i)
                self._build_over[i] = threading.Event()
                self._submit_build(i, pool="again")
        while self._next_build < self._limit:
            i = self._next_build
            ready = self._scanned >= i if self.prepass else self.overlap or self._built_upto >= i
            arriving = self.follow and i < self._next_download
            if not ((self._downloaded[i] or arriving) and ready):
                break
            self._next_build += 1
            self._building.add(i)
            self._submit_build(i)

    def _submit_build(self, i: int, *, pool: str = "build") -> None:
        view: LowerView | None = None
        if i and self.overlap:
            view = _DeferredLower(self, i)
        elif i:
            view = StackedLower(self._tree_slice(i), opener=self.open_lower)
        self._submit("build", i, self._build, i, view, pool=pool)

    def _raise_lowest_failure(self) -> None:
        """With overlapping builds, report the lowest layer's failure, as the chain would: a
        failed build waits until every build below it has finished (or failed too)."""
        lowest = min(self._failed_builds)
        if not any(j < lowest for j in self._building):
            raise _StageFailed("build", lowest, self._failed_builds[lowest])

    def _tree_slice(self, i: int) -> list[Inode]:
        with self._trees:
            trees = self._roots[:i]
        assert all(t is not None for t in trees)
        return [t for t in trees if t is not None]

    def _set_tree(self, i: int, root: Inode) -> None:
        with self._trees:
            self._roots[i] = root
            self._trees.notify_all()

    def wait_trees(self, i: int) -> list[Inode]:
        """The trees of layers ``< i``, once all are there (a build waiting for its lower view)."""
        with self._trees:
            while not all(t is not None for t in self._roots[:i]):
                if self.cancel.is_set():
                    raise Cancelled("waiting for the lower layers' trees: cancelled")
                self._trees.wait(_POLL)
            return [t for t in self._roots[:i] if t is not None]

    def _submit(self, kind: str, i: int, fn: Callable[..., Any], *args: Any, pool: str | None = None) -> None:
        fut = self._pools[pool or kind].submit(self._in_scope, fn, *args)
        fut.add_done_callback(lambda f: self._events.put((kind, i, f)))

    def _in_scope(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a worker task inside the graph's ``CancelScope`` (entered per task: pool threads
        start with an empty context), so that ``_stop`` can end its registry I/O."""
        with self._scope.entered():
            return fn(*args)

    def _maybe_release(self, i: int) -> None:
        """Delete layer i's pulled file once its build (and scan, with the pre-pass) is done."""
        if self._released[i] or self._results[i] is None or (self.prepass and self._scanned <= i):
            return
        self._released[i] = True
        self._on_disk -= 1
        self._src_path(i).unlink(missing_ok=True)

    def _stop(self) -> None:
        """Cancel: wake every reader, drop queued work, wait for running workers to return.

        The scope is cancelled before the wait: it shuts down the sockets that workers are
        blocked on, without which the wait could last a stalled transfer's whole read timeout.
        """
        self.cancel.set()
        self._scope.cancel()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for pool in self._pools.values():
            pool.shutdown(wait=True)

    def _cleanup(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True)
        for _, spool in self._lower_cache.values():
            with contextlib.suppress(OSError):
                spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _wrap(self, failed: _StageFailed) -> BaseException:
        """The error to raise for a worker's failure: a ConverterError or OSError becomes one
        ``LayerFailed`` naming image, layer and stage; anything else is a bug and propagates
        unchanged (with a note saying where), for the CLI to report with its traceback."""
        exc = failed.exc
        desc = self.layers[failed.index]
        if not isinstance(exc, ConverterError | OSError):
            exc.add_note(f"(in the {failed.stage} stage of layer {failed.index + 1}/{self.n} {desc.digest} "
                         f"of {self.s.image})")
            return exc
        where = f" ({self.s.platform})" if self.s.platform else ""
        cause = str(exc)
        if isinstance(exc, OSError) and exc.strerror:
            cause = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
        self.log.debug("layer_failed", index=failed.index, layer=str(desc.digest), stage=failed.stage,
                       error=cause)
        return LayerFailed(
            f"converting {self.s.image}{where}: layer {failed.index + 1}/{self.n} {desc.digest}: "
            f"{failed.stage}: {cause}",
            image=self.s.image, layer=desc.digest, stage=failed.stage, cause=exc,
        )

    # -- workers ----------------------------------------------------------------------------

    def _src_path(self, i: int) -> Path:
        return self.dir / f"layer-{i:04d}.src"

    def _out_path(self, i: int) -> Path:
        return self.dir / f"layer-{i:04d}.erofs"

    def _report(self, stage: Stage, i: int, completed: int, total: int | None, *, done: bool = False,
                note: str = "") -> None:
        if self.s.progress is not None:
            self.s.progress(ProgressEvent(platform=self.s.platform, index=i, layer=self.layers[i].digest,
                                          stage=stage, completed=completed, total=total, done=done,
                                          note=note))

    def _pull(self, i: int) -> None:
        desc = self.layers[i]
        arrival = self._arrivals[i]
        started = time.monotonic()

        def wrote(n: int) -> None:
            arrival.wrote(n)
            self._report(Stage.PULL, i, n, desc.size)

        try:
            fetch_blob(self.s.source, desc, self._src_path(i), cancel=self.cancel, on_bytes=wrote,
                       on_restart=arrival.restarted, log=self.log)
        except BaseException:
            arrival.finished(False)
            raise
        arrival.finished(True)
        self._report(Stage.PULL, i, desc.size, desc.size, done=True)
        self._timings[i]["pull"] = time.monotonic() - started

    def _normalise(self, path: Path, i: int, *, sink: Any, lower: StackedLower | None) -> Inode:
        desc = self.layers[i]
        with open(path, "rb") as f:
            reader = io.BufferedReader(CancellableReader(f, self.cancel), _CHUNK)
            return self.s.normalise(reader, sink=sink, media_type=str(desc.media_type),
                                    layer=str(desc.digest), bottom=i == 0, lower=lower if i else None,
                                    build_time=self.s.build_time, max_expanded=self.s.max_expanded,
                                    max_entries=self.s.max_entries)

    def _scan(self, i: int, lower: StackedLower) -> Inode:
        started = time.monotonic()
        root = self._normalise(self._src_path(i), i, sink=DiscardSink(), lower=lower)
        self._timings[i]["scan"] = time.monotonic() - started
        return root

    def _options(self, i: int) -> LayerOptions:
        return LayerOptions(fmt=self.s.fmt, builder=self.s.builder, bottom=i == 0, build_time=self.s.build_time,
                            max_expanded=self.s.max_expanded, max_entries=self.s.max_entries,
                            encoding=self.s.encoding)

    def _build(self, i: int, lower: LowerView | None) -> LayerResult:
        desc = self.layers[i]
        started = time.monotonic()
        options = self._options(i)
        spool_dir = self.dir / f"layer-{i:04d}.tmp"
        spool_dir.mkdir(mode=0o700, exist_ok=True)
        try:
            with self._source(i) as raw:
                reader = io.BufferedReader(raw, _CHUNK)
                try:
                    result = self.s.convert(
                        reader, self._out_path(i), options=options, lower=lower, media_type=str(desc.media_type),
                        layer=str(desc.digest), workdir=spool_dir,
                        progress=lambda n: self._report(Stage.CONVERT, i, n, desc.size),
                        on_tree=lambda root: self._tree_built(i, root),
                        # The pull checked these bytes against the digest (a build following the
                        # pull reads the end of its source only then): they are not hashed again.
                        source_digest=str(desc.digest),
                        on_data_final=(lambda path, block0, end: self._data_final(i, path, block0, end))
                        if self._streaming else None,
                    )
                except Exception as exc:
                    # A build that read a download still under way failed: the pull's verdict
                    # decides what that means. A download made again (its bytes may have been
                    # corrupted on the way: a "broken" tar could be that) builds the layer again;
                    # a failed pull is reported as itself; else the build's error stands.
                    # However the reader's signal reached us (a decompressor, a build process).
                    if isinstance(raw, FollowingReader) and (signal := raw.settle()) is not None:
                        raise signal from exc
                    raise
                if isinstance(raw, FollowingReader):
                    raw.check_complete()
        finally:
            self._build_over[i].set()
            shutil.rmtree(spool_dir, ignore_errors=True)
        if result.source_digest != str(desc.digest):
            raise ImageError(f"converting layer {desc.digest}: the converter read bytes with digest "
                             f"{result.source_digest}")
        if result.source_size != desc.size:
            raise ImageError(f"converting layer {desc.digest}: the converter read {result.source_size} bytes "
                             f"of its {desc.size}")
        self._report(Stage.CONVERT, i, desc.size, desc.size, done=True)
        self._timings[i]["build"] = time.monotonic() - started
        return result

    def _source(self, i: int) -> contextlib.AbstractContextManager[io.RawIOBase]:
        """Layer ``i``'s pulled bytes: the file, or while its pull still writes it, a reader that
        follows the pull (``arrival.py``)."""
        arrival = self._arrivals[i]
        if not arrival.verified:
            return contextlib.closing(FollowingReader(self._src_path(i), arrival, self.cancel))
        return contextlib.closing(CancellableReader(open(self._src_path(i), "rb"), self.cancel))

    def _tree_built(self, i: int, root: Inode) -> None:
        """A build's tree is final: layers above may use it now (the coordinator learns too)."""
        if self.overlap:
            self._set_tree(i, root)  # a deferred lower view may be waiting for it
        self._events.put(("tree", i, _resolved(root)))

    def _data_final(self, i: int, path: Path, block0: bytes, end: int) -> None:
        """Layer ``i``'s first ``end`` bytes are final (called in its build thread): start
        sending them, from a descriptor opened now (``path`` is renamed when the image is done)."""
        if end < STREAM_MIN or self.cancel.is_set():
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.log.debug("layer_stream_skipped", index=i, error=str(exc))
            return
        try:
            fut = self._pools["stream"].submit(self._in_scope, self._stream, i, fd, block0, end)
        except RuntimeError:  # the pools are shut down: the graph is stopping
            os.close(fd)
            return
        # A task cancelled before it ran never closes its descriptor itself.
        fut.add_done_callback(lambda f: os.close(fd) if f.cancelled() else None)
        self._streams[i] = fut

    def _stream(self, i: int, fd: int, block0: bytes, end: int) -> BlobUpload | None:
        """The stream stage: layer ``i``'s first part, sent, then the metadata as it is written,
        until the build is over; None if a part failed (logged), and the push then uploads the
        whole blob."""
        started = time.monotonic()
        try:
            sink = self.s.sink
            assert isinstance(sink, StreamingSink)
            upload = sink.streamed_upload()
            try:
                upload.send_first(block0, fd, end)
                over = self._build_over[i]
                while not over.wait(STREAM_POLL) and not self.cancel.is_set():
                    written = os.fstat(fd).st_size  # final up to here (convert_layer's on_data_final)
                    if written - end >= STREAM_STEP:
                        upload.send_more(fd, written)
                        end = written
            except (ConverterError, OSError) as exc:
                if not self.cancel.is_set():
                    upload.cancel()
                self.log.info("layer_stream_failed", index=i, layer=str(self.layers[i].digest), error=str(exc))
                return None
        finally:
            os.close(fd)
        self._timings[i]["stream"] = time.monotonic() - started
        return upload

    def _finish_stream(self, i: int, result: LayerResult, digest: Digest) -> PushOutcome | None:
        """Complete layer ``i``'s streamed upload, if it has one: how the push ended, or None
        when the blob must be uploaded the usual way (no stream, or it failed: logged)."""
        fut = self._streams.pop(i, None)
        if fut is None:
            return None
        try:
            upload = fut.result()
        except CancelledError:
            raise Cancelled("pushing a layer: cancelled") from None
        if upload is None:
            return None
        try:
            return PushOutcome.PUSHED if upload.finish(result.path, digest, result.size) else PushOutcome.EXISTS
        except (ConverterError, OSError) as exc:
            if self.cancel.is_set():
                raise
            upload.cancel()
            self.log.info("layer_stream_failed", index=i, layer=str(self.layers[i].digest), error=str(exc))
            return None

    def _push(self, i: int) -> BuiltLayer:
        result = self._results[i]
        assert result is not None
        started = time.monotonic()
        digest = Digest.parse(result.digest)
        if self.cancel.is_set():
            raise Cancelled("pushing a layer: cancelled")
        self._report(Stage.PUSH, i, 0, result.size)
        push = self._finish_stream(i, result, digest)
        if push is None:
            if self.s.sink.has_blob(digest):
                push = PushOutcome.EXISTS
            else:
                self.s.sink.push_blob(result.path, digest, result.size)
                push = PushOutcome.PUSHED
        self._report(Stage.PUSH, i, result.size, result.size, done=True,
                     note="" if push is PushOutcome.PUSHED else push.value)
        result.path.unlink(missing_ok=True)
        t = self._timings[i]
        t["push"] = time.monotonic() - started
        self.log.info("layer_converted", index=i, source=str(self.layers[i].digest),
                      source_size=self.layers[i].size, digest=str(digest), size=result.size, push=push,
                      **{f"{k}_s": round(v, 3) for k, v in t.items()})
        return BuiltLayer(index=i, source=self.layers[i], digest=digest, size=result.size, push=push,
                          diff_id=Digest.parse(result.diff_id) if result.diff_id else None,
                          annotations=dict(result.annotations))

    # -- lower files for cross-layer hard links ---------------------------------------------

    def _lower_lock(self, k: int) -> threading.Lock:
        with self._lower_locks_guard:
            return self._lower_locks.setdefault(k, threading.Lock())

    def open_lower(self, k: int, path: bytes, node: Inode) -> FileData:
        """Contents of ``path`` in lower layer ``k``: fetch and spool that layer once."""
        if node.size == 0:
            return EmptyData()
        with self._lower_lock(k):
            cached = self._lower_cache.get(k)
            if cached is None:
                desc = self.layers[k]
                self.log.info("lower_layer_refetched", index=k, layer=str(desc.digest),
                              reason="cross-layer hard link")
                tmp = self.dir / f"layer-{k:04d}.relink"
                try:
                    fetch_blob(self.s.source, desc, tmp, cancel=self.cancel, log=self.log)
                    spool = SpoolSink(self.dir)
                    try:
                        view = StackedLower(self._tree_slice(k), opener=self.open_lower)
                        root = self._normalise(tmp, k, sink=spool, lower=view)
                    except BaseException:
                        spool.close()
                        raise
                finally:
                    tmp.unlink(missing_ok=True)
                cached = self._lower_cache[k] = (root, spool)
        root, spool = cached
        found = lookup(root, path)
        if found is None or found.kind is not NodeKind.REG or found.data is None:
            raise ImageError(f"reading {path.decode('utf-8', 'backslashreplace')} from layer "
                             f"{self.layers[k].digest} again: it is not a regular file there")
        return spool.open(found.data)


class _DeferredLower:
    """The lower view of layer ``i`` when builds overlap: a ``StackedLower`` over the trees
    below, made on the first question. The normaliser asks only once the layer's whole tar is
    read (implicit directories' metadata, cross-layer hard links), so a build runs up to that
    point while the layers below are still being built, and one that never asks never waits."""

    def __init__(self, graph: LayerGraph, i: int) -> None:
        self._graph = graph
        self._i = i
        self._view: StackedLower | None = None

    def _stacked(self) -> StackedLower:
        if self._view is None:
            self._view = StackedLower(self._graph.wait_trees(self._i), opener=self._graph.open_lower)
        return self._view

    def dir_meta(self, path: bytes) -> DirMeta | None:
        return self._stacked().dir_meta(path)

    def open_file(self, path: bytes) -> tuple[Inode, FileData] | None:
        return self._stacked().open_file(path)

    def find(self, path: bytes) -> tuple[int, Inode] | None:
        return self._stacked().find(path)
