"""Fixed-output LZ4/LZ4HC compression ("as much input as fits N bytes") through the system liblz4.

Why liblz4 through ctypes: EROFS pclusters are filled by destination-size compression
(docs/erofs-format.md §5.4.5), which the ``lz4`` PyPI package does not expose; liblz4 has it
(``LZ4_compress_destSize``, ``LZ4_compress_HC_destSize``, liblz4 >= 1.9.0), is installed on
every Linux system that has systemd, and ctypes calls release the GIL, so worker threads use
every core.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
from dataclasses import dataclass
from functools import cache

from converter.errors import ToolError

_MIN_WINDOW = 16 << 10  # input offered to the first destSize call of a buffer
_MAX_INPUT = 0x7E000000  # liblz4's LZ4_MAX_INPUT_SIZE
#: LZ4HC's default level (liblz4's LZ4HC_CLEVEL_DEFAULT; what ``mkfs.erofs -zlz4hc`` uses).
LZ4HC_DEFAULT_LEVEL = 9


class Codec(enum.Enum):
    """The compressors the python builder can write (the ``--to`` algorithm names)."""

    LZ4 = "lz4"
    LZ4HC = "lz4hc"


@dataclass(frozen=True, slots=True)
class _Lib:
    dll: ctypes.CDLL
    hc_state_size: int


@cache
def _liblz4() -> _Lib:
    """The system liblz4 with the two destSize entry points typed (loaded once per process)."""
    name = ctypes.util.find_library("lz4") or "liblz4.so.1"
    try:
        dll = ctypes.CDLL(name)
        fast = dll.LZ4_compress_destSize
        hc = dll.LZ4_compress_HC_destSize
    except (OSError, AttributeError) as exc:
        raise ToolError(f"loading liblz4 (>= 1.9.0) for the python builder's lz4 compression: {exc}; "
                        "install liblz4 (Debian: liblz4-1) or use --builder mkfs") from exc
    pint = ctypes.POINTER(ctypes.c_int)
    fast.argtypes = [ctypes.c_void_p, ctypes.c_void_p, pint, ctypes.c_int]
    fast.restype = ctypes.c_int
    hc.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, pint, ctypes.c_int, ctypes.c_int]
    hc.restype = ctypes.c_int
    dll.LZ4_sizeofStateHC.argtypes = []
    dll.LZ4_sizeofStateHC.restype = ctypes.c_int
    return _Lib(dll, dll.LZ4_sizeofStateHC())


def check_available(codec: Codec) -> None:
    """Raise ToolError now if ``codec`` cannot be used (before any layer is read)."""
    _liblz4()


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

    def compress(self, pos: int) -> tuple[int, bytes]:
        """Compress from ``pos``; the input offered grows until the encoder stops well short of it.

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
