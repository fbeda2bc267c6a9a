"""Reading a pulled layer while it is still arriving (the build following the pull).

A layer's build need not wait for its pull: the pull writes the blob into its private file
(``graph.fetch_blob``) and publishes how far it got in an ``Arrival``; a ``FollowingReader``
reads that file behind it and waits when it catches up. The bytes are only trusted once the
whole blob has matched its digest, so the reader's end of stream comes only then: what a
build does once its source is read to the end (the tree it hands to the layer above, the
image it starts to upload) is always made of verified bytes. Until then the build's work is
provisional:

* a download thrown away and made again (``DigestMismatch``: corrupted on the way) makes the
  reader raise ``SourceRestarted``; the graph builds the layer again from the new download;
* a pull that fails makes it raise ``SourceLost``; the graph reports the pull's own error;
* a build that fails on its own while the download is under way (bytes corrupted on the way can
  look like a broken tar) waits for the pull's verdict (``FollowingReader.settle``): a download
  made again or a failed pull count as above, a verified one leaves the build's error standing.

Neither is a ``ConverterError``: they are the graph's own signals, never shown to a user.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter.errors import Cancelled

#: How often a waiting reader wakes up to notice cancellation (seconds).
POLL = 0.25


class SourceRestarted(Exception):
    """The download being read was thrown away and is made again."""


class SourceLost(Exception):
    """The pull being read failed; its own error says why."""


class Arrival:
    """How far a pull has written its file: bytes written, the download's number, the outcome."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._written = 0
        self._download = 0
        self._outcome: bool | None = None  # True: all bytes there and verified; False: failed

    @property
    def verified(self) -> bool:
        with self._cond:
            return self._outcome is True

    def wrote(self, end: int) -> None:
        """The file's first ``end`` bytes (of the current download) are written."""
        with self._cond:
            self._written = end
            self._cond.notify_all()

    def restarted(self) -> None:
        """The download so far is thrown away; the file is written again from its start."""
        with self._cond:
            self._download += 1
            self._written = 0
            self._cond.notify_all()

    def finished(self, ok: bool) -> None:
        """The pull is over: verified (``ok``) or failed."""
        with self._cond:
            self._outcome = ok
            self._cond.notify_all()

    @property
    def download(self) -> int:
        """The number of the download being written (0 for the first)."""
        with self._cond:
            return self._download

    def wait_beyond(self, pos: int, download: int, cancel: threading.Event) -> int:
        """Wait until the file holds more than ``pos`` bytes of download ``download``, or the
        pull is verified; returns the bytes written. Raises ``SourceRestarted`` if that download
        was thrown away, ``SourceLost`` if the pull failed, ``Cancelled``."""
        return self._wait(download, cancel, lambda: self._written > pos or self._outcome is True)

    def wait_over(self, download: int, cancel: threading.Event) -> None:
        """Wait until the pull is verified with download ``download``; raises as ``wait_beyond``."""
        self._wait(download, cancel, lambda: self._outcome is True)

    def _wait(self, download: int, cancel: threading.Event, ready: Callable[[], bool]) -> int:
        with self._cond:
            while True:
                if self._download != download:
                    raise SourceRestarted
                if self._outcome is False:
                    raise SourceLost
                if ready():
                    return self._written
                if cancel.is_set():
                    raise Cancelled("reading a layer: cancelled")
                self._cond.wait(POLL)


class FollowingReader(io.RawIOBase):
    """A pulled file read while its pull writes it (see the module docstring)."""

    def __init__(self, path: Path, arrival: Arrival, cancel: threading.Event) -> None:
        super().__init__()
        self._path = path
        self._arrival = arrival
        self._cancel = cancel
        self._file: io.FileIO | None = None
        self._pos = 0
        self._download = arrival.download  # a reader that starts after a restart follows the new download

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._cancel.is_set():
            raise Cancelled("reading a layer: cancelled")
        view = memoryview(buffer).cast("B")
        while True:
            written = self._arrival.wait_beyond(self._pos, self._download, self._cancel)
            if written <= self._pos:
                return 0  # verified, and all of it read
            if self._file is None:
                self._file = io.FileIO(self._path, "rb")  # exists: the pull has written to it
            n = self._file.readinto(view[:written - self._pos]) or 0
            if n:
                self._pos += n
                return n
            # Nothing where bytes were announced: the file was truncated for a new download,
            # which the next wait reports (SourceRestarted).

    def settle(self) -> SourceRestarted | SourceLost | None:
        """After the build reading this failed: wait for the pull's verdict on the download it
        read, and return the signal to raise instead of the build's own error — the download
        was made again (so the error may come from bytes corrupted on the way), or the pull
        failed. None: the bytes were the blob's and the error stands (or the graph is cancelled)."""
        try:
            self._arrival.wait_over(self._download, self._cancel)
        except (SourceRestarted, SourceLost) as signal:
            return signal
        except Cancelled:
            return None
        return None

    def check_complete(self) -> None:
        """After a build that read this source: wait for the pull's end (a build reads to the end
        of its source, so it is over already), and raise if the bytes read were not the blob's."""
        self._arrival.wait_over(self._download, self._cancel)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()
