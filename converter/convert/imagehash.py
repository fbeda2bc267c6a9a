"""The SHA-256 of an image file, hashed in a thread while the writer finishes it.

Our writer puts the file data first and the superblock last, so the image's digest cannot be
taken while the data is written (SHA-256 starts at byte 0). But once the layout is planned the
first block and the data are final (``write_image``'s ``on_planned``): a thread then hashes
them, reading the data back from the page cache, while the writer lays out and writes the
metadata, and ``finish`` adds only the metadata. Both the reads and the hashing release the GIL.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["ImageHasher", "sha256_file"]

CHUNK = 1 << 20


def _hash_range(fd: int, h: hashlib._Hash, start: int, end: int | None, stop: threading.Event | None = None) -> int:
    """Hash ``fd``'s bytes from ``start`` to ``end`` (or its end); returns where it stopped."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = start
    while end is None or pos < end:
        if stop is not None and stop.is_set():
            break
        want = CHUNK if end is None else min(CHUNK, end - pos)
        n = os.preadv(fd, [view[:want]], pos)
        if n == 0:
            break
        h.update(view[:n])
        pos += n
    return pos


def sha256_file(path: Path) -> tuple[str, int]:
    """``sha256:<hex>`` and the size of the file at ``path``."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = _hash_range(fd, h, 0, None)
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest(), size


class ImageHasher:
    """Hash the image at ``path``: ``start`` (``write_image``'s ``on_planned``) hashes the first
    block and the data in a thread, ``finish`` the rest once the image is complete. Without a
    ``start`` (another builder wrote the file), ``finish`` hashes the whole file. Use as a context
    manager: leaving stops and joins the thread whatever happened."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done = 0  # bytes of the file hashed by the thread (valid once it is joined)
        self._error: BaseException | None = None

    def start(self, block0: bytes, data_end: int) -> None:
        if self._thread is not None:
            raise RuntimeError("ImageHasher.start called twice")
        self._fd = os.open(self._path, os.O_RDONLY)
        self._thread = threading.Thread(target=self._work, args=(block0, data_end), name="image-hash", daemon=True)
        self._thread.start()

    def _work(self, block0: bytes, data_end: int) -> None:
        try:
            assert self._fd is not None
            self._hash.update(block0)
            self._done = _hash_range(self._fd, self._hash, len(block0), data_end, self._stop)
        except BaseException as exc:  # re-raised by finish in the caller's thread
            self._error = exc

    def finish(self) -> tuple[str, int]:
        """``sha256:<hex>`` and the size of the complete image."""
        if self._thread is None:
            return sha256_file(self._path)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._fd is not None
        size = _hash_range(self._fd, self._hash, self._done, None)
        return "sha256:" + self._hash.hexdigest(), size

    def __enter__(self) -> ImageHasher:
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
