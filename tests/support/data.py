"""A FileData over bytes, as the tar reader hands out, for tests that build trees directly."""

from __future__ import annotations

from collections.abc import Iterator


class BytesData:
    """A FileData over bytes, handed out in chunks of ``step`` bytes (to exercise splitting)."""

    def __init__(self, data: bytes, *, step: int | None = None) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        out = self._data[self._pos:end]
        self._pos = end
        return out

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while chunk := self.read(self._step or size):
            yield chunk
