"""A layer's build following its pull (pipeline/arrival.py): it starts before the blob is all
there, ends only once the blob matched its digest, and is made again from a download that is."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from structlog.testing import capture_logs

from converter.convert.layer import Builder, LayerOptions, convert_layer
from converter.erofs.target import TargetFormat
from converter.errors import Cancelled, DigestMismatch, ImageError, LayerError
from converter.oci.model import Descriptor
from converter.pipeline.arrival import Arrival, FollowingReader, SourceLost, SourceRestarted
from converter.pipeline.buildproc import ProcessConvert
from converter.pipeline.graph import LayerFailed, LayerGraph
from converter.pipeline.progress import ProgressEvent, Stage
from converter.reference import Digest
from converter.testing.sample import gzip_bytes, sample_layers

from .fakes import FakeEngine, MemorySink, MemorySource
from .test_graph import settings, workers_alive

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


class GatedSource(MemorySource):
    """Serves blob ``gated`` in two halves: the second only once ``gate`` is set (or after
    ``wait`` seconds). ``then`` says how its first ``bad`` downloads end after the gate: "corrupt"
    (the second half's bytes changed, and the registry client's DigestMismatch at the end, once
    ``verdict`` is set) or "fail" (an ImageError, as a transfer that breaks off for good)."""

    def __init__(self, *, then: str = "", bad: int = 0, wait: float = 10.0) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.verdict = threading.Event()  # a corrupted download's mismatch is raised once this is set
        self.verdict.set()
        self.gated: Digest | None = None
        self.then, self.bad, self.wait = then, bad, wait
        self.gate_opened_at: float | None = None

    @contextlib.contextmanager
    def open_blob(self, digest: Digest, *, size: int | None = None) -> Iterator[BinaryIO]:
        with super().open_blob(digest, size=size) as stream:
            data = stream.read()
        if digest != self.gated:
            yield io.BytesIO(data)  # type: ignore[misc]
            return
        bad = self.opened.count(digest) <= self.bad
        source = self
        half = len(data) // 2

        class Stream(io.RawIOBase):
            pos = 0

            def read(self, n: int = -1) -> bytes:
                if self.pos == half:
                    source.gate.wait(source.wait)
                    source.gate.set()  # for the downloads after this one
                    source.gate_opened_at = source.gate_opened_at or time.monotonic()
                    if bad and source.then == "fail":
                        raise ImageError(f"fetching blob {digest}: the connection broke off")
                end = half if self.pos < half else len(data)
                chunk = data[self.pos:min(end, self.pos + max(n, 1))]
                if bad and source.then == "corrupt" and self.pos >= half:
                    chunk = chunk.replace(b"\x01", b"\x02")
                self.pos += len(chunk)
                if not chunk and bad and source.then == "corrupt":
                    source.verdict.wait(source.wait)
                    raise DigestMismatch(f"fetching blob {digest}: digest mismatch", attempts=3)
                return chunk

        yield Stream()  # type: ignore[misc]


def _opens_the_gate_when_built(source: GatedSource, events: list[tuple[float, ProgressEvent]]) -> Any:
    """A progress callback: records events; the build of layer 0 having read bytes opens the gate."""
    def progress(event: ProgressEvent) -> None:
        events.append((time.monotonic(), event))
        if event.index == 0 and event.stage is Stage.CONVERT and event.completed > 0 and not event.done:
            source.gate.set()
    return progress


def _layers(source: GatedSource, n: int = 2, size: int = 256 << 10) -> list[Descriptor]:
    layers = [source.add_blob(bytes([i + 1]) * size) for i in range(n)]
    source.gated = layers[0].digest
    return layers


def test_a_build_starts_while_its_layer_is_still_arriving(tmp_path: Path) -> None:
    source, sink, engine = GatedSource(), MemorySink(), FakeEngine()
    layers = _layers(source)
    events: list[tuple[float, ProgressEvent]] = []
    built = LayerGraph(settings(source, sink, engine, jobs=2, prepass=False,
                                progress=_opens_the_gate_when_built(source, events)),
                       layers, workdir=tmp_path / "g").run()
    assert source.gate.is_set()  # by the build, which read the first half before the rest was there
    assert source.gate_opened_at is not None
    pulled = next(t for t, e in events if e.index == 0 and e.stage is Stage.PULL and e.done)
    converting = [t for t, e in events if e.index == 0 and e.stage is Stage.CONVERT and e.completed]
    assert converting[0] < source.gate_opened_at < pulled
    for b, d in zip(built, layers, strict=True):
        assert sink.blobs[b.digest] == b"EROFS:" + source.blobs[d.digest]
    assert [c.layer for c in engine.converts()] == [str(d.digest) for d in layers]


@pytest.mark.parametrize("how", ["follow_pulls=False", "prepass"])
def test_without_following_a_build_waits_for_the_whole_blob(tmp_path: Path, how: str) -> None:
    source, sink, engine = GatedSource(wait=0.5), MemorySink(), FakeEngine()
    layers = _layers(source)
    events: list[tuple[float, ProgressEvent]] = []
    over: dict[str, Any] = {"follow_pulls": False} if how != "prepass" else {"prepass": True}
    LayerGraph(settings(source, sink, engine, jobs=2, progress=_opens_the_gate_when_built(source, events), **over),
               layers, workdir=tmp_path / "g").run()
    assert source.gate_opened_at is not None
    pulled = next(t for t, e in events if e.index == 0 and e.stage is Stage.PULL and e.done)
    converting = [t for t, e in events if e.index == 0 and e.stage is Stage.CONVERT and e.completed]
    assert pulled < converting[0]


def test_a_download_made_again_builds_the_layer_again(tmp_path: Path) -> None:
    source, sink, engine = GatedSource(then="corrupt", bad=1), MemorySink(), FakeEngine()
    layers = _layers(source, 3)
    events: list[tuple[float, ProgressEvent]] = []
    with capture_logs() as logs:
        built = LayerGraph(settings(source, sink, engine, jobs=2, prepass=False,
                                    progress=_opens_the_gate_when_built(source, events)),
                           layers, workdir=tmp_path / "g").run()
    assert source.opened.count(layers[0].digest) == 2
    assert [e["attempt"] for e in logs if e["event"] == "blob_refetched"] == [1]
    # Two builds of layer 0: the one that followed the corrupted download and was given up,
    # and one of the good download; the layers above were built once, on the good one's tree.
    converts = engine.converts()
    assert [c.layer for c in converts] == [str(layers[0].digest)] * 2 + [str(d.digest) for d in layers[1:]]
    assert converts[0].end <= converts[1].start
    assert all(c.start >= converts[1].tree_at for c in converts[2:])
    for b, d in zip(built, layers, strict=True):
        assert sink.blobs[b.digest] == b"EROFS:" + source.blobs[d.digest]  # nothing of the bad bytes


@pytest.mark.timeout(30)
def test_overlapping_builds_waiting_for_a_layer_built_again(tmp_path: Path) -> None:
    """Overlapping builds (build processes): the layers above wait for layer 0's tree while
    holding every build worker; layer 0, built again after its download was, must not queue
    behind them (it would wait for ever)."""
    source, sink, engine = GatedSource(then="corrupt", bad=1), MemorySink(), FakeEngine()
    layers = _layers(source, 3)
    real = engine.convert

    def convert(src: BinaryIO, out_path: Path, **kw: Any) -> Any:
        if kw["lower"] is not None:
            kw["lower"].dir_meta(b"")  # waits for the trees below
        return real(src, out_path, **kw)

    events: list[tuple[float, ProgressEvent]] = []
    built = LayerGraph(settings(source, sink, engine, jobs=2, prepass=False, overlap_builds=True, convert=convert,
                                progress=_opens_the_gate_when_built(source, events)),
                       layers, workdir=tmp_path / "g").run()
    assert [c.layer for c in engine.converts()].count(str(layers[0].digest)) == 2  # given up, then built again
    assert source.opened.count(layers[0].digest) == 2
    for b, d in zip(built, layers, strict=True):
        assert sink.blobs[b.digest] == b"EROFS:" + source.blobs[d.digest]


def test_a_restart_is_recognised_whatever_the_engine_made_of_it(tmp_path: Path) -> None:
    """An engine that turns the reader's signal into an error of its own (a decompressor
    reporting a broken stream, say) still gets its layer built again."""
    source, sink, engine = GatedSource(then="corrupt", bad=1), MemorySink(), FakeEngine()
    layers = _layers(source)

    def convert(*args: Any, **kw: Any) -> Any:
        try:
            return engine.convert(*args, **kw)
        except SourceRestarted as exc:
            raise ImageError("reading the layer: the stream broke") from exc

    events: list[tuple[float, ProgressEvent]] = []
    built = LayerGraph(settings(source, sink, engine, jobs=2, prepass=False, convert=convert,
                                progress=_opens_the_gate_when_built(source, events)),
                       layers, workdir=tmp_path / "g").run()
    assert [c.layer for c in engine.converts()] == [str(layers[0].digest)] * 2 + [str(layers[1].digest)]
    assert sink.blobs[built[0].digest] == b"EROFS:" + source.blobs[layers[0].digest]


def test_a_build_broken_by_bytes_corrupted_on_the_way_is_made_again(tmp_path: Path) -> None:
    """The corrupted download's bytes make the build fail before the pull has found the digest
    wrong: its error is not the layer's; the layer is built again from the good download."""
    source, sink, engine = GatedSource(then="corrupt", bad=1), MemorySink(), FakeEngine()
    source.verdict.clear()  # the pull finds the digest wrong only after the build failed
    layers = _layers(source)
    failed: list[str] = []

    def convert(src: BinaryIO, *args: Any, **kw: Any) -> Any:
        if kw["layer"] == str(layers[0].digest):
            data = b""
            while chunk := src.read(4096):
                if b"\x02" in chunk:  # what the tar parser would call a broken header
                    failed.append(kw["layer"])
                    source.verdict.set()
                    raise LayerError("broken tar header", layer=kw["layer"], entry="etc/passwd")
                data += chunk
                if kw["progress"] is not None:
                    kw["progress"](len(data))
            src = io.BytesIO(data)  # type: ignore[assignment]
        return engine.convert(src, *args, **kw)

    events: list[tuple[float, ProgressEvent]] = []
    built = LayerGraph(settings(source, sink, engine, jobs=2, prepass=False, convert=convert,
                                progress=_opens_the_gate_when_built(source, events)),
                       layers, workdir=tmp_path / "g").run()
    assert failed == [str(layers[0].digest)]
    assert source.opened.count(layers[0].digest) == 2
    for b, d in zip(built, layers, strict=True):
        assert sink.blobs[b.digest] == b"EROFS:" + source.blobs[d.digest]


def test_a_build_error_stands_when_the_download_was_right(tmp_path: Path) -> None:
    """A build that fails on bytes that turn out to be the blob's reports its own error (once the
    pull has verified them)."""
    source, sink = GatedSource(), MemorySink()
    layers = _layers(source)

    def broken(layer: str, src: BinaryIO) -> None:
        if layer == str(layers[0].digest):
            src.read(4096)
            raise LayerError("broken tar header", layer=layer, entry="etc/passwd")

    engine = FakeEngine(before_convert=broken)
    events: list[tuple[float, ProgressEvent]] = []
    with pytest.raises(LayerFailed) as info:
        LayerGraph(settings(source, sink, engine, jobs=2, prepass=False,
                            progress=lambda e: (events.append((time.monotonic(), e)), source.gate.set())),
                   layers, workdir=tmp_path / "g").run()
    assert info.value.stage == "build" and isinstance(info.value.__cause__, LayerError)
    assert source.opened.count(layers[0].digest) == 1


def test_a_pull_failing_under_a_following_build_is_reported_as_the_pull(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    told = Arrival.finished

    def finished(self: Arrival, ok: bool) -> None:
        told(self, ok)
        if not ok:
            time.sleep(0.3)  # the build, told first, fails first

    monkeypatch.setattr(Arrival, "finished", finished)
    source, sink, engine = GatedSource(then="fail", bad=1), MemorySink(), FakeEngine()
    layers = _layers(source)
    events: list[tuple[float, ProgressEvent]] = []
    with pytest.raises(LayerFailed) as info:
        LayerGraph(settings(source, sink, engine, jobs=2, prepass=False,
                            progress=_opens_the_gate_when_built(source, events)),
                   layers, workdir=tmp_path / "g").run()
    err = info.value
    assert err.stage == "pull" and err.layer == layers[0].digest
    assert str(err).endswith(f"layer 1/2 {layers[0].digest}: pull: fetching blob {layers[0].digest}: "
                             "the connection broke off")
    assert engine.converts()[0].layer == str(layers[0].digest)  # it did follow
    assert not sink.blobs and not (tmp_path / "g").exists()
    assert workers_alive() == []


def test_a_build_process_following_a_download_made_again(tmp_path: Path) -> None:
    """The real layer engine in a build process: the restart reaches it through the feeder, and
    the image is the one built from the blob itself."""
    tar = gzip_bytes(sample_layers()[0])
    source, sink = GatedSource(then="corrupt", bad=1, wait=3.0), MemorySink()
    blob = source.add_blob(tar)
    layer = Descriptor(GZ, blob.digest, blob.size)
    source.gated = layer.digest
    events: list[tuple[float, ProgressEvent]] = []
    engine, apart = FakeEngine(), ProcessConvert()
    builds: list[float] = []

    def convert(*args: Any, **kw: Any) -> Any:
        builds.append(time.monotonic())
        return apart(*args, **kw)

    [built] = LayerGraph(settings(source, sink, engine, jobs=2, prepass=False, convert=convert,
                                  builder=Builder.PYTHON, progress=_opens_the_gate_when_built(source, events)),
                         [layer], workdir=tmp_path / "g").run()
    assert source.opened.count(layer.digest) == 2
    assert source.gate_opened_at is not None
    assert len(builds) == 2 and builds[0] < source.gate_opened_at  # it followed the bad download, then the good
    expect = convert_layer(io.BytesIO(tar), tmp_path / "here.erofs",
                           options=LayerOptions(fmt=TargetFormat(), builder=Builder.PYTHON, bottom=True),
                           media_type=GZ, layer=str(layer.digest))
    assert str(built.digest) == expect.digest
    assert sink.blobs[built.digest] == (tmp_path / "here.erofs").read_bytes()


# -- the reader itself ------------------------------------------------------------------------


def _writer(tmp_path: Path) -> tuple[Path, Arrival, Any]:
    path = tmp_path / "blob"
    out = open(path, "wb")  # noqa: SIM115 - closed by the tests
    return path, Arrival(), out


def _write(out: Any, arrival: Arrival, data: bytes) -> None:
    out.write(data)
    out.flush()
    arrival.wrote(out.tell())


def test_reader_reads_what_arrived_and_ends_only_when_verified(tmp_path: Path) -> None:
    path, arrival, out = _writer(tmp_path)
    with out, FollowingReader(path, arrival, threading.Event()) as reader:
        _write(out, arrival, b"abc")
        buf = bytearray(10)
        assert reader.readinto(buf) == 3 and buf[:3] == b"abc"
        later = threading.Timer(0.2, lambda: (_write(out, arrival, b"defg"), arrival.finished(True)))
        later.start()
        started = time.monotonic()
        assert reader.readinto(buf) == 4 and buf[:4] == b"defg"  # waited for them
        assert time.monotonic() - started >= 0.15
        later.join()
        assert reader.readinto(buf) == 0  # verified and all read: the end
        reader.check_complete()


def test_reader_at_the_end_waits_for_the_verdict(tmp_path: Path) -> None:
    path, arrival, out = _writer(tmp_path)
    with out, FollowingReader(path, arrival, threading.Event()) as reader:
        _write(out, arrival, b"all of it")
        assert reader.read(100) == b"all of it"
        threading.Timer(0.2, arrival.restarted).start()  # the digest did not match
        with pytest.raises(SourceRestarted):
            reader.read(100)
        assert isinstance(reader.settle(), SourceRestarted)
        with pytest.raises(SourceRestarted):
            reader.check_complete()


def test_reader_after_a_failed_pull(tmp_path: Path) -> None:
    path, arrival, out = _writer(tmp_path)
    with out, FollowingReader(path, arrival, threading.Event()) as reader:
        _write(out, arrival, b"part")
        arrival.finished(False)
        with pytest.raises(SourceLost):
            reader.read(2)
        assert isinstance(reader.settle(), SourceLost)


def test_reader_settles_on_the_pulls_verdict(tmp_path: Path) -> None:
    """After a failed build: a download that ends verified leaves the build's error standing
    (None), after waiting for it; a cancelled graph does not wait."""
    path, arrival, out = _writer(tmp_path)
    cancel = threading.Event()
    with out, FollowingReader(path, arrival, cancel) as reader:
        _write(out, arrival, b"half")
        assert reader.read(4) == b"half"
        threading.Timer(0.2, arrival.finished, args=(True,)).start()
        started = time.monotonic()
        assert reader.settle() is None
        assert time.monotonic() - started >= 0.15
    arrival = Arrival()
    with FollowingReader(path, arrival, cancel) as reader:
        threading.Timer(0.1, cancel.set).start()
        assert reader.settle() is None


def test_reader_of_an_emptied_file_reports_the_restart(tmp_path: Path) -> None:
    """Bytes announced but gone (the file emptied for a new download): not an end of stream."""
    path, arrival, out = _writer(tmp_path)
    with out, FollowingReader(path, arrival, threading.Event()) as reader:
        _write(out, arrival, b"0123456789")
        assert reader.read(4) == b"0123"
        out.seek(0)
        out.truncate()  # as fetch_blob does, right after telling the arrival (here: a moment later)
        threading.Timer(0.2, arrival.restarted).start()
        with pytest.raises(SourceRestarted):
            reader.read(4)


def test_reader_waiting_is_cancelled(tmp_path: Path) -> None:
    path, arrival, out = _writer(tmp_path)
    cancel = threading.Event()
    with out, FollowingReader(path, arrival, cancel) as reader:
        threading.Timer(0.1, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            reader.read(1)
        assert time.monotonic() - started < 2
