"""The layer engine's output identity: a layer's bytes depend on its tar, not on how it was compressed."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from converter.convert.layer import LayerOptions, convert_layer, layer_uuid
from converter.erofs.reader import ErofsImage
from converter.erofs.target import parse_format


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("etc/hostname", b"box\n"), ("usr/bin/tool", bytes(range(256)) * 40)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "builder"), [("erofs", "python"), ("erofs", "mkfs"), ("erofs+lz4", "mkfs")],
                         ids=["python", "mkfs", "mkfs-lz4"])
def test_gzip_and_zstd_copies_give_the_same_layer(tmp_path: Path, fmt: str, builder: str) -> None:
    tar = _tar()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    options = LayerOptions(fmt=parse_format(fmt), builder=builder)
    results = []
    for name, blob in (("tar", tar), ("gzip", gzip.compress(tar, mtime=0)), ("zstd", zstandard.compress(tar))):
        result = convert_layer(io.BytesIO(blob), tmp_path / f"{name}.erofs", options=options, layer=name)
        assert result.source_diff_id == diff_id
        assert result.source_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        results.append(result)
    assert len({r.source_digest for r in results}) == 3
    assert len({r.digest for r in results}) == 1
    assert (tmp_path / "gzip.erofs").read_bytes() == (tmp_path / "zstd.erofs").read_bytes()
    with ErofsImage.open(tmp_path / "zstd.erofs") as img:
        assert img.superblock.uuid == layer_uuid(diff_id).bytes


@pytest.mark.parametrize("builder", ["python", "mkfs"])
def test_a_verified_source_digest_is_reported_not_recomputed(tmp_path: Path, builder: str) -> None:
    """Given the digest the caller already verified (the image pipeline's pull), convert_layer
    reports it without hashing the source again (so a digest unlike the bytes' shows it was not
    recomputed); everything else, the DiffID and the image bytes included, is as without it."""
    blob = gzip.compress(_tar(), mtime=0)
    options = LayerOptions(fmt=parse_format("erofs"), builder=builder)
    told = "sha256:" + "ab" * 32
    plain = convert_layer(io.BytesIO(blob), tmp_path / "plain.erofs", options=options, layer="l")
    trusted = convert_layer(io.BytesIO(blob), tmp_path / "trusted.erofs", options=options, layer="l",
                            source_digest=told)
    assert plain.source_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert trusted.source_digest == told
    assert trusted.source_size == plain.source_size == len(blob)
    assert trusted.source_diff_id == plain.source_diff_id
    assert (tmp_path / "trusted.erofs").read_bytes() == (tmp_path / "plain.erofs").read_bytes()
