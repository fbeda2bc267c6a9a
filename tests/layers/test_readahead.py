"""ReadAhead: the same bytes as the source, its errors in order, a bounded and stoppable worker."""

from __future__ import annotations

import contextvars
import gzip
import hashlib
import io
import threading

import pytest

from converter.errors import LayerError
from converter.layers.compression import open_layer_stream
from converter.layers.readahead import ReadAhead

DATA = bytes(range(256)) * 5000  # 1.28 MB


class _Failing:
    """Gives ``good`` bytes in 1000-byte reads, then raises."""

    def __init__(self, good: bytes) -> None:
        self._src = io.BytesIO(good)

    def read(self, size: int = -1, /) -> bytes:
        piece = self._src.read(min(size, 1000))
        if not piece:
            raise LayerError("corrupt gzip stream", layer="sha256:abc")
        return piece


class _Counting:
    """Counts the reads made of it and blocks none of them."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)
        self.reads = 0

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        return self._src.read(size)


@pytest.mark.parametrize("sizes", [[1], [7, 512, 100_000], [1 << 20], [-1]])
def test_reads_give_the_source_bytes(sizes: list[int]) -> None:
    out = bytearray()
    with ReadAhead(io.BytesIO(DATA), piece=4096, depth=2) as ahead:
        i = 0
        while piece := ahead.read(sizes[i % len(sizes)]):
            assert sizes[i % len(sizes)] < 0 or len(piece) <= sizes[i % len(sizes)]
            out += piece
            i += 1
        assert ahead.read(10) == b""
    assert bytes(out) == DATA


def test_a_gzip_layer_reads_the_same_through_it() -> None:
    blob = io.BytesIO(gzip.compress(DATA))
    with ReadAhead(open_layer_stream(blob, media_type=None, layer="x", max_expanded=None)) as ahead:
        assert ahead.read(-1) == DATA


def test_the_source_error_comes_after_the_bytes_before_it() -> None:
    good = DATA[:5000]
    with ReadAhead(_Failing(good), piece=1000, depth=2) as ahead:
        got = bytearray()
        with pytest.raises(LayerError, match="corrupt gzip stream"):
            while True:
                got += ahead.read(300)
        assert bytes(got) == good
        assert ahead.read(300) == b""  # the error ended the stream


def test_the_worker_stays_at_most_depth_pieces_ahead_and_close_stops_it() -> None:
    src = _Counting(DATA)
    ahead = ReadAhead(src, piece=1000, depth=3)
    assert ahead.read(10) == DATA[:10]
    for _ in range(100):  # give the worker time to fill the queue
        if src.reads >= 5:
            break
        threading.Event().wait(0.01)
    threading.Event().wait(0.05)
    assert src.reads <= 1 + 3 + 1  # the piece being read, the queue, the one waiting to be queued
    ahead.close()
    assert not any(t.name == "read-ahead" for t in threading.enumerate())
    assert ahead.read(10) == b""


def test_the_worker_runs_in_the_callers_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    class Source:
        def read(self, size: int = -1, /) -> bytes:
            seen.append(var.get())
            return b""

    var.set("the caller's")
    with ReadAhead(Source()) as ahead:
        assert ahead.read(1) == b""
    assert seen == ["the caller's"]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="depth >= 1"):
        ReadAhead(io.BytesIO(b""), depth=0)


class _RecordingHasher:
    """A sha256 that notes which thread fed it, and can be slowed down."""

    def __init__(self, delay: float = 0.0) -> None:
        self._hash = hashlib.sha256()
        self._delay = delay
        self.threads: set[str] = set()

    def update(self, data: bytes, /) -> None:
        self.threads.add(threading.current_thread().name)
        if self._delay:
            threading.Event().wait(self._delay)
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@pytest.mark.parametrize("size", [1, 4096, -1])
def test_the_hasher_gets_every_byte_in_a_thread_of_its_own(size: int) -> None:
    hasher = _RecordingHasher()
    with ReadAhead(io.BytesIO(DATA), piece=4096, depth=2, name="ra", hasher=hasher) as ahead:
        out = bytearray()
        while piece := ahead.read(size):
            out += piece
        ahead.hashed()
        assert hasher.hexdigest() == hashlib.sha256(DATA).hexdigest()  # all of it once read to the end
    assert bytes(out) == DATA
    assert hasher.threads == {"ra hash"}  # neither the reader's thread nor the worker's


def test_a_source_error_ends_the_hashing_too() -> None:
    good = DATA[:5000]
    hasher = _RecordingHasher()
    with ReadAhead(_Failing(good), piece=1000, depth=2, hasher=hasher) as ahead:
        with pytest.raises(LayerError, match="corrupt gzip stream"):
            while True:
                ahead.read(300)
        ahead.hashed()  # returns: the worker told the hashing thread it ended
    assert hasher.hexdigest() == hashlib.sha256(good).hexdigest()


def test_closing_early_stops_a_slow_hasher_too() -> None:
    hasher = _RecordingHasher(delay=0.01)
    ahead = ReadAhead(io.BytesIO(DATA), piece=1000, depth=2, name="early", hasher=hasher)
    assert ahead.read(10) == DATA[:10]
    ahead.close()
    assert not any(t.name.startswith("early") for t in threading.enumerate())


def test_a_failing_hasher_is_raised_by_hashed_and_never_blocks_the_worker() -> None:
    class Broken:
        def update(self, data: bytes, /) -> None:
            raise RuntimeError("hasher broke")

    with ReadAhead(io.BytesIO(DATA), piece=1000, depth=1, hasher=Broken()) as ahead:
        assert ahead.read(-1) == DATA  # every piece still arrives
        with pytest.raises(RuntimeError, match="hasher broke"):
            ahead.hashed()
