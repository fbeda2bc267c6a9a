"""The layer graph's ordering, concurrency, cancellation and cleanup, with a fake layer engine."""

from __future__ import annotations

import _thread
import contextlib
import io
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO, cast

import pytest
import structlog
from structlog.testing import capture_logs

from converter.erofs.target import TargetFormat
from converter.errors import ConverterError, DigestMismatch, ImageError, LayerError
from converter.oci.model import Descriptor
from converter.pipeline.graph import GraphSettings, LayerFailed, LayerGraph, fetch_blob
from converter.pipeline.lower import NodeFinder
from converter.pipeline.progress import ProgressEvent, Stage
from converter.reference import Digest

from .fakes import FakeEngine, MemorySink, MemorySource

WORKER_PREFIXES = ("pull", "build", "push", "scan")


def make_layers(source: MemorySource, n: int, size: int = 1000) -> list[Descriptor]:
    return [source.add_blob(bytes([i + 1]) * size) for i in range(n)]


def settings(source: MemorySource, sink: MemorySink, engine: FakeEngine, **over: Any) -> GraphSettings:
    kw: dict[str, Any] = dict(source=source, sink=sink, image="example.com/app:1", platform="linux/amd64",
                              fmt=TargetFormat(), builder="python", build_time=0, jobs=3, run_ahead=0, prepass=None,
                              convert=engine.convert, normalise=engine.normalise, progress=None,
                              log=structlog.get_logger())
    kw.update(over)
    return GraphSettings(**kw)


def workers_alive(grace: float = 3.0) -> list[str]:
    """Worker threads still running after ``grace`` seconds. (A Ctrl-C that lands inside
    ThreadPoolExecutor.submit can leave a just-started worker untracked by the pool; it exits on
    its own once the pool shuts down, so give it a moment instead of expecting a join.)"""
    deadline = time.monotonic() + grace
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith(WORKER_PREFIXES)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


@pytest.mark.parametrize("prepass", [True, False], ids=["prepass", "chain"])
def test_layers_convert_in_order_with_bottom_and_lower(tmp_path: Path, prepass: bool) -> None:
    source, sink, engine = MemorySource(), MemorySink(), FakeEngine()
    layers = make_layers(source, 5)
    built = LayerGraph(settings(source, sink, engine, prepass=prepass), layers, workdir=tmp_path / "g").run()
    assert [b.index for b in built] == [0, 1, 2, 3, 4]
    assert [b.source for b in built] == layers
    converts = {c.layer: c for c in engine.converts()}
    assert len(converts) == 5
    for i, layer in enumerate(layers):
        call = converts[str(layer.digest)]
        assert call.bottom is (i == 0)
        assert call.lower_trees == (i if i else -1)  # layer i sees the trees of the i layers below
        out = b"EROFS:" + source.blobs[layer.digest]
        assert built[i].digest == Digest.from_bytes(out) and built[i].size == len(out)
        assert sink.blobs[built[i].digest] == out
        assert built[i].push == "pushed"
    scans = engine.scans()
    if prepass:
        assert [c.layer for c in scans] == [str(d.digest) for d in layers]
        assert [c.lower_trees for c in scans] == [-1, 1, 2, 3, 4]
    else:
        assert scans == []
        # chain mode: each build starts once the layer below has reported its finished tree
        # (before that layer's image is written, so the two may overlap)
        ordered = [converts[str(d.digest)] for d in layers]
        assert all(a.tree_at > 0 and b.start >= a.tree_at for a, b in itertools.pairwise(ordered))
    assert not (tmp_path / "g").exists()


def test_prepass_lets_builds_overlap(tmp_path: Path) -> None:
    source, sink = MemorySource(), MemorySink()
    barrier = threading.Barrier(3, timeout=10)

    def meet(layer: str, src: BinaryIO) -> None:
        barrier.wait()  # only returns if three builds run at the same time

    engine = FakeEngine(before_convert=meet)
    LayerGraph(settings(source, sink, engine, jobs=3, prepass=True), make_layers(source, 3),
               workdir=tmp_path / "g").run()


def test_chain_mode_overlaps_image_writing_with_the_next_parse(tmp_path: Path) -> None:
    """Without a pre-pass, layer i+1 starts as soon as layer i's tree is final, not when its
    image is written (mkfs.erofs compressing, our writer laying out metadata)."""
    source, sink = MemorySource(), MemorySink()
    engine = FakeEngine(tree_delay=0.3)
    layers = make_layers(source, 3)
    LayerGraph(settings(source, sink, engine, jobs=2, prepass=False), layers, workdir=tmp_path / "g").run()
    assert engine.max_active_builds == 2
    assert engine.scans() == []


def test_auto_prepass_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, sink = MemorySource(), MemorySink()
    layers = make_layers(source, 2)
    assert LayerGraph(settings(source, sink, FakeEngine(), jobs=1), layers, workdir=tmp_path).prepass is False
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert LayerGraph(settings(source, sink, FakeEngine(), jobs=2), layers, workdir=tmp_path).prepass is True
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # the extra parse costs more than it saves on 2 cores
    assert LayerGraph(settings(source, sink, FakeEngine(), jobs=2), layers, workdir=tmp_path).prepass is False
    assert LayerGraph(settings(source, sink, FakeEngine(), jobs=4), layers[:1], workdir=tmp_path).prepass is False
    engine = FakeEngine()
    LayerGraph(settings(source, sink, engine, jobs=1), layers, workdir=tmp_path / "g").run()
    assert engine.max_active_builds == 1 and engine.scans() == []


@pytest.mark.parametrize("prepass", [True, False], ids=["prepass", "chain"])
def test_run_ahead_bounds_pulled_layers_on_disk(tmp_path: Path, prepass: bool) -> None:
    source, sink = MemorySource(), MemorySink()
    seen: list[int] = []
    gdir = tmp_path / "g"

    def count(layer: str, src: BinaryIO) -> None:
        seen.append(len(list(gdir.glob("layer-*.src"))))
        time.sleep(0.02)

    engine = FakeEngine(before_convert=count)
    LayerGraph(settings(source, sink, engine, jobs=2, run_ahead=2, prepass=prepass), make_layers(source, 8),
               workdir=gdir).run()
    assert len(seen) == 8 and max(seen) <= 2


def test_existing_blobs_are_not_pushed(tmp_path: Path) -> None:
    source, sink, engine = MemorySource(), MemorySink(), FakeEngine()
    layers = make_layers(source, 3)
    present = Digest.from_bytes(b"EROFS:" + source.blobs[layers[1].digest])
    sink.blobs[present] = b"already"
    built = LayerGraph(settings(source, sink, engine), layers, workdir=tmp_path / "g").run()
    assert [b.push for b in built] == ["pushed", "exists", "pushed"]
    assert ("blob", str(present)) not in sink.ops


def test_progress_events(tmp_path: Path) -> None:
    source, sink, engine = MemorySource(), MemorySink(), FakeEngine()
    layers = make_layers(source, 3, size=10_000)
    events: list[ProgressEvent] = []
    lock = threading.Lock()

    def record(ev: ProgressEvent) -> None:
        with lock:
            events.append(ev)

    LayerGraph(settings(source, sink, engine, progress=record), layers, workdir=tmp_path / "g").run()
    for i, layer in enumerate(layers):
        for stage in Stage:
            mine = [e for e in events if e.index == i and e.stage is stage]
            assert mine and mine[-1].done, (i, stage)
            assert all(e.layer == layer.digest and e.platform == "linux/amd64" for e in mine)
            counts = [e.completed for e in mine]
            assert counts == sorted(counts)
        assert [e.completed for e in events if e.index == i and e.stage is Stage.PULL][-1] == 10_000


def test_first_failure_cancels_the_rest_promptly(tmp_path: Path) -> None:
    source, sink = MemorySource(), MemorySink()
    layers = [source.add_blob(bytes([i + 1]) * (3 << 20)) for i in range(6)]
    bad = str(layers[2].digest)
    cancelled: list[str] = []

    def hook(layer: str, src: BinaryIO) -> None:
        if layer == bad:
            time.sleep(0.1)  # let the other builds get going
            raise LayerError("broken tar header", layer=layer, entry="etc/passwd")
        try:
            for _ in range(10_000):  # reads slowly: ~10 s unless cancelled
                src.read(4096)
                time.sleep(0.001)
        except BaseException as exc:
            cancelled.append(type(exc).__name__)
            raise

    engine = FakeEngine(before_convert=hook)
    started = time.monotonic()
    with pytest.raises(LayerFailed) as info:
        LayerGraph(settings(source, sink, engine, jobs=3, prepass=True), layers, workdir=tmp_path / "g").run()
    assert time.monotonic() - started < 5
    err = info.value
    assert err.layer == layers[2].digest and err.stage == "build" and err.image == "example.com/app:1"
    assert str(err) == (f"converting example.com/app:1 (linux/amd64): layer 3/6 {bad}: build: "
                        f"reading layer {bad}, entry 'etc/passwd': broken tar header")
    assert isinstance(err.__cause__, LayerError)
    assert cancelled and set(cancelled) == {"Cancelled"}
    assert all(c.layer != str(layers[5].digest) for c in engine.converts())  # never started
    assert not (tmp_path / "g").exists()
    assert workers_alive() == []


def test_pull_verifies_the_digest(tmp_path: Path) -> None:
    source, sink, engine = MemorySource(), MemorySink(), FakeEngine()
    layers = make_layers(source, 2)
    source.blobs[layers[1].digest] = b"\x02" * 999 + b"X"  # same size, wrong bytes
    with pytest.raises(LayerFailed, match=r"layer 2/2 .*: pull: pulling blob .*does not match the digest") as info:
        LayerGraph(settings(source, sink, engine), layers, workdir=tmp_path / "g").run()
    assert isinstance(info.value.__cause__, ImageError)
    source.blobs[layers[1].digest] = b"\x02" * 1001
    with pytest.raises(LayerFailed, match="more than the 1000 bytes"):
        LayerGraph(settings(source, sink, engine), layers, workdir=tmp_path / "g").run()


class _SelfChecking(io.BytesIO):
    """A blob stream that checks the digest itself, as a registry download does: ``verified``
    is what its own check said once the end was read."""

    def __init__(self, data: bytes, *, says: bool) -> None:
        super().__init__(data)
        self._says = says
        self.verified = False

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if not data:
            self.verified = self._says
        return data


class SelfCheckingSource(MemorySource):
    def __init__(self, *, says: bool) -> None:
        super().__init__()
        self.says = says

    @contextlib.contextmanager
    def open_blob(self, digest: Digest, *, size: int | None = None) -> Iterator[BinaryIO]:
        yield _SelfChecking(self.blobs[digest], says=self.says)


def test_a_stream_that_checks_its_digest_is_not_hashed_again(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry download verifies the digest itself: the pull trusts its ``verified`` (no
    second hash of the blob) and the build is told the verified digest (no third). A stream
    that says it checked but did not verify fails the pull."""
    hashers: list[Digest] = []
    real = Digest.hasher

    def counting(self: Digest) -> Any:
        hashers.append(self)
        return real(self)

    monkeypatch.setattr(Digest, "hasher", counting)
    source, sink = SelfCheckingSource(says=True), MemorySink()
    layers = make_layers(source, 2)
    told: list[str | None] = []
    engine = FakeEngine()

    def convert(src: BinaryIO, out_path: Path, **kw: Any) -> Any:
        told.append(kw.get("source_digest"))
        return engine.convert(src, out_path, **kw)

    built = LayerGraph(settings(source, sink, engine, convert=convert), layers, workdir=tmp_path / "g").run()
    assert [b.index for b in built] == [0, 1]
    assert hashers == []
    assert sorted(d for d in told if d) == sorted(str(d.digest) for d in layers)

    source.says = False
    with pytest.raises(LayerFailed, match=r"pull: pulling blob .*does not match the digest"):
        LayerGraph(settings(source, sink, engine, convert=convert), layers, workdir=tmp_path / "h").run()


def test_converter_reading_other_bytes_is_an_error(tmp_path: Path) -> None:
    source, sink, engine = MemorySource(), MemorySink(), FakeEngine()
    layers = make_layers(source, 1)

    def skip_some(layer: str, src: BinaryIO) -> None:
        src.read(10)

    engine.before_convert = skip_some
    with pytest.raises(LayerFailed, match="the converter read 990 bytes of its 1000"):
        LayerGraph(settings(source, sink, engine), layers, workdir=tmp_path / "g").run()


def test_unexpected_exceptions_propagate_unchanged(tmp_path: Path) -> None:
    """A bug in a worker (here a TypeError) is not disguised as a layer failure: the very
    exception propagates, with its traceback and a note naming the layer and stage."""
    source, sink = MemorySource(), MemorySink()
    original: list[BaseException] = []

    def bug(layer: str, src: BinaryIO) -> None:
        try:
            len(5)  # type: ignore[arg-type]
        except TypeError as exc:
            original.append(exc)
            raise

    layers = make_layers(source, 2)
    with pytest.raises(TypeError) as info:
        LayerGraph(settings(source, sink, FakeEngine(before_convert=bug)), layers,
                   workdir=tmp_path / "g").run()
    assert info.value is original[0]
    assert not isinstance(info.value, ConverterError)
    assert info.traceback[-1].name == "bug"  # the worker's own frames are kept
    assert info.value.__notes__ == [f"(in the build stage of layer 1/2 {layers[0].digest} of example.com/app:1)"]
    assert not (tmp_path / "g").exists()


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_stops_workers_and_cleans_up(tmp_path: Path) -> None:
    source, sink = MemorySource(), MemorySink()
    layers = [source.add_blob(bytes([i + 1]) * (2 << 20)) for i in range(4)]

    def interrupt(layer: str, src: BinaryIO) -> None:
        if layer == str(layers[1].digest):
            _thread.interrupt_main()
        for _ in range(5000):
            src.read(4096)
            time.sleep(0.001)

    gdir = tmp_path / "g"
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        LayerGraph(settings(source, sink, FakeEngine(before_convert=interrupt), jobs=2, prepass=True), layers,
                   workdir=gdir).run()
    assert time.monotonic() - started < 5
    assert not gdir.exists()
    assert workers_alive() == []
    assert not any(kind == "tag" for kind, _ in sink.ops)


def test_no_layers(tmp_path: Path) -> None:
    source, sink, engine = MemorySource(), MemorySink(), FakeEngine()
    assert LayerGraph(settings(source, sink, engine), [], workdir=tmp_path / "g").run() == []


def test_workdir_is_private(tmp_path: Path) -> None:
    source, sink = MemorySource(), MemorySink()
    modes: list[int] = []
    gdir = tmp_path / "g"

    def look(layer: str, src: BinaryIO) -> None:
        modes.append(os.stat(gdir).st_mode & 0o777)

    LayerGraph(settings(source, sink, FakeEngine(before_convert=look)), make_layers(source, 1), workdir=gdir).run()
    assert modes == [0o700]


def test_pulled_blobs_are_private(tmp_path: Path) -> None:
    source, sink = MemorySource(), MemorySink()
    modes: list[int] = []
    gdir = tmp_path / "g"

    def look(layer: str, src: BinaryIO) -> None:
        for p in gdir.glob("layer-*.src"):  # the other layer's file may be removed meanwhile
            with contextlib.suppress(FileNotFoundError):
                modes.append(p.stat().st_mode & 0o777)

    old = os.umask(0o022)  # the mode must not depend on a permissive umask
    try:
        LayerGraph(settings(source, sink, FakeEngine(before_convert=look), jobs=1), make_layers(source, 2),
                   workdir=gdir).run()
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o600}


def test_fetch_blob_never_writes_through_an_existing_file(tmp_path: Path) -> None:
    source = MemorySource()
    [desc] = make_layers(source, 1)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    dest = tmp_path / "layer.src"
    dest.symlink_to(target)
    with pytest.raises(FileExistsError):
        fetch_blob(source, desc, dest, cancel=threading.Event())
    assert dest.is_symlink() and target.read_bytes() == b"keep"


class CorruptingSource(MemorySource):
    """Serves blob ``bad_digest`` corrupted for its first ``bad`` downloads, failing at EOF with the
    ``DigestMismatch`` the registry client raises (which allows ``attempts`` downloads)."""

    def __init__(self, *, bad: int, attempts: int) -> None:
        super().__init__()
        self.bad, self.attempts = bad, attempts
        self.bad_digest: Digest | None = None

    @contextlib.contextmanager
    def open_blob(self, digest: Digest, *, size: int | None = None) -> Iterator[BinaryIO]:
        with super().open_blob(digest, size=size) as stream:
            if digest != self.bad_digest or self.opened.count(digest) > self.bad:
                yield stream
                return
            data = stream.read()

            def read(n: int = -1) -> bytes:
                nonlocal data
                if not data:
                    raise DigestMismatch(f"fetching blob {digest} from memory: digest mismatch: the content's "
                                         "digest is sha256:0000", attempts=self.attempts)
                chunk, data = data[:500], data[500:]
                return chunk[:-1] + b"?"

            yield cast(BinaryIO, SimpleNamespace(read=read))


@pytest.mark.parametrize("bad", [1, 2])
def test_a_corrupted_download_is_made_again(tmp_path: Path, bad: int) -> None:
    source, sink, engine = CorruptingSource(bad=bad, attempts=3), MemorySink(), FakeEngine()
    layers = make_layers(source, 2)
    source.bad_digest = layers[1].digest
    with capture_logs() as logs:
        built = LayerGraph(settings(source, sink, engine), layers, workdir=tmp_path / "g").run()
    assert sink.blobs[built[1].digest] == b"EROFS:" + source.blobs[layers[1].digest]  # no stale bytes kept
    assert source.opened.count(layers[1].digest) == bad + 1
    assert [e["attempt"] for e in logs if e["event"] == "blob_refetched"] == list(range(1, bad + 1))


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_blob_corrupted_every_time_fails_after_the_allowed_downloads(tmp_path: Path, attempts: int) -> None:
    source, sink, engine = CorruptingSource(bad=99, attempts=attempts), MemorySink(), FakeEngine()
    layers = make_layers(source, 2)
    source.bad_digest = layers[1].digest
    downloads = f"{attempts} download" + ("s" if attempts > 1 else "")
    with pytest.raises(LayerFailed, match=rf"layer 2/2 {layers[1].digest}: pull: fetching blob .*: digest mismatch: "
                                          rf"the content's digest is sha256:0000 \(after {downloads}\)$") as info:
        LayerGraph(settings(source, sink, engine), layers, workdir=tmp_path / "g").run()
    cause = info.value.__cause__
    assert isinstance(cause, DigestMismatch) and not cause.temporary
    assert source.opened.count(layers[1].digest) == attempts
    assert not (tmp_path / "g").exists()


def test_fetch_blob_removes_its_file_on_failure(tmp_path: Path) -> None:
    source = CorruptingSource(bad=99, attempts=2)
    [desc] = make_layers(source, 1)
    source.bad_digest = desc.digest
    dest = tmp_path / "layer.src"
    with pytest.raises(DigestMismatch):
        fetch_blob(source, desc, dest, cancel=threading.Event())
    assert not dest.exists()


@pytest.mark.parametrize("prepass", [True, False], ids=["prepass", "chain"])
def test_layer_limits_reach_scan_and_build(tmp_path: Path, prepass: bool) -> None:
    source, sink, engine = MemorySource(), MemorySink(), FakeEngine()
    LayerGraph(settings(source, sink, engine, jobs=2, prepass=prepass, max_expanded=1234, max_entries=None),
               make_layers(source, 2), workdir=tmp_path / "g").run()
    assert engine.calls and {c.limits for c in engine.calls} == {(1234, None)}
    assert len(engine.scans()) == (2 if prepass else 0)


def test_overlapping_builds_start_before_the_trees_below(tmp_path: Path) -> None:
    # overlap_builds (a build process engine): every build runs at once, each asking its lower
    # view, which waits for the trees below; the layers still see bottom/lower as in the chain.
    source, sink = MemorySource(), MemorySink()
    layers = make_layers(source, 3)
    started = threading.Barrier(3, timeout=10)
    asked: dict[int, int] = {}

    engine = FakeEngine()
    real = engine.convert

    def convert(src: BinaryIO, out_path: Path, **kw: Any) -> Any:
        started.wait()  # all three builds run together: none waited for a tree to start
        lower = kw["lower"]
        if lower is not None:
            lower.dir_meta(b"")  # waits for the trees below
            assert isinstance(lower, NodeFinder)  # a cache hit reads its hard links' metadata only
            asked[[str(d.digest) for d in layers].index(kw["layer"])] = len(lower._stacked())
        return real(src, out_path, **kw)

    built = LayerGraph(settings(source, sink, engine, convert=convert, overlap_builds=True), layers,
                       workdir=tmp_path / "g").run()
    assert [b.index for b in built] == [0, 1, 2]
    assert asked == {1: 1, 2: 2}


@pytest.mark.parametrize("lower_fails", [True, False])
def test_overlapping_builds_report_the_lowest_failure(tmp_path: Path, lower_fails: bool) -> None:
    # Layer 2 fails at once while layer 1 is still building: the error waits for layer 1, and
    # names layer 1 if it fails too (as one-after-another builds would), else layer 2.
    source, sink = MemorySource(), MemorySink()
    layers = make_layers(source, 3)

    def hook(layer: str, src: BinaryIO) -> None:
        if layer == str(layers[2].digest):
            raise LayerError("layer 3 is bad")
        if layer == str(layers[1].digest):
            time.sleep(0.5)
            if lower_fails:
                raise LayerError("layer 2 is bad")

    with pytest.raises(LayerFailed) as info:
        LayerGraph(settings(source, sink, FakeEngine(before_convert=hook), overlap_builds=True), layers,
                   workdir=tmp_path / "g").run()
    want = layers[1] if lower_fails else layers[2]
    assert info.value.layer == want.digest
    assert ("layer 2 is bad" if lower_fails else "layer 3 is bad") in str(info.value)
