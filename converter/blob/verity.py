"""A dm-verity hash tree (veritysetup format 1, sha256, with its superblock), built while data streams by.

Layout, as ``veritysetup format`` writes it when data and hash share one file at
``--hash-offset`` (cryptsetup's ``lib/verity``; the EROFS OCI layer spec (draft) §3.5 puts
exactly this after the EROFS image): a 512-byte superblock padded to one hash block, then
the hash levels from the top (the fewest blocks) down to level 0 (one digest per data block).
Every digest is ``sha256(salt || block)`` (format 1), 128 digests per 4096-byte hash block,
the rest of a block zero. The root digest is the digest of the single top block, or of the
only data block when there is just one. See docs/blob-encoding.md.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
#: A fixed salt (the spec asks for one, §8.3: reproducible root digests); 32 zero bytes.
SALT = bytes(32)
#: struct verity_sb of cryptsetup (lib/verity/verity.c), little-endian, 512 bytes.
_SB = struct.Struct("<8sII16s32sIIQH6s256s168s")
SB_MAGIC = b"verity\0\0"
_SPOOL_IN_MEMORY = 8 << 20


def level_blocks(data_blocks: int) -> list[int]:
    """Hash blocks per level, level 0 (over the data) first; empty when there is one data block."""
    levels: list[int] = []
    count = data_blocks
    while count > 1:
        count = -(-count // PER_BLOCK)
        levels.append(count)
    return levels


def tree_size(data_size: int) -> int:
    """Bytes the tree (superblock block included) adds after ``data_size`` bytes of data."""
    return BLOCK_SIZE * (1 + sum(level_blocks(data_size // BLOCK_SIZE)))


def superblock(*, data_blocks: int, volume: uuid.UUID) -> bytes:
    """The veritysetup superblock, padded to one hash block."""
    sb = _SB.pack(SB_MAGIC, 1, 1, volume.bytes, b"sha256", BLOCK_SIZE, BLOCK_SIZE, data_blocks, len(SALT),
                  bytes(6), SALT.ljust(256, b"\0"), bytes(168))
    return sb.ljust(BLOCK_SIZE, b"\0")


_SALTED = hashlib.sha256(SALT)  # copied per block: cheaper than hashing the salt again


def _digest(block: bytes | bytearray | memoryview) -> bytes:
    h = _SALTED.copy()
    h.update(block)
    return h.digest()


class VerityBuilder:
    """Feed the data (a multiple of 4096 bytes in total) with ``update``, then ``tree()``.

    Level-0 digests (32 bytes per 4 KiB of data) spool to a temporary file in ``workdir``
    beyond 8 MiB, so memory stays bounded for any image size.
    """

    def __init__(self, *, workdir: Path | None = None) -> None:
        self._pending = bytearray()
        self._blocks = 0
        self._level0 = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            _SPOOL_IN_MEMORY, dir=str(workdir) if workdir is not None else None)
        self._hashblock = bytearray()
        self._first: bytes | None = None

    def close(self) -> None:
        self._level0.close()

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._pending:
            need = BLOCK_SIZE - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            if len(self._pending) < BLOCK_SIZE:
                return
            self._add(self._pending)
            self._pending = bytearray()
        whole = len(view) - len(view) % BLOCK_SIZE
        for start in range(0, whole, BLOCK_SIZE):
            self._add(view[start:start + BLOCK_SIZE])
        self._pending += view[whole:]

    def _add(self, block: bytes | memoryview | bytearray) -> None:
        digest = _digest(block)
        if self._blocks == 0:
            self._first = digest
        self._blocks += 1
        self._hashblock += digest
        if len(self._hashblock) == BLOCK_SIZE:
            self._level0.write(self._hashblock)
            self._hashblock = bytearray()

    @property
    def data_blocks(self) -> int:
        return self._blocks

    def tree(self, *, volume: uuid.UUID) -> tuple[bytes, Iterator[bytes]]:
        """The root digest and the tree's bytes (superblock, then levels top-down), in pieces."""
        if self._pending:
            raise ValueError(f"dm-verity data is not a multiple of {BLOCK_SIZE} bytes")
        if self._blocks == 0:
            raise ValueError("dm-verity needs at least one data block")
        if self._hashblock:
            self._level0.write(bytes(self._hashblock).ljust(BLOCK_SIZE, b"\0"))
            self._hashblock = bytearray()
        levels: list[bytes] = []  # levels 1.. (in memory: 1/128 of level 0 each)
        if self._blocks > 1:
            source: IO[bytes] = self._level0
            count = level_blocks(self._blocks)[0]
            while count > 1:
                source.seek(0)
                nxt = bytearray()
                for _ in range(count):
                    nxt += _digest(source.read(BLOCK_SIZE))
                level = _pad(bytes(nxt))
                levels.append(level)
                source = io.BytesIO(level)
                count = len(level) // BLOCK_SIZE
            source.seek(0)
            root = _digest(source.read(BLOCK_SIZE))
        else:
            assert self._first is not None
            root = self._first
        return root, self._pieces(levels, volume)

    def _pieces(self, levels: list[bytes], volume: uuid.UUID) -> Iterator[bytes]:
        yield superblock(data_blocks=self._blocks, volume=volume)
        yield from reversed(levels)
        if self._blocks > 1:
            self._level0.seek(0)
            while piece := self._level0.read(1 << 20):
                yield piece


def _pad(data: bytes) -> bytes:
    rest = len(data) % BLOCK_SIZE
    return data + bytes(BLOCK_SIZE - rest) if rest else data



class BackgroundVerity:
    """A ``VerityBuilder`` fed on its own thread, so its hashing (hashlib releases the GIL)
    overlaps the caller's own hashing and compression; at most ``depth`` pieces in flight."""

    def __init__(self, *, workdir: Path | None = None, depth: int = 2) -> None:
        self.builder = VerityBuilder(workdir=workdir)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="verity")
        self._pending: deque[Future[None]] = deque()
        self._depth = depth

    def update(self, piece: bytes) -> None:
        """Queue ``piece`` (which must not change afterwards: pass bytes, not a reused buffer)."""
        self._pending.append(self._pool.submit(self.builder.update, piece))
        while len(self._pending) > self._depth:
            self._pending.popleft().result()

    def tree(self, *, volume: uuid.UUID) -> tuple[bytes, Iterator[bytes]]:
        while self._pending:
            self._pending.popleft().result()
        return self.builder.tree(volume=volume)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self.builder.close()
