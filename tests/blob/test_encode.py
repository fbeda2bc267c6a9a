"""encode_blob on its own: what `zstd -d` gives back, chunk frames checked by the tests' own index
reader, reproducible output whatever the thread count, and refusals."""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import pytest

from converter.blob import zstd as blobzstd
from converter.blob.encode import EncodedBlob, append_verity, encode_blob
from converter.blob.encoding import BlobEncoding, make_encoding
from converter.errors import ErofsFormatError
from tests.blob.indexcheck import check_chunks


def image_bytes(blocks: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    parts = [rng.randbytes(2048) + bytes(2048) if i % 3 else bytes(4096) for i in range(blocks)]
    return b"".join(parts)


def encode(tmp: Path, data: bytes, encoding: BlobEncoding, name: str = "blob") -> tuple[EncodedBlob, bytes]:
    image = tmp / f"{name}.img"
    image.write_bytes(data)
    out = tmp / name
    with open(image, "rb") as src, open(out, "wb") as dst:
        result = encode_blob(src, dst, encoding=encoding, workdir=tmp)
    return result, out.read_bytes()


@pytest.mark.parametrize(("encoding", "blocks"), [
    (make_encoding("zstd"), 700),
    (make_encoding("zstd", chunk_size=4096), 3),
    (make_encoding("zstd", chunk_size=64 << 10), 1),
    (make_encoding("zstd", chunk_size=64 << 10, verity=True), 129),
    (make_encoding("zstd,level=19", chunk_size=0, verity=True), 50),
], ids=["default", "4k-chunks", "one-block", "verity", "one-frame-verity"])
def test_zstd_roundtrip(tmp_path: Path, encoding: BlobEncoding, blocks: int) -> None:
    data = image_bytes(blocks)
    result, blob = encode(tmp_path, data, encoding)
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and result.size == len(blob)
    plain = subprocess.run(["zstd", "-dc", str(tmp_path / "blob")], capture_output=True, check=True).stdout
    assert plain[:len(data)] == data
    assert result.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    if encoding.verity:
        assert result.annotations["org.erofs.dmverity.hash_offset"] == str(len(data))
    if encoding.resolved_chunk_size:
        chunks = check_chunks(blob, dict(result.annotations), plain)
        assert chunks == -(-len(plain) // encoding.resolved_chunk_size)  # fixed-size chunks
    else:
        assert not any(k.startswith("org.erofs.chunk-index") for k in result.annotations)


def test_raw_verity_blob_is_image_then_tree(tmp_path: Path) -> None:
    data = image_bytes(10)
    result, blob = encode(tmp_path, data, make_encoding(verity=True))
    assert blob[:len(data)] == data and result.diff_id == result.digest
    assert len(blob) == len(data) + 2 * 4096  # superblock block + one level-0 block
    # Appending in place gives the same blob.
    (tmp_path / "inplace").write_bytes(data)
    with open(tmp_path / "inplace", "r+b") as f:
        assert append_verity(f, workdir=tmp_path) == result
    assert (tmp_path / "inplace").read_bytes() == blob


@pytest.mark.parametrize("encoding", [make_encoding("zstd"), make_encoding("zstd", chunk_size=0, verity=True)],
                         ids=["chunked", "one-frame"])
def test_reproducible_whatever_the_thread_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                encoding: BlobEncoding) -> None:
    data = image_bytes(2000)
    outputs = set()
    for threads in (1, 3):
        monkeypatch.setattr(blobzstd, "compression_threads", lambda t=threads: t)
        result, blob = encode(tmp_path, data, encoding, name=f"t{threads}")
        outputs.add((result.digest, result.diff_id, tuple(sorted(result.annotations.items())), blob))
    assert len(outputs) == 1


def test_verity_needs_whole_blocks(tmp_path: Path) -> None:
    with pytest.raises(ErofsFormatError, match="not a multiple of 4096"):
        encode(tmp_path, b"x" * 5000, make_encoding(verity=True))
