"""A private disk spool for regular-file contents while a layer streams (the default ``DataSink``).

Design: docs/architecture.md §3.3.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from converter.errors import LayerError
from converter.layers.filedata import FileData
from converter.layers.model import DataRef

CHUNK = 1 << 20
SENDFILE_MIN = 64 << 10  # smaller files go through the writer's buffer: fewer syscalls than flush+sendfile


@dataclass(frozen=True, slots=True)
class SpoolRef:
    """Where one file's contents sit in a ``SpoolSink``: ``size`` bytes at ``offset``."""

    offset: int
    size: int


class SpoolReader:
    """A ``FileData``-compatible reader over one spooled file (read once or many times)."""

    def __init__(self, fd: int, ref: SpoolRef) -> None:
        self._fd = fd
        self._ref = ref
        self._pos = 0

    @property
    def size(self) -> int:
        return self._ref.size

    def read(self, n: int = -1) -> bytes:
        left = self._ref.size - self._pos
        if n < 0 or n > left:
            n = left
        if n == 0:
            return b""
        parts: list[bytes] = []
        got = 0
        while got < n:
            b = os.pread(self._fd, n - got, self._ref.offset + self._pos + got)
            if not b:
                raise OSError(f"spool file truncated at offset {self._ref.offset + self._pos + got}")
            parts.append(b)
            got += len(b)
        self._pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        while True:
            b = self.read(size)
            if not b:
                return
            yield b


class SpoolSink:
    """Stores file contents back to back in one private temporary file (a ``DataSink``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        # The spool lives as long as this object (closed by close() / the context manager).
        self._file = tempfile.TemporaryFile(  # noqa: SIM115
            dir=Path(directory) if directory is not None else None, prefix="erofs-spool-", buffering=0)
        self._fd = self._file.fileno()
        self._end = 0

    # -- DataSink -------------------------------------------------------------------------

    def add(self, data: FileData, size: int) -> SpoolRef:
        """Copy ``data`` to the end of the spool; it must be exactly ``size`` bytes long."""
        if size < 0:
            raise ValueError(f"negative file size {size}")
        start = self._end
        written = 0
        try:
            for chunk in data.chunks(CHUNK):
                if not chunk:
                    continue
                if written + len(chunk) > size:
                    raise LayerError(f"file data is longer than the {size} bytes its header declares")
                view = memoryview(chunk)
                while view:
                    n = os.pwrite(self._fd, view, start + written)
                    written += n
                    view = view[n:]
            if written != size:
                raise LayerError(f"file data ended after {written} of the {size} bytes its header declares")
        except BaseException:
            os.ftruncate(self._fd, start)
            raise
        self._end = start + size
        return SpoolRef(start, size)

    # -- reading back ---------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes held in the spool."""
        return self._end

    def _check(self, ref: DataRef) -> SpoolRef:
        if not isinstance(ref, SpoolRef):
            raise TypeError(f"{ref!r} was not made by a SpoolSink")
        if ref.offset < 0 or ref.offset + ref.size > self._end:
            raise ValueError(f"{ref!r} lies outside this spool ({self._end} bytes)")
        return ref

    def open(self, ref: DataRef) -> SpoolReader:
        """A reader for one file's contents (independent of other readers and of ``add``)."""
        return SpoolReader(self._fd, self._check(ref))

    def copy_to(self, ref: DataRef, out: IO[bytes]) -> None:
        """Write one file's contents to ``out`` (kernel-side copy when ``out`` has an fd)."""
        r = self._check(ref)
        if r.size == 0:
            return
        try:
            out_fd = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            out_fd = -1
        if out_fd >= 0 and r.size >= SENDFILE_MIN and self._sendfile(r, out, out_fd):
            return
        reader = SpoolReader(self._fd, r)
        for chunk in reader.chunks(CHUNK):
            out.write(chunk)

    def _sendfile(self, ref: SpoolRef, out: IO[bytes], out_fd: int) -> bool:
        """Copy with os.sendfile; False (nothing written) if the kernel refuses this pairing."""
        out.flush()
        try:
            seekable = out.seekable()
        except (AttributeError, OSError):
            seekable = False
        pos = out.tell() if seekable else 0
        done = 0
        while done < ref.size:
            try:
                n = os.sendfile(out_fd, self._fd, ref.offset + done, ref.size - done)
            except OSError as exc:
                if done == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    return False
                raise
            if n == 0:
                raise OSError(f"spool file truncated at offset {ref.offset + done}")
            done += n
        if seekable:
            out.seek(pos + done)  # resynchronise a buffered writer with the fd position
        return True

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> SpoolSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
