"""The --to grammar: strict parsing, canonical printing, tag suffixes, mkfs.erofs arguments."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from converter.erofs.target import LEVELS, TargetFormat, parse_format
from converter.erofs.tools import erofs_utils
from converter.errors import InvalidFormat, UsageError


@pytest.mark.parametrize(("text", "fmt", "suffix", "args"), [
    ("erofs", TargetFormat(None, None), "erofs", []),
    ("erofs+lz4", TargetFormat("lz4", None), "erofs-lz4", ["-zlz4"]),
    ("erofs+lz4hc", TargetFormat("lz4hc", None), "erofs-lz4hc", ["-zlz4hc"]),
    ("erofs+lz4hc,level=12", TargetFormat("lz4hc", 12), "erofs-lz4hc-level-12", ["-zlz4hc,level=12"]),
    ("erofs+zstd,level=1", TargetFormat("zstd", 1), "erofs-zstd-level-1", ["-zzstd,level=1"]),
    ("erofs+zstd,level=22", TargetFormat("zstd", 22), "erofs-zstd-level-22", ["-zzstd,level=22"]),
    ("erofs+deflate,level=9", TargetFormat("deflate", 9), "erofs-deflate-level-9", ["-zdeflate,level=9"]),
    ("erofs+lzma", TargetFormat("lzma", None), "erofs-lzma", ["-zlzma"]),
    ("erofs+lzma,level=0", TargetFormat("lzma", 0), "erofs-lzma-level-0", ["-zlzma,level=0"]),
    ("erofs+lzma,level=109", TargetFormat("lzma", 109), "erofs-lzma-level-109", ["-zlzma,level=109"]),
    ("erofs+lz4,pcluster=65536", TargetFormat("lz4", None, 65536), "erofs-lz4-pcluster-65536",
     ["-zlz4", "-C65536"]),
    ("erofs+zstd,level=9,pcluster=1048576", TargetFormat("zstd", 9, 1 << 20), "erofs-zstd-level-9-pcluster-1048576",
     ["-zzstd,level=9", "-C1048576"]),
    ("erofs+deflate,pcluster=8192", TargetFormat("deflate", None, 8192), "erofs-deflate-pcluster-8192",
     ["-zdeflate", "-C8192"]),
    ("erofs+lz4,ztailpacking", TargetFormat("lz4", None, None, True), "erofs-lz4-ztailpacking",
     ["-zlz4", "-Eztailpacking"]),
    ("erofs+lzma,level=9,pcluster=65536,ztailpacking", TargetFormat("lzma", 9, 65536, True),
     "erofs-lzma-level-9-pcluster-65536-ztailpacking", ["-zlzma,level=9", "-C65536", "-Eztailpacking"]),
])
def test_valid_formats(text: str, fmt: TargetFormat, suffix: str, args: list[str]) -> None:
    got = parse_format(text)
    assert got == fmt
    assert str(got) == text
    assert parse_format(str(got)) == got
    assert got.tag_suffix == suffix
    assert got.mkfs_args() == args
    assert got.compressed == (fmt.algorithm is not None)


def test_canonical_form_drops_leading_zeros() -> None:
    assert str(parse_format("erofs+zstd,level=007")) == "erofs+zstd,level=7"


def test_canonical_form_orders_options_and_drops_the_default_pcluster() -> None:
    assert str(parse_format("erofs+zstd,pcluster=16384,level=5")) == "erofs+zstd,level=5,pcluster=16384"
    assert parse_format("erofs+lz4,pcluster=4096") == parse_format("erofs+lz4") == TargetFormat("lz4", None, 4096)
    assert str(parse_format("erofs+lz4,pcluster=4096")) == "erofs+lz4"
    assert str(parse_format("erofs+lz4,ztailpacking,pcluster=8192")) == "erofs+lz4,pcluster=8192,ztailpacking"
    assert parse_format("erofs+lz4").pcluster_bytes == 4096
    assert parse_format("erofs+lz4,pcluster=0065536").pcluster_bytes == 65536


@pytest.mark.parametrize(("text", "words"), [
    ("", "unknown format"),
    ("tar", "unknown format"),
    ("EROFS", "unknown format"),
    ("erofs-lz4", "unknown format"),
    ("erofs+", "names no compression algorithm"),
    ("erofs+gzip", "unknown compression algorithm 'gzip'"),
    ("erofs+ZSTD", "algorithm names are lower case: zstd"),
    ("erofs+libdeflate", "unknown compression algorithm"),
    ("erofs+zstd,", "is not KEY=VALUE"),
    ("erofs+zstd,9", "is not KEY=VALUE"),
    ("erofs+zstd,lvl=9", "unknown option 'lvl'"),
    ("erofs+zstd,dictsize=4096", "unknown option 'dictsize'"),
    ("erofs+zstd,level=3,level=3", "given twice"),
    ("erofs+zstd,level=", "not a non-negative whole number"),
    ("erofs+zstd,level=-1", "not a non-negative whole number"),
    ("erofs+zstd,level=1.5", "not a non-negative whole number"),
    ("erofs+zstd,level= 3", "not a non-negative whole number"),
    ("erofs+lz4,level=1", "lz4 takes no level"),
    ("erofs+lz4hc,level=13", "use 0..12"),
    ("erofs+zstd,level=0", "zstd's level 0 is its default"),
    ("erofs+zstd,level=23", "use 1..22"),
    ("erofs+deflate,level=0", "use 1..9"),
    ("erofs+deflate,level=10", "use 1..9"),
    ("erofs+lzma,level=10", "use 0..9 or 100..109"),
    ("erofs+lzma,level=110", "use 0..9 or 100..109"),
    (" erofs", "unknown format"),
    ("erofs+zstd+lz4", "unknown compression algorithm"),
    ("erofs+lz4,pcluster=0", "not a multiple of 4096"),
    ("erofs+lz4,pcluster=6000", "not a multiple of 4096"),
    ("erofs+lz4,pcluster=2097152", "up to 1048576"),
    ("erofs+lz4,pcluster=64k", "pcluster '64k' is not a non-negative whole number"),
    ("erofs+lz4,pcluster=8192,pcluster=8192", "given twice"),
    ("erofs+zstd,window=15", "the options are level, pcluster and ztailpacking"),
    ("erofs+lz4,ztailpacking=1", "option 'ztailpacking' takes no value"),
    ("erofs+lz4,ztailpacking,ztailpacking", "given twice"),
    ("erofs+lz4,tailpacking", "is not KEY=VALUE (e.g. level=9) or one of ztailpacking"),
])
def test_invalid_formats(text: str, words: str) -> None:
    with pytest.raises(InvalidFormat) as info:
        parse_format(text)
    assert words in str(info.value)
    assert isinstance(info.value, UsageError) and info.value.exit_status == 2


def test_format_constructor_validates() -> None:
    with pytest.raises(InvalidFormat):
        TargetFormat("brotli")
    with pytest.raises(InvalidFormat):
        TargetFormat(None, 3)
    with pytest.raises(InvalidFormat):
        TargetFormat(None, None, 65536)
    with pytest.raises(InvalidFormat, match="ztailpacking needs a compression algorithm"):
        TargetFormat(None, None, None, True)
    assert TargetFormat("zstd", 3) == parse_format("erofs+zstd,level=3")
    assert hash(TargetFormat("zstd", 3)) == hash(parse_format("erofs+zstd,level=3"))


def _boundaries() -> list[tuple[str, int, bool]]:
    cases: list[tuple[str, int, bool]] = []
    for algo, ranges in LEVELS.items():
        if not ranges:
            cases.append((algo, 1, False))
        for r in ranges:
            cases += [(algo, r.start, True), (algo, r.stop - 1, True), (algo, r.stop, False)]
        if ranges and ranges[0].start > 0:
            cases.append((algo, ranges[0].start - 1, False))
    return cases


def test_level_ranges_match_what_mkfs_accepts(tmp_path: Path) -> None:
    """Our grammar's ranges agree with the real mkfs.erofs at each boundary (zstd 0 aside)."""
    mkfs = erofs_utils().mkfs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("f")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"data"))
    src = tmp_path / "t.tar"
    src.write_bytes(buf.getvalue())
    disagree = []
    for algo, level, ours in _boundaries():
        text = f"erofs+{algo},level={level}"
        try:
            args = parse_format(text).mkfs_args()
            accepted = True
        except InvalidFormat:
            args, accepted = [f"-z{algo},level={level}"], False
        assert accepted == ours, text
        res = subprocess.run([str(mkfs), "--tar=f", "--quiet", *args, str(tmp_path / "o.img"), str(src)],
                             capture_output=True, text=True, check=False)
        mkfs_ok = res.returncode == 0 and "<E>" not in res.stderr
        if mkfs_ok != ours and not (algo == "zstd" and level == 0):
            disagree.append(f"{text}: ours={ours} mkfs={mkfs_ok} {res.stderr.strip()[:200]}")
    assert not disagree
