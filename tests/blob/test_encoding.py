"""The blob-encoding options: strict parsing, canonical strings and distinct tag suffixes."""

from __future__ import annotations

import pytest

from converter.blob.encoding import BlobCompression, BlobEncoding, make_encoding, parse_blob_compression, parse_size
from converter.erofs.target import parse_format
from converter.errors import InvalidFormat, UsageError
from converter.oci.mediatypes import Profile
from converter.pipeline.options import resolve_encoding, tag_suffix


@pytest.mark.parametrize(("text", "want"), [
    ("none", (BlobCompression.NONE, None)),
    ("zstd", (BlobCompression.ZSTD, None)),
    ("zstd,level=1", (BlobCompression.ZSTD, 1)),
    ("zstd,level=22", (BlobCompression.ZSTD, 22)),
], ids=["none", "zstd", "level-1", "level-22"])
def test_parse(text: str, want: tuple[BlobCompression, int | None]) -> None:
    assert parse_blob_compression(text) == want


@pytest.mark.parametrize(("text", "fragment"), [
    ("gzip", "unknown compression 'gzip'"),
    ("ZSTD", "names are lower case: zstd"),
    ("zstd,level=0", "out of range: use 1..22"),
    ("zstd,level=23", "out of range"),
    ("zstd,level=-1", "not a whole number"),
    ("zstd,level=3,level=4", "given twice"),
    ("zstd,lvl=3", "unknown option 'lvl'"),
    ("zstd,3", "not KEY=VALUE"),
    ("none,level=3", "none takes no level"),
    ("", "unknown compression ''"),
], ids=["gzip", "upper", "level-0", "level-23", "negative", "twice", "unknown-option", "bare", "none-level", "empty"])
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(InvalidFormat) as err:
        parse_blob_compression(text)
    assert fragment in str(err.value)
    assert err.value.exit_status == 2


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"chunk_size": 1 << 20}, "needs --blob-compression zstd"),
    ({"compression": "zstd", "chunk_size": 1000}, "multiple of 4K"),
    ({"compression": "zstd", "chunk_size": 2 << 30}, "multiple of 4K"),
], ids=["chunk-without-zstd", "chunk-unaligned", "chunk-too-big"])
def test_bad_combinations(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(UsageError) as err:
        make_encoding(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(err.value)


def test_canonical_resolves_defaults() -> None:
    assert make_encoding().canonical() == "none"
    assert make_encoding("zstd").canonical() == make_encoding("zstd,level=3", chunk_size=4 << 20).canonical()
    assert make_encoding("zstd", chunk_size=0, verity=True).canonical() == "zstd,level=3,chunk=0,verity"
    assert make_encoding(verity=True).canonical() == "none,verity"


def test_tags_are_distinct_for_every_output_changing_option() -> None:
    variants = {
        "erofs": ("erofs", BlobEncoding()),
        "erofs+zstd": ("erofs+zstd", BlobEncoding()),
        "blob zstd": ("erofs", make_encoding("zstd")),
        "blob zstd 9": ("erofs", make_encoding("zstd,level=9")),
        "one frame": ("erofs", make_encoding("zstd", chunk_size=0)),
        "256k": ("erofs", make_encoding("zstd", chunk_size=256 << 10)),
        "verity": ("erofs", make_encoding(verity=True)),
        "zstd verity": ("erofs", make_encoding("zstd", verity=True)),
        "lz4 zstd": ("erofs+lz4", make_encoding("zstd")),
        "erofs+zstd blob zstd": ("erofs+zstd", make_encoding("zstd")),
    }
    suffixes = {name: tag_suffix(parse_format(fmt), enc) for name, (fmt, enc) in variants.items()}
    assert len(set(suffixes.values())) == len(suffixes), suffixes
    assert suffixes["erofs+zstd"] == "erofs-zstd" and suffixes["blob zstd"] == "erofs.zstd"
    assert suffixes["erofs"] == "erofs"  # unchanged for images made before encodings existed
    # Equal outputs, equal tags: the default level and chunk size spelled out change nothing.
    assert tag_suffix(parse_format("erofs"), make_encoding("zstd,level=3", chunk_size=4 << 20)) == "erofs.zstd"


def test_profiles() -> None:
    zstd = make_encoding("zstd")
    assert resolve_encoding(zstd, Profile.SPEC) is zstd
    assert resolve_encoding(zstd, Profile.CONTAINERD_23).resolved_chunk_size == 0  # one frame
    for profile, enc, fragment in [
        (Profile.CONTAINERD_21, zstd, "containerd-2.1 has no zstd-wrapped"),
        (Profile.CONTAINERD_23, make_encoding(verity=True), "--verity needs --media-type-profile spec"),
        (Profile.CONTAINERD_23, make_encoding("zstd", chunk_size=1 << 20), "--chunk-size needs"),
    ]:
        with pytest.raises(UsageError) as err:
            resolve_encoding(enc, profile)
        assert fragment in str(err.value)


def test_parse_size() -> None:
    assert [parse_size(t) for t in ("0", "4096", "256K", "1M", "1MiB", "2g")] == [0, 4096, 256 << 10, 1 << 20,
                                                                                 1 << 20, 2 << 30]
    with pytest.raises(UsageError):
        parse_size("lots")
