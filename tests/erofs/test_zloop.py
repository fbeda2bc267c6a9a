"""The compiled extent loop (converter/erofs/zloop.c): the same segments as the Python loop
(zwriter.compress_segment with zcodec.DestSizeCompressor or LzmaCompressor), which runs without
the build."""

from __future__ import annotations

import ctypes
import gzip
import os
import random
import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from converter import native
from converter.erofs import format as fmt
from converter.erofs import zcodec
from converter.erofs.zcodec import Codec, compiled_loop_available, compiled_segment
from converter.erofs.zwriter import SEGMENT, Segment, compress_segment
from tests.erofs.test_zwriter import payload

BLK = fmt.BLOCK_SIZE
#: LZ4, LZ4HC at its default level, the HC levels whose search differs (1-2 fast, 3-9 chain,
#: 10-12 optimal), and MicroLZMA at its default preset and the fastest.
CODECS = [(Codec.LZ4, None), (Codec.LZ4HC, None), (Codec.LZ4HC, 1), (Codec.LZ4HC, 4), (Codec.LZ4HC, 12),
          (Codec.LZMA, None), (Codec.LZMA, 0)]


@pytest.fixture(autouse=True)
def _compiled() -> None:
    if not compiled_loop_available():
        if os.environ.get("CI"):
            pytest.fail(f"the compiled LZ4 loop is not in use in CI ({native.status()})")
        pytest.skip(f"the compiled LZ4 loop is not in use here ({native.status()})")


def python_loop(codec: Codec, level: int | None, data: bytes, monkeypatch: pytest.MonkeyPatch) -> Segment:
    """compress_segment's Python loop: the compiled module calls ``compiled_segment`` directly, so the
    loop is switched off where it is loaded (``_zloop`` says it is not there)."""
    with monkeypatch.context() as m:
        m.setattr(zcodec, "_zloop", lambda: None)
        assert compiled_segment(codec, level, data) is None
        return compress_segment(data, codec=codec, level=level)


def compiled_loop(codec: Codec, level: int | None, data: bytes) -> Segment:
    got = compiled_segment(codec, level, data)
    assert got is not None
    return Segment(*got)


def mixed(seed: int, size: int) -> bytes:
    """Runs of random, zero, text and repeated data, so that extents change kind often."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    while sum(map(len, parts)) < size:
        kind = rng.choice(["random", "zeros", "text", "mixed"])
        parts.append(payload(kind, rng.randrange(1, 40000), rng.randrange(1 << 30)))
    return b"".join(parts)[:size]


@pytest.mark.parametrize(("codec", "level"), CODECS)
@pytest.mark.parametrize("size", [4097, 8191, 8192, 70000, 1 << 20])
@pytest.mark.parametrize("kind", ["random", "zeros", "text", "mixed", "runs"])
def test_the_compiled_loop_cuts_and_compresses_as_the_python_loop(codec: Codec, level: int | None, size: int,
                                                                  kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = mixed(size, size) if kind == "runs" else payload(kind, size, size)
    expected = python_loop(codec, level, data, monkeypatch)
    got = compiled_loop(codec, level, data)
    assert got == expected
    assert len(got.blocks) == BLK * sum(blocks for _, _, blocks in got.extents)
    assert sum(length for _, length, _ in got.extents) == size


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=3 * BLK) | st.builds(mixed, st.integers(0, 1000), st.integers(1, 300000)),
       which=st.sampled_from(CODECS))
@example(data=b"\x00", which=(Codec.LZ4, None))
@example(data=bytes(BLK + 1), which=(Codec.LZ4HC, None))
def test_the_loops_agree_on_any_input(data: bytes, which: tuple[Codec, int | None]) -> None:
    codec, level = which
    with pytest.MonkeyPatch.context() as m:
        expected = python_loop(codec, level, data, m)
    assert compiled_loop(codec, level, data) == expected


@pytest.mark.parametrize(("codec", "level"), [CODECS[0], CODECS[1], CODECS[5]])
def test_a_segment_of_a_real_tar_and_a_whole_segment(codec: Codec, level: int | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """4 MiB of a tar of this repository's sources and tests (text, gzip'd data, binaries)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    chunks: list[bytes] = []
    for dirpath, _, names in sorted(os.walk(root)):
        if "/." in dirpath or "__pycache__" in dirpath:
            continue
        for name in sorted(names):
            with open(os.path.join(dirpath, name), "rb") as f:
                chunks.append(f.read())
        if sum(map(len, chunks)) >= SEGMENT:
            break
    data = b"".join(chunks)[:SEGMENT]
    data = (data + gzip.compress(data, mtime=0))[:SEGMENT]
    assert compiled_loop(codec, level, data) == python_loop(codec, level, data, monkeypatch)


@pytest.mark.parametrize(("codec", "level"), CODECS[:2])
def test_the_compiled_loop_offers_liblz4_what_the_python_loop_offers(codec: Codec, level: int | None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Call by call: the input offered to each destSize call (the windows, the retries, LZ4HC's
    1.25-block probe after a raw extent) is the Python loop's, not only the result."""
    data = mixed(7, 600000)
    py_offers: list[int] = []
    real_call = zcodec.DestSizeCompressor._call

    def counting(self: zcodec.DestSizeCompressor, pos: int, offer: int) -> int:
        py_offers.append(offer)
        return real_call(self, pos, offer)

    monkeypatch.setattr(zcodec.DestSizeCompressor, "_call", counting)
    expected = python_loop(codec, level, data, monkeypatch)
    lib = zcodec._liblz4().dll
    c_offers: list[int] = []
    pint = ctypes.POINTER(ctypes.c_int)

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, pint, ctypes.c_int)
    def fast(src: int, dst: int, size: ctypes._Pointer[ctypes.c_int], cap: int) -> int:
        c_offers.append(size[0])
        return int(lib.LZ4_compress_destSize(src, dst, size, cap))

    @ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)
    def reset(state: int, lvl: int) -> None:
        lib.LZ4_resetStreamHC_fast(ctypes.c_void_p(state), lvl)

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, pint, ctypes.c_int)
    def hc(state: int, src: int, dst: int, size: ctypes._Pointer[ctypes.c_int], cap: int) -> int:
        c_offers.append(size[0])
        return int(lib.LZ4_compress_HC_continue_destSize(ctypes.c_void_p(state), ctypes.c_void_p(src),
                                                         ctypes.c_void_p(dst), size, cap))

    loop = zcodec._zloop()
    assert loop is not None
    room = len(data) // BLK + 2
    out = ctypes.create_string_buffer(room * BLK)
    ext = (ctypes.c_int * (3 * room))()
    is_hc = codec is Codec.LZ4HC
    state = ctypes.create_string_buffer(zcodec._liblz4().hc_state_size)
    lib.LZ4_initStreamHC(state, len(state))  # as zloop.c expects of the state it is given
    count = loop.erofs_lz4_segment(None if is_hc else fast, reset if is_hc else None, hc if is_hc else None,
                                   state, zcodec.LZ4HC_DEFAULT_LEVEL if level is None else level, data, len(data),
                                   out, room, ext)
    assert count == len(expected.extents)
    assert c_offers == py_offers
    if is_hc:  # the probes happened
        assert c_offers.count(BLK + BLK // 4) > 10


def test_compress_segment_runs_the_compiled_loop_for_one_block_pclusters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's default profile goes through the compiled loop for LZ4, LZ4HC and LZMA; big
    pclusters, the inline tail of ztailpacking, zstd and DEFLATE keep the Python loop."""
    calls: list[int] = []
    real = zcodec._zloop()
    assert real is not None

    class Counting:
        def __getattr__(self, name: str) -> object:
            calls.append(1)
            return getattr(real, name)

    monkeypatch.setattr(zcodec, "_zloop", lambda: Counting())
    data = payload("text", 100000, 1)
    compress_segment(data, codec=Codec.LZ4, level=None)
    compress_segment(data, codec=Codec.LZMA, level=None)
    assert calls == [1, 1]
    compress_segment(data, codec=Codec.LZ4, level=None, pcluster_blocks=4)
    compress_segment(data, codec=Codec.LZ4HC, level=None, inline_tail=True)
    compress_segment(data, codec=Codec.ZSTD, level=None)
    compress_segment(data, codec=Codec.LZMA, level=None, pcluster_blocks=2)
    assert calls == [1, 1]


def test_a_thread_keeps_its_buffers_and_lz4hc_state_across_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled loop reuses one output buffer, one extent buffer and one LZ4HC state per
    thread (the state only reset between calls): segments of every size and level in a row, big
    after small and small after big, each as the Python loop cuts it, and a short result does
    not keep bytes of a longer one before it."""
    sizes = [BLK + 1, SEGMENT, 5000, 300000, 1, SEGMENT - 1, 70000]
    runs = [(codec, level, mixed(k, size)) for k, size in enumerate(sizes) for codec, level in CODECS[:5]]
    expected = [python_loop(codec, level, data, monkeypatch) for codec, level, data in runs]
    got = [compiled_loop(codec, level, data) for codec, level, data in runs]
    assert got == expected


def test_threads_compress_at_once_with_buffers_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four threads each compressing their own segments over and over (LZ4 and LZ4HC) get what
    one thread gets: no buffer or LZ4HC state is shared between them (sharing them crashed the
    process or garbled streams)."""
    datas = [mixed(100 + k, 200000 + 50000 * k) for k in range(4)]
    codecs = [(Codec.LZ4HC, None), (Codec.LZ4, None), (Codec.LZ4HC, 4), (Codec.LZ4HC, 12)]
    expected = [python_loop(codec, level, data, monkeypatch)
                for (codec, level), data in zip(codecs, datas, strict=True)]
    wrong: list[int] = []
    start = threading.Barrier(4)

    def work(k: int) -> None:
        codec, level = codecs[k]
        start.wait()
        for _ in range(15):
            if compiled_loop(codec, level, datas[k]) != expected[k]:
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
