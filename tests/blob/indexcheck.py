"""The tests' own reader of an embedded chunk index (EROFS OCI layer spec (draft) §3.4), written
from the spec text and independent of converter.blob: it checks a +zstd blob end to end."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zstandard


@dataclass(frozen=True)
class Entry:
    block_offset: int
    uncompressed_offset: int
    checksum: bytes


def le(data: bytes) -> int:
    return int.from_bytes(data, "little")


def parse_index(blob: bytes, annotations: dict[str, str]) -> tuple[int, list[Entry]]:
    """(UncompressedSize, entries) of the index the annotations point at; AssertionError if malformed."""
    start_text, end_text = annotations["org.erofs.chunk-index.range"].split(":")
    start, end = int(start_text), int(end_text)
    assert end == len(blob), "the index is the last section of the blob"
    frame = blob[start:end]
    assert 0x184D2A50 <= le(frame[0:4]) <= 0x184D2A5F, "a skippable frame"
    payload = frame[8:]
    assert le(frame[4:8]) == len(payload)
    assert "sha256:" + hashlib.sha256(payload).hexdigest() == annotations["org.erofs.chunk-index.digest"]
    assert payload[0:4] == bytes([0xCD, 0xE4, 0xEC, 0x67])
    assert payload[4] == 1 and payload[5] == 1 and le(payload[6:8]) == 0  # version, zstd, flags
    size, count = le(payload[8:16]), le(payload[16:20])
    assert payload[20] == 1 and payload[21] == 32 and payload[22:32] == bytes(10)
    assert len(payload) == 32 + count * 48
    entries = []
    for i in range(count):
        raw = payload[32 + 48 * i: 32 + 48 * (i + 1)]
        entries.append(Entry(le(raw[0:8]), le(raw[8:16]), raw[16:48]))
    return size, entries


def check_chunks(blob: bytes, annotations: dict[str, str], data: bytes) -> int:
    """Every chunk is exactly one zstd frame that decompresses to its slice of ``data`` and
    whose SHA-256 is in the index; returns the number of chunks."""
    size, entries = parse_index(blob, annotations)
    assert size == len(data)
    index_start = int(annotations["org.erofs.chunk-index.range"].split(":")[0])
    assert entries[0].block_offset == 0 and entries[0].uncompressed_offset == 0
    for i, entry in enumerate(entries):
        nxt = entries[i + 1] if i + 1 < len(entries) else None
        frame = blob[entry.block_offset: nxt.block_offset if nxt else index_start]
        want = data[entry.uncompressed_offset: nxt.uncompressed_offset if nxt else size]
        assert hashlib.sha256(frame).digest() == entry.checksum, f"chunk {i} checksum"
        dobj = zstandard.ZstdDecompressor().decompressobj()
        got = dobj.decompress(frame)
        assert dobj.eof and not dobj.unused_data, f"chunk {i} is not exactly one frame"
        assert got == want, f"chunk {i} data"
    return len(entries)
