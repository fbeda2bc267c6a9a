"""Fixed-output compression ("as much input as fits N bytes"): LZ4/LZ4HC, Zstandard, DEFLATE.

Why liblz4 through ctypes: EROFS pclusters are filled by destination-size compression
(docs/erofs-format.md §5.4.5), which the ``lz4`` PyPI package does not expose; liblz4 has it
(``LZ4_compress_destSize``, ``LZ4_compress_HC_destSize``, liblz4 >= 1.9.0), is installed on
every Linux system that has systemd, and ctypes calls release the GIL, so worker threads use
every core. Zstandard and DEFLATE have no such mode, so the longest fitting input is found by
search (the compressed size grows with the input almost monotonically); both libraries release
the GIL too. DEFLATE is zlib's at every level: ISA-L's level 1, 5 times faster and as small,
was used in 0.4.0 and taken out because with several compressing threads it once gave a
different stream for the same input (tests/erofs/test_zwriter.py, worker counts; not reproduced
in isolation), and an image must be a pure function of its input and options.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import zlib
from dataclasses import dataclass
from functools import cache

import zstandard

from converter.erofs import microlzma
from converter.erofs.clib import load_library

_MIN_WINDOW = 16 << 10  # input offered to the first destSize call of a buffer
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
        return {"lz4": 0, "lz4hc": 0, "lzma": 1, "deflate": 2, "zstd": 3}[self.value]


#: Default levels where mkfs.erofs has its own (zstd 3, its built-in deflate encoder's 1, lzma preset 6).
DEFAULT_LEVELS = {Codec.ZSTD: 3, Codec.DEFLATE: 1, Codec.LZMA: 6}
#: Zstandard window: 32 KiB, log2 = 15, recorded as 15 - 10 in the superblock's config (§5.4.7).
ZSTD_WINDOW_LOG = 15
#: The largest input one Zstandard/DEFLATE extent may take (mkfs.erofs's order of magnitude), or
#: four pclusters' worth for big pclusters.
SEARCH_MAX_INPUT = 1 << 20


@dataclass(frozen=True, slots=True)
class _Lib:
    dll: ctypes.CDLL
    hc_state_size: int


@cache
def _liblz4() -> _Lib:
    """The system liblz4 with the two destSize entry points typed (loaded once per process)."""
    dll = load_library("lz4", "liblz4.so.1", needs=("LZ4_compress_destSize", "LZ4_compress_HC_destSize"),
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
    return _Lib(dll, dll.LZ4_sizeofStateHC())


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
    return "zlib " + zlib.ZLIB_RUNTIME_VERSION


def check_available(codec: Codec) -> None:
    """Raise ToolError now if ``codec`` cannot be used (before any layer is read)."""
    if codec in (Codec.LZ4, Codec.LZ4HC):
        _liblz4()
    elif codec is Codec.LZMA:
        microlzma.check_available()


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


@dataclass(frozen=True, slots=True)
class _Unflushed:
    """zlib's state after the first ``length`` bytes of a probe, before its flush, and its output so far."""

    length: int
    state: zlib._Compress
    out: bytes


class SearchCompressor:
    """Zstandard or raw DEFLATE "as much as fits": grow the input while it fits, then bisect.

    Each probe compresses ``data[pos:pos+n]`` as one complete stream: a zstd frame with its
    content size and a 32 KiB window, no checksum or dictionary id; or raw DEFLATE (RFC 1951)
    with a 32 KiB window. The search ends when the fitting and the overflowing lengths are
    within 64 bytes. Deterministic for a given library version.

    DEFLATE probes after the first that fits continue from that one: zlib's state after the
    fitting input (before its flush) is kept, and a longer probe copies it and compresses only
    the input beyond. zlib's stream does not depend on how its input is split across calls
    without a flush, so the bytes are those of compressing the whole probe at once, for a
    fraction of the work (the probes of one extent share most of their input).
    """

    def __init__(self, codec: Codec, level: int | None, data: bytes, capacity: int) -> None:
        self._codec = codec
        self._level = DEFAULT_LEVELS[codec] if level is None else level
        self._data = memoryview(data)
        self._capacity = capacity
        self._last = 0
        self._last_raw = False
        self._zstd = _zstd_compressor(self._level) if codec is Codec.ZSTD else None

    def _probe(self, pos: int, n: int, base: _Unflushed | None) -> tuple[bytes, _Unflushed | None]:
        """The stream of ``data[pos:pos+n]``, and (DEFLATE) zlib's state before its flush, for
        longer probes to continue from; ``base`` is such a state of a shorter probe at ``pos``."""
        if self._zstd is not None:
            return self._zstd.compress(self._data[pos:pos + n]), None
        if base is not None:
            z = base.state.copy()
            head = base.out + z.compress(self._data[pos + base.length:pos + n])
        else:
            z = zlib.compressobj(self._level, zlib.DEFLATED, -15)
            head = z.compress(self._data[pos:pos + n])
        return head + z.copy().flush(), _Unflushed(n, z, head)

    def compress(self, pos: int, *, floor: int = 0) -> tuple[int, bytes]:
        """Bracket the longest fitting input: each probe aims where the last one's compression
        ratio says the stream would just fill the capacity (the compressed size grows about
        linearly with the input), falling back to bisection when that does not narrow the bracket.

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
        good, good_out = 0, b""
        fits: _Unflushed | None = None  # the longest fitting probe's state: later probes are longer
        bad = cap + 1
        n = floor if floor and self._last_raw else min(cap, max(self._capacity, self._last))
        while True:
            out, state = self._probe(pos, n, fits)
            if len(out) <= self._capacity:
                good, good_out, fits = n, out, state
                aim = n * self._capacity // max(len(out), 1) + 64  # just past the estimate
            else:
                bad = n
                aim = n * self._capacity // len(out) - 64  # just short of it
            if bad <= floor:
                self._last_raw = True
                return 0, b""
            if good == cap or bad - good <= 64:
                break
            if aim >= bad and bad > cap:
                n = cap  # everything left may fit: try it
            elif good < aim < bad:
                n = aim
            else:
                n = (good + bad) // 2
            if good < floor and n < floor:
                n = floor  # settle whether anything worth compressing fits before going lower
        if good == 0:  # pragma: no cover - any input of a few KiB fits one block
            raise RuntimeError(f"no input fits in {self._capacity} bytes of {self._codec.value} output")
        self._last = good
        self._last_raw = False
        return good, good_out


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
        input ran out). The result is still a pure function of the data.
        """
        remaining = self._len - pos
        if remaining <= 0:
            raise ValueError("nothing left to compress")
        window = max(_MIN_WINDOW, 1 << (2 * self._last).bit_length())
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


class LzmaCompressor:
    """MicroLZMA "as much as fits": liblzma's encoder stops when the output is full, so one call
    per extent; the dictionary is the one the superblock records (microlzma.dict_size_for)."""

    def __init__(self, level: int | None, data: bytes, capacity: int, *, dict_for: int | None = None) -> None:
        self._data = data  # keeps the buffer alive while liblzma reads its address
        self._src = ctypes.c_char_p(data)
        self._base = ctypes.cast(self._src, ctypes.c_void_p).value or 0
        self._enc = microlzma.MicroLzmaEncoder(level=DEFAULT_LEVELS[Codec.LZMA] if level is None else level,
                                               dict_size=microlzma.dict_size_for(dict_for or capacity),
                                               capacity=capacity)

    def compress(self, pos: int, *, floor: int = 0) -> tuple[int, bytes]:
        """Compress from ``pos`` (``floor`` is accepted for parity with SearchCompressor)."""
        remaining = len(self._data) - pos
        if remaining <= 0:
            raise ValueError("nothing left to compress")
        return self._enc.compress(self._base + pos, remaining)
