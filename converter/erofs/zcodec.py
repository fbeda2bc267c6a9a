"""Fixed-output compression ("as much input as fits N bytes"): LZ4/LZ4HC, Zstandard, DEFLATE.

Why liblz4 through ctypes: EROFS pclusters are filled by destination-size compression
(docs/erofs-format.md §5.4.5), which the ``lz4`` PyPI package does not expose; liblz4 has it
(``LZ4_compress_destSize``, ``LZ4_compress_HC_destSize``, liblz4 >= 1.9.0), is installed on
every Linux system that has systemd, and ctypes calls release the GIL, so worker threads use
every core. Zstandard and DEFLATE have no such mode, so the longest fitting input is found by
search (the compressed size grows with the input almost monotonically); both libraries release
the GIL too.

DEFLATE is libdeflate's (Eric Biggers'), through the ``deflate`` package, whose wheels carry
the library, so the encoder and its version come with the Python package, not the system
(mkfs.erofs offers it as ``-zlibdeflate``; its ``-zdeflate`` is an encoder of its own).
Against zlib at the same level it is 4-5 times faster for streams of the same size (16 MiB of
the bench rootfs, level 1: 0.41 s against 1.91 s for the whole search). History: 0.4.0 used
ISA-L's level 1, taken out because with several compressing threads it once gave a different
stream for the same input; 0.5.0 used zlib's. An image must be a pure function of its input
and options: libdeflate keeps no state between calls, each call has a compressor of its own.
"""

from __future__ import annotations

import ctypes
import enum
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import zstandard

from converter import native
from converter.erofs import format as fmt
from converter.erofs import microlzma
from converter.erofs.clib import load_library
from converter.errors import ToolError
from converter.levels import ZSTD_DEFAULT_LEVEL

_MIN_WINDOW = 16 << 10  # input offered to the first destSize call of a buffer (zloop.c: MIN_WINDOW)
_MAX_INPUT = 0x7E000000  # liblz4's LZ4_MAX_INPUT_SIZE
#: LZ4HC's default level (liblz4's LZ4HC_CLEVEL_DEFAULT; what ``mkfs.erofs -zlz4hc`` uses).
LZ4HC_DEFAULT_LEVEL = 9


class Codec(enum.Enum):
    """The compressors the python builder can write (the ``--to`` algorithm names)."""

    LZ4 = "lz4"
    LZ4HC = "lz4hc"
    ZSTD = "zstd"
    DEFLATE = "deflate"
    LZMA = "lzma"

    @property
    def algorithm(self) -> int:
        """The EROFS algorithm number (docs/erofs-format.md §5.4.1): 0 LZ4, 1 LZMA, 2 DEFLATE, 3 Zstandard."""
        return _ALGORITHMS[self.value]


_ALGORITHMS = {"lz4": 0, "lz4hc": 0, "lzma": 1, "deflate": 2, "zstd": 3}


#: Default levels: zstd's own (3; mkfs.erofs is given it too, see converter/erofs/target.py),
#: mkfs.erofs's DEFLATE default (1) and lzma preset (6).
DEFAULT_LEVELS = {Codec.ZSTD: ZSTD_DEFAULT_LEVEL, Codec.DEFLATE: 1, Codec.LZMA: 6}
#: Zstandard window: 32 KiB, log2 = 15, recorded as 15 - 10 in the superblock's config (§5.4.7).
ZSTD_WINDOW_LOG = 15
#: The largest input one Zstandard/DEFLATE extent may take (mkfs.erofs's order of magnitude), or
#: four pclusters' worth for big pclusters.
SEARCH_MAX_INPUT = 1 << 20
#: A search ends when the longest input known to fit and the shortest known not to are this close,
#: or when the room a fitting stream leaves would hold no more than this much input at its ratio.
_TOLERANCE = 64


@dataclass(frozen=True, slots=True)
class _Lib:
    dll: ctypes.CDLL
    hc_state_size: int
    #: The addresses of LZ4_compress_destSize, LZ4_resetStreamHC_fast and
    #: LZ4_compress_HC_continue_destSize, for zloop.c.
    fast_address: int
    hc_reset_address: int
    hc_address: int


@cache
def _liblz4() -> _Lib:
    """The system liblz4 with its destSize entry points typed (loaded once per process)."""
    needs = ("LZ4_compress_destSize", "LZ4_compress_HC_destSize", "LZ4_resetStreamHC_fast",
             "LZ4_compress_HC_continue_destSize")
    dll = load_library("lz4", "liblz4.so.1", needs=needs,
                       what="liblz4 (>= 1.9.0) for lz4 compression", install="liblz4 (Debian: liblz4-1)")
    fast = dll.LZ4_compress_destSize
    hc = dll.LZ4_compress_HC_destSize
    pint = ctypes.POINTER(ctypes.c_int)
    fast.argtypes = [ctypes.c_void_p, ctypes.c_void_p, pint, ctypes.c_int]
    fast.restype = ctypes.c_int
    hc.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, pint, ctypes.c_int, ctypes.c_int]
    hc.restype = ctypes.c_int
    dll.LZ4_sizeofStateHC.argtypes = []
    dll.LZ4_sizeofStateHC.restype = ctypes.c_int
    dll.LZ4_initStreamHC.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    dll.LZ4_initStreamHC.restype = ctypes.c_void_p

    def address(name: str) -> int:
        return ctypes.cast(getattr(dll, name), ctypes.c_void_p).value or 0

    return _Lib(dll, dll.LZ4_sizeofStateHC(), address("LZ4_compress_destSize"), address("LZ4_resetStreamHC_fast"),
                address("LZ4_compress_HC_continue_destSize"))


@cache
def _deflate() -> ModuleType:
    """The ``deflate`` package (libdeflate), imported on first use: a raw or other conversion
    needs no DEFLATE encoder, and a missing one is a clear error, not an import failure."""
    try:
        import deflate
    except ImportError as exc:
        raise ToolError(f"loading libdeflate for deflate compression: {exc}; install the Python package "
                        "deflate (pip install deflate) or use --builder mkfs") from exc
    return deflate


def library_version(codec: Codec) -> str:
    """The compression library and version that decide ``codec``'s output bytes (for cache keys)."""
    if codec in (Codec.LZ4, Codec.LZ4HC):
        fn = _liblz4().dll.LZ4_versionString
        fn.argtypes = []
        fn.restype = ctypes.c_char_p
        return "liblz4 " + (fn() or b"?").decode("ascii", "replace")
    if codec is Codec.ZSTD:
        return "zstd " + ".".join(map(str, zstandard.ZSTD_VERSION))
    if codec is Codec.LZMA:
        return microlzma.liblzma_version()
    return "libdeflate (deflate " + str(_deflate().__version__) + ")"


def check_available(codec: Codec) -> None:
    """Raise ToolError now if ``codec`` cannot be used (before any layer is read)."""
    if codec in (Codec.LZ4, Codec.LZ4HC):
        _liblz4()
    elif codec is Codec.LZMA:
        microlzma.check_available()
    elif codec is Codec.DEFLATE:
        _deflate()


def make_compressor(codec: Codec, level: int | None, data: bytes, capacity: int, *,
                    pcluster: int | None = None) -> DestSizeCompressor | SearchCompressor | LzmaCompressor:
    """A fixed-output compressor for ``data`` (see ``DestSizeCompressor.compress``) whose streams
    take at most ``capacity`` bytes; ``pcluster`` is the image's pcluster size when ``capacity`` is
    smaller (lzma's dictionary, which the superblock records, follows the pcluster size)."""
    if codec in (Codec.LZ4, Codec.LZ4HC):
        return DestSizeCompressor(codec, level, data, capacity)
    if codec is Codec.LZMA:
        return LzmaCompressor(level, data, capacity, dict_for=pcluster or capacity)
    return SearchCompressor(codec, level, data, capacity)


_local = threading.local()


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's Zstandard compressor for ``level`` (a compressor is not thread-safe, and
    making one per file cost more than compressing a small file)."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "zstd", None)
    if cache is None:
        cache = _local.zstd = {}
    comp = cache.get(level)
    if comp is None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=ZSTD_WINDOW_LOG, write_content_size=1, write_checksum=0, write_dict_id=0)
        comp = cache[level] = zstandard.ZstdCompressor(compression_params=params)
    return comp


class SearchCompressor:
    """Zstandard or raw DEFLATE "as much as fits": bracket the longest fitting input, then narrow it.

    Each probe compresses ``data[pos:pos+n]`` as one complete stream: a zstd frame with its
    content size and a 32 KiB window, no checksum or dictionary id; or raw DEFLATE (RFC 1951)
    with a 32 KiB window. The search ends when the fitting and the overflowing lengths are
    within ``_TOLERANCE`` (64) bytes. Deterministic for a given library version.
    """

    def __init__(self, codec: Codec, level: int | None, data: bytes, capacity: int) -> None:
        self._codec = codec
        self._level = DEFAULT_LEVELS[codec] if level is None else level
        self._data = memoryview(data)
        self._capacity = capacity
        self._last = 0
        self._last_raw = False
        self._zstd = _zstd_compressor(self._level) if codec is Codec.ZSTD else None
        self._deflate: Callable[[memoryview, int], bytearray] | None = \
            None if codec is Codec.ZSTD else _deflate().deflate_compress

    def _probe(self, pos: int, n: int) -> bytes | bytearray:
        """The stream of ``data[pos:pos+n]`` (one complete zstd frame or raw DEFLATE stream)."""
        if self._zstd is not None:
            return self._zstd.compress(self._data[pos:pos + n])
        assert self._deflate is not None
        return self._deflate(self._data[pos:pos + n], self._level)

    def compress(self, pos: int, *, floor: int = 0) -> tuple[int, bytes]:
        """Find, in few probes, a fitting input within about ``_TOLERANCE`` bytes of the longest.

        The compressed size grows about linearly with the input. Until a probe overflows, the
        next one goes a little (1/256) past where the last one's ratio says the stream would
        just fill the capacity, so that it likely brackets the answer; until one fits, a little
        short of it. Once bracketed, each probe goes where the line between the two sides
        reaches the capacity, kept half the tolerance inside the bracket so that it shrinks.
        The search ends once the two sides are within the tolerance, or as soon as a fitting
        stream leaves so little room that, at its own ratio, it would hold at most
        ``_TOLERANCE`` more bytes of input (no overflowing probe is then needed to prove it).
        On 16 MiB each of the bench's packages and rootfs tars: DEFLATE level 1, 4.15 -> 3.33
        probes per extent and 21 % less CPU for 3,753 blocks instead of 3,750; zstd level 3,
        4.31 -> 3.40 probes, 20 % less CPU, 3,768 blocks instead of 3,763. (Before, with the
        ratio of the last probe alone instead of the line: 6.4-6.6 probes.)

        Returns (0, b"") as soon as ``floor`` bytes of input are known not to fit (the caller
        stores such input raw, so the exact length would be wasted work); after such an extent
        the next search starts by probing ``floor`` bytes, as incompressible data comes in runs.
        """
        remaining = len(self._data) - pos
        if remaining <= 0:
            raise ValueError("nothing left to compress")
        cap = min(remaining, max(SEARCH_MAX_INPUT, 4 * self._capacity))
        if cap < floor:
            return 0, b""
        room = self._capacity
        good_out: bytes | bytearray = b""
        good = 0
        bad, bad_size = cap + 1, 0
        n = floor if floor and self._last_raw else min(cap, max(room, self._last))
        while True:
            out = self._probe(pos, n)
            if len(out) <= room:
                good, good_out = n, out
            else:
                bad, bad_size = n, len(out)
            if bad <= floor:
                self._last_raw = True
                return 0, b""
            if good == cap or bad - good <= _TOLERANCE:
                break
            if good >= floor and good_out and (room - len(good_out)) * good <= _TOLERANCE * len(good_out):
                break  # the room left holds at most _TOLERANCE more input at this ratio
            if bad > cap:  # nothing overflowed yet: just past the estimate, or everything left
                estimate = good * room // max(len(good_out), 1)
                n = min(cap, max(estimate + estimate // 256, good + 2 * _TOLERANCE))
            elif not good:  # nothing fitted yet: just short of the estimate
                estimate = bad * room // bad_size
                n = max(1, min(bad - 1, estimate - estimate // 256))
            else:
                estimate = good + (room - len(good_out)) * (bad - good) // max(bad_size - len(good_out), 1)
                n = min(max(estimate, good + _TOLERANCE // 2), bad - _TOLERANCE // 2)
            if good < floor and n < floor:
                n = floor  # settle whether anything worth compressing fits before going lower
        if good == 0:  # pragma: no cover - any input of a few KiB fits one block
            raise RuntimeError(f"no input fits in {self._capacity} bytes of {self._codec.value} output")
        self._last = good
        self._last_raw = False
        return good, bytes(good_out)


class DestSizeCompressor:
    """Compresses prefixes of one buffer into at most ``capacity`` bytes; one per thread at a time.

    ``compress(pos)`` compresses the longest prefix of ``data[pos:]`` whose compressed form fits
    and returns (bytes consumed, compressed stream). The result is a pure function of the
    input, the level and the liblz4 version.
    """

    def __init__(self, codec: Codec, level: int | None, data: bytes | bytearray, capacity: int) -> None:
        lib = _liblz4()
        self._lib = lib
        self._hc = codec is Codec.LZ4HC
        self._level = LZ4HC_DEFAULT_LEVEL if level is None else level
        raw = data if isinstance(data, bytes) else bytes(data)
        self._src = ctypes.c_char_p(raw)  # keeps ``raw`` alive while we use its address
        self._base = ctypes.cast(self._src, ctypes.c_void_p).value or 0
        self._len = len(data)
        self._capacity = capacity
        self._dst = ctypes.create_string_buffer(capacity)
        self._state = ctypes.create_string_buffer(lib.hc_state_size) if self._hc else None
        self._consumed = ctypes.c_int(0)
        self._last = 0  # input consumed by the previous call

    def compress(self, pos: int, *, floor: int = 0) -> tuple[int, bytes]:
        """Compress from ``pos``; the input offered grows until the encoder stops well short of it
        (``floor`` is accepted for parity with SearchCompressor: one destSize call decides anyway).

        Why a window: liblz4's destSize calls cost time in proportion to the input they are
        offered, not to what they consume (LZ4HC took 3 ms per 4 KiB block when offered 1 MiB
        of random data, 0.04 ms when offered 8 KiB). So each call is offered about twice what
        the previous one consumed, and offered four times more whenever it consumed more than
        three quarters of its window (near the window's end the encoder may stop early because
        input ran out). For LZ4HC, after an attempt that did not shrink, a first call is
        offered only 1.25 times the capacity (see the code). The result is still a pure function of the data.
        """
        remaining = self._len - pos
        if remaining <= 0:
            raise ValueError("nothing left to compress")
        window = max(_MIN_WINDOW, 1 << (2 * self._last).bit_length())
        probe = self._capacity + self._capacity // 4
        if self._hc and 0 < self._last <= self._capacity and remaining > probe:
            # The last attempt did not shrink (its input is stored raw): incompressible data
            # comes in runs, and on it LZ4HC searches every byte it is offered (no match ends
            # the literal run early), so offer a quarter pcluster more than fits raw first. A
            # result that again does not shrink stands; one that does is compressed again in
            # the usual window. (The images of the bench layers are the same bytes as with the
            # usual window; LZ4's fast encoder skips ahead on such data by itself, and on the
            # rootfs layer a probe changed where one of its extents ends.)
            n = self._call(pos, probe)
            used = self._consumed.value
            if used <= self._capacity:
                self._last = used
                return used, self._dst.raw[:n]
            window = max(window, 4 * probe)
        while True:
            offer = min(remaining, window, _MAX_INPUT)
            n = self._call(pos, offer)
            used = self._consumed.value
            if offer in (remaining, _MAX_INPUT) or used <= offer - offer // 4:
                break
            window *= 4
        self._last = used
        return used, self._dst.raw[:n]

    def _call(self, pos: int, offer: int) -> int:
        self._consumed.value = offer
        src = self._base + pos
        if self._hc:
            n = self._lib.dll.LZ4_compress_HC_destSize(self._state, src, self._dst, ctypes.byref(self._consumed),
                                                       self._capacity, self._level)
        else:
            n = self._lib.dll.LZ4_compress_destSize(src, self._dst, ctypes.byref(self._consumed), self._capacity)
        if n <= 0 or self._consumed.value <= 0:
            raise RuntimeError(f"liblz4 destSize compression failed (returned {n})")
        return int(n)


#: Extents of one segment: (lcluster type, input length, blocks), as Segment.extents.
Extents = tuple[tuple[int, int, int], ...]


@cache
def _zloop() -> ctypes.CDLL | None:
    """zloop.c's library, when the compiled modules are in use (converter/native.py): the
    build that made them made it, from the sources they were checked against."""
    if native.status() != "native":
        return None
    dll = ctypes.CDLL(str(native.LOOP_LIBRARY))
    ptr, num = ctypes.c_void_p, ctypes.c_int
    # (fast, hc_reset, hc, state, level, data, n, out, out_blocks, ext) and (encoder, code, stream, options, ...)
    dll.erofs_lz4_segment.argtypes = [ptr, ptr, ptr, ptr, num, ctypes.c_char_p, num, ptr, num, ptr]
    dll.erofs_lzma_segment.argtypes = [ptr, ptr, ptr, ptr, ctypes.c_char_p, num, ptr, num, ptr]
    dll.erofs_lz4_segment.restype = dll.erofs_lzma_segment.restype = num
    return dll


def compiled_loop_available() -> bool:
    """Whether ``compiled_segment`` runs the compiled loop (else the caller runs the Python one)."""
    return _zloop() is not None


_COMPILED = frozenset({Codec.LZ4, Codec.LZ4HC, Codec.LZMA})
_INT_SIZE = ctypes.sizeof(ctypes.c_int)
_GRAIN = 64 << 10  # scratch buffers grow in steps of this many bytes


class _Buffer:
    """A zeroed buffer of ``size`` bytes and its address (held: the address stays valid)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = ctypes.create_string_buffer(size)
        self.address = ctypes.addressof(self.data)


def _fitted(old: _Buffer | None, size: int) -> _Buffer:
    """``old`` if it holds ``size`` bytes, else a new buffer that does (rounded up to ``_GRAIN``)."""
    if old is not None and old.size >= size:
        return old
    return _Buffer(-(-size // _GRAIN) * _GRAIN)


class _Scratch(threading.local):
    """One thread's buffers for the compiled loop, kept from call to call: the output blocks, the
    extents, and the LZ4HC state (a new one per call cost a 4 MiB zero-fill per segment and
    256 KiB per LZ4HC call, while holding the GIL)."""

    def __init__(self) -> None:
        self.out: _Buffer | None = None
        self.ext: _Buffer | None = None
        self.hc_state: _Buffer | None = None

    def lz4hc_state(self, lib: _Lib) -> int:
        """This thread's LZ4HC state, prepared (LZ4_initStreamHC) once; zloop.c resets it per call."""
        if self.hc_state is None:
            state = _Buffer(lib.hc_state_size)
            if not lib.dll.LZ4_initStreamHC(state.address, state.size):
                raise RuntimeError("LZ4_initStreamHC refused the state buffer")
            self.hc_state = state
        return self.hc_state.address


_scratch = _Scratch()


def compiled_segment(codec: Codec, level: int | None, data: bytes) -> tuple[bytes, Extents] | None:
    """A whole segment of one-block LZ4/LZ4HC/LZMA pclusters without an inline tail, cut and
    compressed by zloop.c in one call (ctypes releases the GIL for all of it): the blocks and
    their extents, the same as zwriter.compress_segment's Python loop with DestSizeCompressor or
    LzmaCompressor gives; None for other codecs or when the compiled loop is not there."""
    if codec not in _COMPILED:
        return None
    loop = _zloop()
    if loop is None or len(data) > _MAX_INPUT:  # a segment is 4 MiB; the loop counts in C ints
        return None
    block = fmt.BLOCK_SIZE
    room = len(data) // block + 2
    scratch = _scratch
    scratch.out = out = _fitted(scratch.out, room * block)
    scratch.ext = ext = _fitted(scratch.ext, 3 * room * _INT_SIZE)
    if codec is Codec.LZMA:
        enc = _microlzma(level, block, block)
        try:
            count = loop.erofs_lzma_segment(*enc.c_arguments(), data, len(data), out.address, room, ext.address)
        finally:
            enc.close()
        failed = "liblzma's MicroLZMA encoder failed"
    else:
        lib = _liblz4()
        if codec is Codec.LZ4HC:
            count = loop.erofs_lz4_segment(None, lib.hc_reset_address, lib.hc_address, scratch.lz4hc_state(lib),
                                           LZ4HC_DEFAULT_LEVEL if level is None else level, data, len(data),
                                           out.address, room, ext.address)
        else:
            count = loop.erofs_lz4_segment(lib.fast_address, None, None, None, 0, data, len(data), out.address, room,
                                           ext.address)
        failed = "liblz4 destSize compression failed"
    if count == -1:
        raise RuntimeError(failed)
    if count < 0:  # pragma: no cover - the room above is what the loop can write
        raise RuntimeError(f"the compiled extent loop returned {count}")
    fields = struct.unpack_from(f"{3 * count}i", ext.data)
    blocks = fields[2::3]
    extents = tuple(zip(fields[0::3], fields[1::3], blocks, strict=True))
    return ctypes.string_at(out.address, sum(blocks) * block), extents


def _microlzma(level: int | None, capacity: int, dict_for: int) -> microlzma.MicroLzmaEncoder:
    """A MicroLZMA encoder at ``level`` (default: preset 6) for streams of at most ``capacity``
    bytes, with the dictionary the superblock records for pclusters of ``dict_for`` bytes."""
    return microlzma.MicroLzmaEncoder(level=DEFAULT_LEVELS[Codec.LZMA] if level is None else level,
                                      dict_size=microlzma.dict_size_for(dict_for), capacity=capacity)


class LzmaCompressor:
    """MicroLZMA "as much as fits": liblzma's encoder stops when the output is full, so one call
    per extent; the dictionary is the one the superblock records (microlzma.dict_size_for)."""

    def __init__(self, level: int | None, data: bytes, capacity: int, *, dict_for: int | None = None) -> None:
        self._data = data  # keeps the buffer alive while liblzma reads its address
        self._src = ctypes.c_char_p(data)
        self._base = ctypes.cast(self._src, ctypes.c_void_p).value or 0
        self._enc = _microlzma(level, capacity, dict_for or capacity)

    def compress(self, pos: int, *, floor: int = 0) -> tuple[int, bytes]:
        """Compress from ``pos`` (``floor`` is accepted for parity with SearchCompressor)."""
        remaining = len(self._data) - pos
        if remaining <= 0:
            raise ValueError("nothing left to compress")
        return self._enc.compress(self._base + pos, remaining)
