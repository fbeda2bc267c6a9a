"""Compressed inodes as mkfs.erofs writes them: our reader against the source and the kernel."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from pathlib import Path

import hypothesis.strategies as hs
import pytest
from hypothesis import HealthCheck, given, settings

from converter.erofs import format as fmt
from converter.erofs.reader import ErofsImage
from converter.errors import ErofsFormatError
from tests.support import kernel
from tests.support.compare import diff, snapshot

from .helpers import reader_snapshot, tools

MKFS_REPRO = ["-T0", "--mkfs-time", "-Uclear", "-b4096", "--quiet"]
#: Every algorithm our --to grammar offers, and option combinations mkfs.erofs readers meet in the wild.
CASES = [
    ["-zlz4"], ["-zlz4hc,12"], ["-zzstd"], ["-zdeflate"], ["-zlzma"],
    ["-zlz4hc", "-C65536"], ["-zzstd", "-C16384"], ["-zlz4", "-Eztailpacking"], ["-zlzma", "-Eztailpacking"],
    ["-zlz4", "-Efragments"], ["-zzstd", "-Eall-fragments"], ["-zlz4hc", "-Ededupe"],
    ["-zdeflate", "-Elegacy-compress"],
]


def _mkfs(*args: str | Path) -> None:
    res = subprocess.run([str(tools().mkfs), *map(str, args)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def _text(n: int, seed: int) -> bytes:
    r = random.Random(seed)
    words = [b"erofs", b"layer", b"overlay", b"tar", b"zstd", b"block", b"\n", b"index", b"0123"]
    out = bytearray()
    while len(out) < n:
        out += r.choice(words) + b" "
    return bytes(out[:n])


def _populate(src: Path) -> None:
    src.mkdir()
    r = random.Random(7)
    for size in (1, 100, 4095, 4096, 4097, 65536, 300_001):
        (src / f"t{size}").write_bytes(_text(size, size))
    (src / "mixed").write_bytes(r.randbytes(9000) + b"a" * 30000 + r.randbytes(5000) + _text(7000, 1))
    (src / "zeros").write_bytes(bytes(3 << 20))
    (src / "dup1").write_bytes(_text(50000, 99))
    (src / "dup2").write_bytes(_text(6000, 3) + _text(50000, 99))
    (src / "d").mkdir()
    (src / "d" / "x").write_bytes(_text(20000, 5))
    os.setxattr(src / "d" / "x", "user.k", b"v" * 30)  # shifts the index area's alignment


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("zsrc") / "src"
    _populate(src)
    return src


@pytest.fixture(scope="module", params=CASES, ids=lambda c: " ".join(c))
def image(request: pytest.FixtureRequest, source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zimg") / "img.erofs"
    _mkfs(*MKFS_REPRO, *request.param, path, source)
    return path


def _compressed_count(img: ErofsImage) -> int:
    return sum(1 for _, st in img.walk() if st.layout in fmt.COMPRESSED_LAYOUTS)


def test_reader_returns_the_source_bytes(image: Path, source: Path) -> None:
    with ErofsImage.open(image) as img:
        assert _compressed_count(img) >= 5
        for raw_path, st in img.walk():
            if st.st_mode & fmt.S_IFMT == fmt.S_IFREG:
                assert img.read_bytes(raw_path) == (source / os.fsdecode(raw_path)[1:]).read_bytes(), raw_path


def test_reader_agrees_with_the_kernel(image: Path) -> None:
    with kernel.mounted(image) as mnt:
        want = snapshot(mnt)
    with ErofsImage.open(image) as img:
        got = reader_snapshot(img)
    assert diff(want, got) == []


files = hs.dictionaries(
    hs.text("abcdefgh", min_size=1, max_size=6),
    hs.tuples(hs.integers(0, 200_000), hs.integers(0, 3), hs.integers(0, 1 << 30)),
    min_size=1, max_size=6,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=files, alg=hs.sampled_from(["lz4", "lz4hc", "zstd", "deflate", "lzma"]))
def test_hypothesis_trees(tmp_path_factory: pytest.TempPathFactory, tree: dict[str, tuple[int, int, int]],
                          alg: str) -> None:
    d = tmp_path_factory.mktemp("hyp")
    src = d / "src"
    src.mkdir()
    want: dict[str, bytes] = {}
    for name, (size, kind, seed) in tree.items():
        r = random.Random(seed)
        data = [_text(size, seed), bytes(size), r.randbytes(size),
                _text(size // 2, seed) + r.randbytes(size - size // 2)][kind]
        (src / name).write_bytes(data)
        want[name] = data
    _mkfs(*MKFS_REPRO, f"-z{alg}", d / "img.erofs", src)
    with ErofsImage.open(d / "img.erofs") as img:
        for name, data in want.items():
            assert img.read_bytes(name) == data, name


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("zfuzz")
    src = d / "src"
    src.mkdir()
    for i, size in enumerate((5000, 20000, 70000)):
        (src / f"f{i}").write_bytes(_text(size, i))
    out = {}
    for alg in ("lz4", "zstd", "deflate", "lzma"):
        _mkfs(*MKFS_REPRO, f"-z{alg}", "-C16384", d / alg, src)
        out[alg] = (d / alg).read_bytes()
    # and our own writer's images of the same files (one-block pclusters, full indexes)
    import io
    import tarfile

    from converter.convert.layer import LayerOptions, convert_layer
    from converter.erofs.target import parse_format

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        for f in sorted(src.iterdir()):
            tf.add(f, arcname=f.name)
    for alg in OURS:
        image = d / f"{alg}.erofs"
        convert_layer(io.BytesIO(tar.getvalue()), image, layer=alg, workdir=d,
                      options=LayerOptions(fmt=parse_format(f"erofs+{alg}"), builder="python", bottom=True))
        out[f"ours-{alg}"] = image.read_bytes()
    return out


#: Our writer's formats (compact indexes; two with big pclusters), fuzzed as well as mkfs.erofs's images.
OURS = ("lz4", "lz4hc", "zstd", "deflate", "lzma", "lz4,pcluster=16384", "zstd,pcluster=65536", "lz4,ztailpacking",
        "lzma,pcluster=16384,ztailpacking")


def _read_all(data: bytes) -> None:
    import io

    with ErofsImage(io.BytesIO(data), verify_checksum=False) as img:
        for _, st in img.walk():
            if st.st_mode & fmt.S_IFMT == fmt.S_IFREG:
                for _chunk in img.read_file(st.nid):
                    pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(alg=hs.sampled_from(["lz4", "zstd", "deflate", "lzma", *(f"ours-{a}" for a in OURS)]),
       flips=hs.lists(hs.tuples(hs.floats(0, 1, exclude_max=True), hs.integers(1, 255)), min_size=1, max_size=6),
       cut=hs.one_of(hs.none(), hs.floats(0, 1, exclude_max=True)))
def test_fuzzed_compressed_images_give_format_errors(fuzz_base: dict[str, bytes], alg: str,
                                                     flips: list[tuple[float, int]], cut: float | None) -> None:
    data = bytearray(fuzz_base[alg])
    for pos, x in flips:
        data[int(pos * len(data))] ^= x
    if cut is not None:
        del data[int(cut * len(data)):]
    with contextlib.suppress(ErofsFormatError):
        _read_all(bytes(data))


@pytest.mark.parametrize("alg", ["zstd", "ours-zstd", "ours-lzma", "ours-lz4,pcluster=16384", "ours-lz4,ztailpacking"])
def test_every_index_byte_flipped(fuzz_base: dict[str, bytes], alg: str) -> None:
    """Deterministic sweep over the metadata (inodes, map headers, indexes) of a compressed image."""
    base = fuzz_base[alg]
    sb = fmt.Superblock.unpack(base[1024:1152])
    start = sb.meta_blkaddr * 4096
    for off in range(start, min(start + 4096, len(base))):
        data = bytearray(base)
        data[off] ^= 0x5A
        with contextlib.suppress(ErofsFormatError):
            _read_all(bytes(data))
    _read_all(base)
