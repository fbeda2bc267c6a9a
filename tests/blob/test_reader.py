"""The chunk-index reader against hostile blobs: every corruption is a clear ErofsFormatError
(an index of a kind we may not use is UnreadableIndex: read sequentially, spec §3.4.6)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from converter.blob.encode import encode_blob
from converter.blob.encoding import make_encoding
from converter.blob.reader import (
    ChunkedImageData,
    UnreadableIndex,
    decompress_frame,
    image_end,
    parse_index,
    parse_range,
)
from converter.errors import ErofsFormatError
from tests.blob.test_encode import image_bytes

WHERE = "reading layer L"


@pytest.fixture
def blob(tmp_path: Path) -> tuple[bytes, dict[str, str], bytes]:
    """A 4 KiB-chunked +zstd blob of 40 blocks: (blob, annotations, image data)."""
    data = image_bytes(40)
    (tmp_path / "img").write_bytes(data)
    with open(tmp_path / "img", "rb") as src, open(tmp_path / "blob", "wb") as out:
        result = encode_blob(src, out, encoding=make_encoding("zstd", chunk_size=4096))
    return (tmp_path / "blob").read_bytes(), dict(result.annotations), data


def section(blob: bytes, annotations: dict[str, str]) -> tuple[int, bytes]:
    start, end = parse_range(annotations["org.erofs.chunk-index.range"], blob_size=len(blob), where=WHERE)
    return start, blob[start:end]


def test_reads_back(blob: tuple[bytes, dict[str, str], bytes]) -> None:
    raw, ann, data = blob
    start, sec = section(raw, ann)
    index = parse_index(sec, start=start, digest=ann["org.erofs.chunk-index.digest"], zstd=True, where=WHERE)
    view = ChunkedImageData(lambda a, b: raw[a:b], index, where=WHERE)
    view.seek(4096 * 7 + 100)
    assert view.read(9000) == data[4096 * 7 + 100: 4096 * 7 + 9100]
    view.seek(0)
    assert view.read() == data


def mutate_payload(sec: bytes, fn: Callable[[bytearray], None], *, fix_size: bool = True) -> bytes:
    payload = bytearray(sec[8:])
    fn(payload)
    head = struct.pack("<II", 0x184D2A50, len(payload) if fix_size else len(sec) - 8)
    return head + bytes(payload)


PAYLOAD_CASES: list[tuple[str, Callable[[bytearray], None], str]] = [
    ("bad-magic", lambda p: p.__setitem__(0, 0), "bad chunk-index magic"),
    ("reserved", lambda p: p.__setitem__(25, 1), "reserved chunk-index bytes are not zero"),
    ("count-too-big", lambda p: p.__setitem__(slice(16, 20), struct.pack("<I", 41)), "entries need"),
    ("truncated", lambda p: p.__delitem__(slice(len(p) - 10, len(p))), "entries need"),
    ("hash-size", lambda p: p.__setitem__(21, 16), "hash algorithm 1 with size 16"),
    ("first-offset", lambda p: p.__setitem__(slice(40, 48), struct.pack("<Q", 5)), "does not start at offset 0"),
    ("offsets-backwards", lambda p: p.__setitem__(slice(32 + 48, 40 + 48), struct.pack("<Q", 0)), "bad offsets"),
    ("frame-past-index", lambda p: p.__setitem__(slice(32 + 48 * 39, 40 + 48 * 39), struct.pack("<Q", 1 << 40)),
     "bad offsets"),
]


@pytest.mark.parametrize(("mutate", "message"), [c[1:] for c in PAYLOAD_CASES], ids=[c[0] for c in PAYLOAD_CASES])
def test_corrupt_index(blob: tuple[bytes, dict[str, str], bytes], mutate: Callable[[bytearray], None],
                       message: str) -> None:
    raw, ann, _ = blob
    start, sec = section(raw, ann)
    with pytest.raises(ErofsFormatError, match=message):
        parse_index(mutate_payload(sec, mutate), start=start, digest=None, zstd=True, where=WHERE)


def test_index_digest_and_frame(blob: tuple[bytes, dict[str, str], bytes]) -> None:
    raw, ann, _ = blob
    start, sec = section(raw, ann)
    with pytest.raises(ErofsFormatError, match="does not match its digest annotation"):
        parse_index(mutate_payload(sec, lambda p: p.__setitem__(60, p[60] ^ 1)), start=start,
                    digest=ann["org.erofs.chunk-index.digest"], zstd=True, where=WHERE)
    with pytest.raises(ErofsFormatError, match="not in a zstd skippable frame"):
        parse_index(b"\x28\xb5\x2f\xfd" + sec[4:], start=start, digest=None, zstd=True, where=WHERE)
    with pytest.raises(ErofsFormatError, match="the skippable frame says"):
        parse_index(sec[:-1], start=start, digest=None, zstd=True, where=WHERE)


@pytest.mark.parametrize(("offset", "value"), [(4, 2), (5, 0), (6, 1)], ids=["version-2", "uncompressed-type", "flags"])
def test_unknown_kinds_fall_back(blob: tuple[bytes, dict[str, str], bytes], offset: int, value: int) -> None:
    raw, ann, _ = blob
    start, sec = section(raw, ann)
    with pytest.raises(UnreadableIndex):
        parse_index(mutate_payload(sec, lambda p: p.__setitem__(offset, value)), start=start, digest=None,
                    zstd=True, where=WHERE)


def test_bad_chunk_checksum_and_crossing_frames(blob: tuple[bytes, dict[str, str], bytes]) -> None:
    raw, ann, _ = blob
    start, sec = section(raw, ann)
    index = parse_index(sec, start=start, digest=None, zstd=True, where=WHERE)
    flipped = bytearray(raw)
    flipped[index.entries[3].block_offset + 5] ^= 0x10
    view = ChunkedImageData(lambda a, b: bytes(flipped[a:b]), index, where=WHERE)
    view.seek(3 * 4096)
    with pytest.raises(ErofsFormatError, match="chunk 3 does not match its checksum"):
        view.read(10)
    # An index whose chunk spans two frames (entry 5 dropped, checksums off): refused as not one frame.
    two = raw[index.entries[4].block_offset:index.entries[6].block_offset]
    with pytest.raises(ErofsFormatError, match="the frame holds 4096 bytes, the index says 8192"):
        decompress_frame(two, expected=8192, what="chunk 4")
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    with pytest.raises(ErofsFormatError, match="more than one zstd frame"):
        decompress_frame(cctx.compress(b"a" * 4096) + cctx.compress(b"b" * 4096), expected=8192, what="chunk 4")


def test_frames_that_lie() -> None:
    data = b"x" * 10_000
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(data)
    with pytest.raises(ErofsFormatError, match="the frame holds 10000 bytes, the index says 4096"):
        decompress_frame(frame, expected=4096, what="chunk 0")
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"y" * 1_000_000)
    with pytest.raises(ErofsFormatError, match="holds more than the 4096 bytes"):
        decompress_frame(unsized, expected=4096, what="chunk 0")  # a bomb stops early
    with pytest.raises(ErofsFormatError, match="cut short"):
        decompress_frame(frame[:-6], expected=10_000, what="chunk 0")
    with pytest.raises(ErofsFormatError, match="not a zstd frame"):
        decompress_frame(b"hello world", expected=11, what="chunk 0")
    assert decompress_frame(frame, expected=10_000, what="chunk 0") == data


@pytest.mark.parametrize(("annotations", "message"), [
    ({"org.erofs.dmverity.hash_offset": "4097"}, "not a multiple of the block size"),
    ({"org.erofs.dmverity.hash_offset": "81920"}, "inside the"),
    ({"org.erofs.dmverity.hash_offset": "x"}, "are not numbers"),
    ({"org.erofs.dmverity.hash_offset": "4096", "org.erofs.dmverity.block_size": "0"}, "are not numbers"),
], ids=["unaligned", "past-end", "not-a-number", "zero-block"])
def test_verity_offsets(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(ErofsFormatError, match=message):
        image_end(annotations, 40960, where=WHERE)
    assert image_end({"org.erofs.dmverity.hash_offset": "8192"}, 40960, where=WHERE) == 8192


@pytest.mark.parametrize("text", ["abc", "10:5", "0:99999", "-1:4", "5:"], ids=["text", "backwards", "past-end",
                                                                                "negative", "empty-end"])
def test_bad_ranges(text: str) -> None:
    with pytest.raises(ErofsFormatError, match="chunk-index range"):
        parse_range(text, blob_size=1000, where=WHERE)
