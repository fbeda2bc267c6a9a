"""zstd frame writers for ``+zstd`` blobs: one multithreaded frame, or one frame per fixed-size chunk.

Both stream: bytes in, frames out to a binary sink, never more than a few chunks in memory.
zstd releases the GIL, so chunk frames are compressed on a small thread pool while the next
chunk is read. Output is a pure function of the input, level and chunk size: per-chunk frames
are independent, and zstd's multithreaded mode gives the same frame for any worker count.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import zstandard

from converter.blob.chunkindex import Chunk


class FrameSink(Protocol):
    def write(self, data: bytes, /) -> Any: ...

    def flush(self) -> None: ...

    def tell(self) -> int: ...


def compression_threads() -> int:
    """Worker threads per layer blob: the CPU count, at most 2 (the pipeline already encodes
    several layers at once; each thread holds a chunk and a zstd context, so this bounds memory)."""
    return max(1, min(2, os.cpu_count() or 1))


class SingleFrameWriter:
    """All data as one zstd frame (content size in its header, xxhash checksum at its end)."""

    def __init__(self, out: FrameSink, *, level: int, size: int) -> None:
        cctx = zstandard.ZstdCompressor(level=level, threads=compression_threads(), write_checksum=True,
                                        write_content_size=True)
        self._writer = cctx.stream_writer(out, size=size, closefd=False)  # type: ignore[arg-type]

    def write(self, data: bytes | memoryview) -> None:
        self._writer.write(data)

    def close(self) -> list[Chunk]:
        self._writer.close()  # type: ignore[no-untyped-call]
        return []


class ChunkedFrameWriter:
    """Every ``chunk_size`` bytes of input (the last may be shorter) as one zstd frame.

    ``close`` returns the chunk list (frame offsets as ``out.tell()`` gives them, uncompressed
    offsets, frame SHA-256) for the chunk index. At most ``threads`` chunks are being
    compressed at a time, plus the one being filled: memory is bounded by the chunk size.
    """

    def __init__(self, out: FrameSink, *, level: int, chunk_size: int, threads: int | None = None) -> None:
        self._out = out
        self._level = level
        self._size = chunk_size
        self._threads = threads or compression_threads()
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="zstd")
        self._local = threading.local()
        self._pending: collections.deque[tuple[int, Future[bytes]]] = collections.deque()
        self._parts: list[bytes] = []  # the chunk being filled
        self._filled = 0
        self._offset = 0  # uncompressed bytes handed to frames
        self._chunks: list[Chunk] = []

    def _compress(self, data: bytes) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=self._level, write_checksum=True,
                                                               write_content_size=True)
        frame: bytes = cctx.compress(data)
        return frame

    def write(self, data: bytes | memoryview) -> None:
        """Add bytes; writing exactly one chunk's worth at a chunk boundary copies nothing."""
        if not self._filled and len(data) == self._size and isinstance(data, bytes):
            self._submit(data)
            return
        view = memoryview(data)
        while view:
            take = min(len(view), self._size - self._filled)
            self._parts.append(bytes(view[:take]))
            self._filled += take
            view = view[take:]
            if self._filled == self._size:
                self._flush_parts()

    def _flush_parts(self) -> None:
        chunk = b"".join(self._parts)
        self._parts, self._filled = [], 0
        self._submit(chunk)

    def _submit(self, chunk: bytes) -> None:
        self._pending.append((self._offset, self._pool.submit(self._compress, chunk)))
        self._offset += len(chunk)
        self._drain(self._threads)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            start, fut = self._pending.popleft()
            frame = fut.result()
            self._chunks.append(Chunk(block_offset=self._out.tell(), uncompressed_offset=start,
                                      checksum=hashlib.sha256(frame).digest()))
            self._out.write(frame)

    def close(self) -> list[Chunk]:
        try:
            if self._filled:
                self._flush_parts()
            self._drain(0)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return self._chunks

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
