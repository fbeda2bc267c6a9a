"""The image digest taken while the metadata is written (converter/convert/imagehash.py)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import threading
from pathlib import Path

import pytest

from converter.convert import imagehash
from converter.convert.imagehash import ImageHasher, sha256_file
from converter.convert.layer import LayerOptions, convert_layer
from converter.erofs.target import parse_format


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(n: int) -> bytes:
    buf = io.BytesIO()
    rng = random.Random(n)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            size = rng.choice([0, 1, 100, 4095, 4096, 4097, 70_000, 3 << 20])
            data = bytes(rng.randrange(256) for _ in range(64)) * (size // 64) + b"x" * (size % 64)
            info = tarfile.TarInfo(f"d{i % 7}/f{i}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000 + i, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["erofs", "erofs+lz4", "erofs+zstd,ztailpacking", "erofs+deflate"])
def test_the_digest_is_the_sha256_of_the_finished_image(fmt: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The python builder hands the hasher the first block and the data before the metadata is
    written; what it reports must be the digest of the file as finally written, and the thread
    must really have hashed the data part (more than the first block)."""
    seen: list[int] = []
    real = ImageHasher.start

    def start(self: ImageHasher, block0: bytes, data_end: int) -> None:
        seen.append(data_end)
        real(self, block0, data_end)

    monkeypatch.setattr(ImageHasher, "start", start)
    out = tmp_path / "l.erofs"
    result = convert_layer(io.BytesIO(_tar(40)), out, options=LayerOptions(fmt=parse_format(fmt)), layer="t")
    image = out.read_bytes()
    assert result.digest == _sha(image)
    assert result.size == len(image)
    assert len(seen) == 1 and 4096 < seen[0] < len(image)


def test_the_mkfs_builder_is_hashed_whole(tmp_path: Path) -> None:
    out = tmp_path / "m.erofs"
    result = convert_layer(io.BytesIO(_tar(5)), out, options=LayerOptions(fmt=parse_format("erofs"), builder="mkfs"),
                           layer="t")
    assert result.digest == _sha(out.read_bytes())


def test_the_thread_hashes_while_the_rest_is_written(tmp_path: Path) -> None:
    """start() with the final first block and the data; bytes written after it (the metadata)
    are hashed by finish(); the first block on disk may still be anything until then."""
    path = tmp_path / "img"
    data = os.urandom(3 * imagehash.CHUNK + 12345)
    block0 = b"B" * 4096
    path.write_bytes(bytes(4096) + data)  # the first block is written last, as our writer does
    with ImageHasher(path) as hasher:
        hasher.start(block0, 4096 + len(data))
        with open(path, "r+b") as f:
            f.seek(4096 + len(data))
            f.write(b"metadata" * 1000)
            f.seek(0)
            f.write(block0)
        digest, size = hasher.finish()
    assert (digest, size) == (_sha(path.read_bytes()), path.stat().st_size)
    assert sha256_file(path) == (digest, size)


def test_a_read_error_in_the_thread_is_raised_by_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "img"
    path.write_bytes(bytes(3 * 4096))

    def broken(*args: object, **kwargs: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(imagehash.os, "preadv", broken)
    with ImageHasher(path) as hasher:
        hasher.start(bytes(4096), 3 * 4096)
        with pytest.raises(OSError, match="Input/output"):
            hasher.finish()


def test_leaving_early_stops_and_joins_the_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed build leaves the hasher without finish(): the thread stops at its next chunk
    and is joined, and its file descriptor closed."""
    path = tmp_path / "img"
    path.write_bytes(bytes(4096 + 8 * imagehash.CHUNK))
    calls = []
    real = os.preadv
    holder: list[ImageHasher] = []

    reading = threading.Event()

    def slow(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(offset)
        reading.set()
        holder[0]._stop.wait(5)  # the first read lasts until the build has failed
        return real(fd, buffers, offset)

    monkeypatch.setattr(imagehash.os, "preadv", slow)
    with pytest.raises(RuntimeError, match="build failed"), ImageHasher(path) as hasher:
        holder.append(hasher)
        hasher.start(bytes(4096), 4096 + 8 * imagehash.CHUNK)
        assert reading.wait(5)  # the thread is in its first read (on a busy machine it starts late)
        raise RuntimeError("build failed")
    assert hasher._thread is not None and not hasher._thread.is_alive()
    assert hasher._fd is None
    assert calls == [4096]  # stopped after the read in flight
