"""MicroLZMA streams for EROFS lzma pclusters, through the system liblzma (``lzma_microlzma_encoder``).

Why not Python's ``lzma`` module: it writes .xz/.lzma containers or raw LZMA1 with an end
marker, which the kernel's MicroLZMA decoder rejects. liblzma (≥ 5.3.3) has the encoder made
for EROFS: a raw LZMA1 stream whose first byte carries the inverted lc/lp/pb properties, no end
marker, encoding as much input as fits the output buffer (docs/erofs-format.md §5.4.8). ctypes
calls release the GIL, so worker threads compress in parallel.
"""

from __future__ import annotations

import ctypes
from functools import cache

from converter.erofs.clib import load_library

__all__ = ["MicroLzmaEncoder", "dict_size_for", "liblzma_version", "preset_for"]

_LZMA_FINISH = 3
_LZMA_STREAM_END = 1
_PRESET_EXTREME = 0x80000000
#: The smallest output liblzma's MicroLZMA encoder accepts.
MIN_OUTPUT = 6


class _Stream(ctypes.Structure):
    """``lzma_stream`` (lzma/base.h); the reserved tail is kept zero as LZMA_STREAM_INIT does."""

    _fields_ = [
        ("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_size_t), ("total_in", ctypes.c_uint64),
        ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_size_t), ("total_out", ctypes.c_uint64),
        ("allocator", ctypes.c_void_p), ("internal", ctypes.c_void_p),
        ("reserved", ctypes.c_ubyte * 256),
    ]


class _Options(ctypes.Structure):
    """``lzma_options_lzma`` (lzma/lzma12.h): the fields we set; the rest is filled by lzma_lzma_preset."""

    _fields_ = [
        ("dict_size", ctypes.c_uint32), ("preset_dict", ctypes.c_void_p), ("preset_dict_size", ctypes.c_uint32),
        ("lc", ctypes.c_uint32), ("lp", ctypes.c_uint32), ("pb", ctypes.c_uint32),
        ("rest", ctypes.c_ubyte * 256),
    ]


@cache
def _liblzma() -> ctypes.CDLL:
    dll = load_library("lzma", "liblzma.so.5", needs=("lzma_microlzma_encoder",),
                       what="liblzma (>= 5.3.3, with lzma_microlzma_encoder) for lzma compression",
                       install="liblzma (Debian: liblzma5)")
    enc = dll.lzma_microlzma_encoder
    enc.argtypes = [ctypes.POINTER(_Stream), ctypes.POINTER(_Options)]
    enc.restype = ctypes.c_int
    dll.lzma_code.argtypes = [ctypes.POINTER(_Stream), ctypes.c_int]
    dll.lzma_code.restype = ctypes.c_int
    dll.lzma_end.argtypes = [ctypes.POINTER(_Stream)]
    dll.lzma_end.restype = None
    dll.lzma_lzma_preset.argtypes = [ctypes.POINTER(_Options), ctypes.c_uint32]
    dll.lzma_lzma_preset.restype = ctypes.c_ubyte
    dll.lzma_version_string.argtypes = []
    dll.lzma_version_string.restype = ctypes.c_char_p
    return dll


def check_available() -> None:
    """Raise ToolError now if liblzma's MicroLZMA encoder cannot be loaded."""
    _liblzma()


def liblzma_version() -> str:
    return "liblzma " + (_liblzma().lzma_version_string() or b"?").decode("ascii", "replace")


def preset_for(level: int) -> int:
    """``--to erofs+lzma,level=N``: presets 0-9, and 100-109 for preset N-100 with LZMA_PRESET_EXTREME."""
    if 0 <= level <= 9:
        return level
    if 100 <= level <= 109:
        return (level - 100) | _PRESET_EXTREME
    raise ValueError(f"lzma level {level} is outside 0-9 and 100-109")


def dict_size_for(pcluster_size: int) -> int:
    """The dictionary mkfs.erofs uses and records: 4 pclusters, at least 32 KiB, at most 8 MiB."""
    return max(32 << 10, min(8 << 20, 4 * pcluster_size))


class MicroLzmaEncoder:
    """Encodes as much of a buffer as fits ``capacity`` bytes, one MicroLZMA stream per call.

    One instance per thread at a time (liblzma keeps its allocations between calls).
    """

    def __init__(self, *, level: int, dict_size: int, capacity: int) -> None:
        if capacity < MIN_OUTPUT:
            raise ValueError(f"a MicroLZMA stream needs at least {MIN_OUTPUT} bytes of output")
        self._lib = _liblzma()
        self._opts = _Options()
        if self._lib.lzma_lzma_preset(ctypes.byref(self._opts), preset_for(level)):
            raise ValueError(f"liblzma does not support preset {level}")
        self._opts.dict_size = dict_size
        self._stream = _Stream()
        self._capacity = capacity
        self._dst = ctypes.create_string_buffer(capacity)
        self._open = True

    def compress(self, src_address: int, avail: int) -> tuple[int, bytes]:
        """(bytes of input consumed, the stream) for the ``avail`` bytes at ``src_address``."""
        s = self._stream
        rc = self._lib.lzma_microlzma_encoder(ctypes.byref(s), ctypes.byref(self._opts))
        if rc != 0:
            raise RuntimeError(f"liblzma's MicroLZMA encoder could not start (lzma_ret {rc})")
        s.next_in = src_address
        s.avail_in = avail
        s.next_out = ctypes.cast(self._dst, ctypes.c_void_p).value
        s.avail_out = self._capacity
        rc = self._lib.lzma_code(ctypes.byref(s), _LZMA_FINISH)
        if rc != _LZMA_STREAM_END or s.total_in <= 0:
            raise RuntimeError(f"liblzma's MicroLZMA encoder failed (lzma_ret {rc})")
        return int(s.total_in), ctypes.string_at(self._dst, s.total_out)

    def c_arguments(self) -> tuple[int, int, object, object]:
        """For zloop.c's ``erofs_lzma_segment``: the addresses of ``lzma_microlzma_encoder`` and
        ``lzma_code``, and references to this encoder's ``lzma_stream`` and options."""
        lib = self._lib
        return (ctypes.cast(lib.lzma_microlzma_encoder, ctypes.c_void_p).value or 0,
                ctypes.cast(lib.lzma_code, ctypes.c_void_p).value or 0,
                ctypes.byref(self._stream), ctypes.byref(self._opts))

    def close(self) -> None:
        if self._open:
            self._open = False
            self._lib.lzma_end(ctypes.byref(self._stream))

    def __del__(self) -> None:
        self.close()
