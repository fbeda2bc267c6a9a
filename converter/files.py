"""Local files handled defensively: capped reads of regular files, exclusive temporary names, atomic replace."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from converter.errors import ImageError

_CHUNK = 1 << 20
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less the process umask.

    Read from /proc (Linux) because ``os.umask`` can only be queried by changing it, which
    would race with other threads creating files.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _fresh(directory: Path, prefix: str, make: Callable[[Path], None]) -> Path:
    """Run ``make(path)`` on new random names in ``directory`` until one did not exist yet."""
    for _ in range(100):
        path = directory / f"{prefix}{secrets.token_hex(8)}"
        try:
            make(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {directory}")


def create_temp(directory: Path, prefix: str) -> tuple[int, Path]:
    """A new file (mode 0600, opened for writing) under a fresh name in ``directory``.

    ``O_CREAT|O_EXCL|O_NOFOLLOW``: an existing path — a file or a planted symlink — is never
    opened, another name is drawn instead.
    """
    fds: list[int] = []
    path = _fresh(directory, prefix, lambda p: fds.append(os.open(p, _NEW, 0o600)))
    return fds[0], path


def link_temp(source: Path, directory: Path, prefix: str) -> Path:
    """A new hard link to ``source`` under a fresh name in ``directory`` (``link`` never
    replaces an existing path). OSError if hard links are impossible (another filesystem)."""
    return _fresh(directory, prefix, lambda p: os.link(source, p))


def set_mode(path: Path, mode: int) -> None:
    """chmod ``path`` itself, refusing to follow a symlink there."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, prefix: str = ".tmp-") -> None:
    """Write ``data`` to ``path`` through a fresh temporary file in the same directory, renamed
    into place with the mode a new file gets under the umask. Nothing half-written remains."""
    fd, tmp = create_temp(path.parent, prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_regular(path: Path, *, what: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (after symlinks); a FIFO, device or
    directory is an ImageError, found without blocking or reading from it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageError(f"reading {what}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, *, limit: int, what: str) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes (more is an ImageError,
    found after reading ``limit + 1`` bytes, whatever the file claims its size is)."""
    with open_regular(path, what=what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"reading {what}: more than the limit of {limit} bytes")
    return data


__all__ = ["create_temp", "link_temp", "new_file_mode", "open_regular", "read_regular", "set_mode", "write_atomic"]
