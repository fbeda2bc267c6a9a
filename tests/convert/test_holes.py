"""Holes stay holes: sparse tar members become CHUNK_BASED files whose holes are null chunks.

A 60e9-byte sparse member (a few KiB of tar) must convert quickly into a small image that the
kernel reads back exactly: the size, every data segment (compared with what Go's archive/tar
reads from the tar) and zeros in the holes (the kernel reports them with SEEK_HOLE; samples
are read). Every sparse dialect is covered: GNU old-style 'S' and PAX 0.0, 0.1 and 1.0.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converter.convert.layer import LayerOptions, convert_layer
from converter.erofs import format as fmt
from converter.erofs.reader import ErofsImage
from converter.erofs.target import TargetFormat, parse_format
from converter.erofs.writer import choose_chunkbits
from converter.errors import LayerError, UsageError
from tests.support import tarcraft as tc
from tests.support.gotar import GO_TESTDATA, gotar_binary
from tests.support.kernel import fsck, mounted

BIG = 60_000_000_000
BLOCK = 4096


def go_runs(tar: Path) -> dict[str, dict[str, object]]:
    """Go's reading of each regular file: size and the non-zero 4 KiB runs with their sha256."""
    res = subprocess.run([str(gotar_binary()), "segments", str(tar)], capture_output=True, check=True)
    return {f["name"].lstrip("./"): f for f in json.loads(res.stdout) or []}


def kernel_runs(path: Path) -> tuple[int, list[dict[str, object]], list[tuple[int, int]]]:
    """Size, the non-zero 4 KiB runs (read only where the kernel reports data) and the holes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        extents, holes, pos = [], [], 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            if data > pos:
                holes.append((pos, data))
            if data >= size:
                break
            end = os.lseek(fd, data, os.SEEK_HOLE)
            extents.append((data, end))
            pos = end
        found: list[tuple[int, int, hashlib._Hash]] = []  # (offset, length, sha256 so far)
        for start, end in extents:
            for off in range(start, end, BLOCK):
                blk = os.pread(fd, min(BLOCK, end - off), off)
                if blk.count(0) == len(blk):
                    continue
                if found and found[-1][0] + found[-1][1] == off:
                    first, length, digest = found[-1]
                    found[-1] = (first, length + len(blk), digest)
                else:
                    digest = hashlib.sha256()
                    found.append((off, len(blk), digest))
                digest.update(blk)
        runs: list[dict[str, object]] = [{"offset": o, "length": n, "sha256": d.hexdigest()} for o, n, d in found]
        for start, end in holes:  # the kernel says hole: sample it
            for off in {start, (start + end) // 2 // BLOCK * BLOCK, max(start, end - (1 << 16))}:
                assert os.pread(fd, min(1 << 16, end - off), off).count(0) == min(1 << 16, end - off)
        return size, runs, holes
    finally:
        os.close(fd)


def sparse_tar(tmp: Path, writer: list[str]) -> Path:
    src = tmp / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for k, offset in enumerate((0, 123_456_789, 30_000_000_000, BIG - 5000)):
            f.seek(offset)
            f.write(bytes([k + 1]) * 3000 + os.urandom(2000))
        f.truncate(BIG)
    (src / "plain").write_bytes(b"ordinary\n" * 1000)
    tar = tmp / "sparse.tar"
    subprocess.run([*writer, "-cf", str(tar), "-C", str(src), "."], check=True)
    (src / "big").unlink()
    return tar


WRITERS = {
    "go-gnu-old-sparse": None,
    "go-pax-1.0": None,
    "gnu-tar-old-sparse": ["tar", "--format=gnu", "--sparse"],
    "gnu-tar-pax-0.0": ["tar", "--format=pax", "--sparse", "--sparse-version=0.0"],
    "gnu-tar-pax-0.1": ["tar", "--format=pax", "--sparse", "--sparse-version=0.1"],
    "gnu-tar-pax-1.0": ["tar", "--format=pax", "--sparse", "--sparse-version=1.0"],
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_60e9_byte_sparse_member_reads_back_exactly(tmp_path: Path, writer: str) -> None:
    argv = WRITERS[writer]
    if argv is None:
        tar = GO_TESTDATA / ("gnu-sparse-big.tar" if "gnu" in writer else "pax-sparse-big.tar")
        if not tar.exists():
            pytest.skip(f"Go's archive/tar testdata is missing ({GO_TESTDATA}); run `make setup`")
    else:
        tar = sparse_tar(tmp_path, argv)
    expected = go_runs(tar)
    out = tmp_path / "sparse.erofs"
    with open(tar, "rb") as src:
        result = convert_layer(src, out, options=LayerOptions(fmt=TargetFormat(), bottom=True), layer=tar.name)
    assert result.size < 8 << 20, f"{result.size} bytes for a few KiB of data"
    fsck(out)
    with ErofsImage.open(out) as img:
        assert img.superblock.feature_incompat == fmt.INCOMPAT_CHUNKED_FILE
    with mounted(out) as mnt:
        for name, want in expected.items():
            size, runs, holes = kernel_runs(mnt / name)
            assert size == want["size"] == BIG or name == "plain", name
            assert runs == want["runs"], name
            if size == BIG:
                assert sum(end - start for start, end in holes) > BIG - (64 << 20)


def test_ordinary_files_keep_the_flat_layouts(tmp_path: Path) -> None:
    """A layer without holes needs nothing newer than Linux 5.4 (no CHUNKED_FILE bit)."""
    tar = tc.archive(tc.member(b"a", b"x" * 10000), tc.member(b"zeros", bytes(1 << 20)))
    out = tmp_path / "flat.erofs"
    convert_layer(io.BytesIO(tar), out, options=LayerOptions(fmt=TargetFormat()), layer="flat")
    with ErofsImage.open(out) as img:
        assert img.superblock.feature_incompat == 0
        assert img.read_bytes("/zeros") == bytes(1 << 20)


def _pax10(realsize: int, segments: list[tuple[int, int]]) -> bytes:
    body = b"%d\n" % len(segments) + b"".join(b"%d\n%d\n" % s for s in segments)
    body = tc.pad(body)[: -(-len(body) // 512) * 512] if len(body) % 512 else body
    data = b"".join(bytes([65 + i % 26]) * n for i, (_, n) in enumerate(segments))
    records = (tc.pax_record(b"GNU.sparse.major", b"1") + tc.pax_record(b"GNU.sparse.minor", b"0")
               + tc.pax_record(b"GNU.sparse.realsize", b"%d" % realsize) + tc.pax_record(b"GNU.sparse.name", b"s"))
    return tc.pax(records) + tc.member(b"GNUSparseFile/s", body + data)


@pytest.mark.parametrize(("realsize", "segments"), [
    pytest.param(64 << 20, [(0, 1)], id="one-byte-at-0"),
    pytest.param((64 << 20) + 1, [((64 << 20), 1)], id="one-byte-at-the-end"),
    pytest.param(10 * BLOCK, [(BLOCK - 1, 2), (5 * BLOCK, BLOCK)], id="straddles-blocks"),
    pytest.param(3 * BLOCK + 5, [(0, 3 * BLOCK + 5)], id="no-holes"),
    pytest.param(1 << 36, [(i << 26, 100) for i in range(0, 1024, 7)], id="64gib-many-segments"),
])
def test_sparse_members_read_back_through_our_reader_and_the_kernel(tmp_path: Path, realsize: int,
                                                                    segments: list[tuple[int, int]]) -> None:
    tar = tmp_path / "s.tar"
    tar.write_bytes(tc.archive(_pax10(realsize, segments)))
    out = tmp_path / "s.erofs"
    with open(tar, "rb") as src:
        convert_layer(src, out, options=LayerOptions(fmt=TargetFormat()), layer="s")
    fsck(out)
    expected = bytearray()
    with ErofsImage.open(out) as img:
        st = img.stat("/s")
        assert st.size == realsize
        if realsize <= 64 << 20:  # small enough to read whole through our reader
            for i, (offset, n) in enumerate(segments):
                expected[len(expected):offset] = bytes(offset - len(expected))
                expected += bytes([65 + i % 26]) * n
            expected += bytes(realsize - len(expected))
            assert img.read_bytes("/s") == bytes(expected)
    with mounted(out) as mnt:
        fd = os.open(mnt / "s", os.O_RDONLY)
        try:
            for i, (offset, n) in enumerate(segments):
                assert os.pread(fd, n, offset) == bytes([65 + i % 26]) * n
        finally:
            os.close(fd)


def test_choose_chunkbits_trades_the_map_against_stored_zeros() -> None:
    # one 4 KiB segment in 60e9 bytes: 512 KiB chunks (a 458 KB map plus one stored chunk) is cheapest
    assert choose_chunkbits(BIG, [(10_000_000_000, 4096)]) == (7, 512 * 1024 + 4 * (-(-BIG // (512 * 1024))))
    _bits, cost = choose_chunkbits(BIG, [(i * 10_000_000_000, 4096) for i in range(6)])
    assert cost < 4 << 20
    assert choose_chunkbits(8 * BLOCK, [(0, 8 * BLOCK)])[1] == 8 * BLOCK + 4  # one block per chunk


def test_logical_sizes_have_a_sanity_limit(tmp_path: Path) -> None:
    tar = tc.archive(_pax10(1 << 50, [(0, 1)]))
    with pytest.raises(LayerError, match="holes included, add up to more than the limit of 17592186044416 bytes"):
        convert_layer(io.BytesIO(tar), tmp_path / "x.erofs", options=LayerOptions(fmt=TargetFormat()), layer="x")


def test_max_expanded_bounds_stored_bytes_for_python_and_logical_bytes_for_mkfs(tmp_path: Path) -> None:
    tar = tc.archive(_pax10(1 << 30, [(0, 100)]))
    python = LayerOptions(fmt=TargetFormat(), max_expanded=1 << 20)
    convert_layer(io.BytesIO(tar), tmp_path / "p.erofs", options=python, layer="p")  # a 4 KiB chunk stored
    mkfs = LayerOptions(fmt=TargetFormat(), builder="mkfs", max_expanded=1 << 20)
    with pytest.raises(LayerError, match="add up to more than the limit of 1048576 bytes"):
        convert_layer(io.BytesIO(tar), tmp_path / "m.erofs", options=mkfs, layer="m")
    # Our compressed files have no holes either: the zeros would be compressed one by one.
    lz4 = LayerOptions(fmt=parse_format("erofs+lz4"), max_expanded=1 << 20)
    assert lz4.resolved_builder() == "python"
    with pytest.raises(LayerError, match="add up to more than the limit of 1048576 bytes"):
        convert_layer(io.BytesIO(tar), tmp_path / "z.erofs", options=lz4, layer="z")


# --- --holes: all-zero blocks of ordinary files ----------------------------------------------

PIECES = st.lists(st.tuples(st.sampled_from(["zero", "data"]), st.integers(1, 40)), min_size=1, max_size=6)


def _layer(files: dict[bytes, bytes]) -> bytes:
    return tc.archive(*(tc.member(name, data) for name, data in files.items()))


def _contents(pieces: list[tuple[str, int]], tail: int) -> bytes:
    out = bytearray()
    for i, (kind, blocks) in enumerate(pieces):
        out += bytes(blocks * BLOCK) if kind == "zero" else bytes([i + 1]) * (blocks * BLOCK)
    return bytes(out) + b"t" * tail


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(pieces=PIECES, tail=st.sampled_from([0, 1, 100, 4000, 4095]))
@example(pieces=[("data", 1), ("zero", 1)], tail=0)  # one zero block does not pay for a map
@example(pieces=[("zero", 40)], tail=0)  # nothing but holes
@example(pieces=[("zero", 3), ("data", 1)], tail=4095)
def test_holes_option_reads_back_the_same_bytes(tmp_path: Path, pieces: list[tuple[str, int]], tail: int) -> None:
    files = {b"f": _contents(pieces, tail), b"small": b"s" * 100, b"g": _contents(pieces[::-1], 7)}
    layer = _layer(files)
    plain, holes = tmp_path / "plain.erofs", tmp_path / "holes.erofs"
    convert_layer(io.BytesIO(layer), plain, options=LayerOptions(fmt=TargetFormat()), layer="l")
    convert_layer(io.BytesIO(layer), holes, options=LayerOptions(fmt=TargetFormat(), holes=True), layer="l")
    assert holes.stat().st_size <= plain.stat().st_size
    with ErofsImage.open(holes) as img:
        for name, data in files.items():
            assert img.read_bytes("/" + name.decode()) == data
        chunked = img.superblock.feature_incompat & fmt.INCOMPAT_CHUNKED_FILE
    if not chunked:  # no file paid for a map: exactly the image without --holes
        assert holes.read_bytes() == plain.read_bytes()
    fsck(holes)
    with mounted(holes) as mnt:
        for name, data in files.items():
            assert (mnt / name.decode()).read_bytes() == data


def test_holes_needs_the_python_builder(tmp_path: Path) -> None:
    options = LayerOptions(fmt=TargetFormat(), builder="mkfs", holes=True)
    with pytest.raises(UsageError, match="--holes needs the python builder"):
        convert_layer(io.BytesIO(_layer({b"f": b"x"})), tmp_path / "x.erofs", options=options, layer="x")
