"""The encoding flags through ``main``: strict usage errors (exit 2, nothing written), default
destination tags, and `convert layer` writing an encoded blob."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from converter.cli import main
from converter.testing.sample import SampleLayout, sample_layers, write_oci_layout


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleLayout:
    return write_oci_layout(tmp_path_factory.mktemp("sample") / "layout", sample_layers(), tag="v1")


@pytest.mark.parametrize(("flags", "message"), [
    (["--blob-compression", "gzip"], "unknown compression 'gzip'"),
    (["--blob-compression", "zstd,level=30"], "zstd level 30 is out of range"),
    (["--chunk-size", "1M"], "--chunk-size needs --blob-compression zstd"),
    (["--blob-compression", "zstd", "--chunk-size", "5000"], "multiple of 4K"),
    (["--blob-compression", "zstd", "--media-type-profile", "containerd-2.1"], "containerd-2.1 has no zstd"),
    (["--verity", "--media-type-profile", "containerd-2.3"], "--verity needs --media-type-profile spec"),
], ids=["unknown", "level", "chunk-without-zstd", "chunk-unaligned", "containerd-2.1", "verity-containerd"])
def test_usage_errors(capsys: pytest.CaptureFixture[str], sample: SampleLayout, tmp_path: Path, flags: list[str],
                      message: str) -> None:
    rc = main([f"oci:{sample.path}:v1", "-q", *flags])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith("convert: ") and err.count("\n") == 1 and message in err, err
    assert json.loads((sample.path / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"] == "v1"  # nothing was added to the layout
    assert len(json.loads((sample.path / "index.json").read_text())["manifests"]) == 1


@pytest.mark.parametrize(("flags", "tag"), [
    ([], "v1-erofs"),
    (["--blob-compression", "zstd"], "v1-erofs.zstd"),
    (["--to", "erofs+zstd"], "v1-erofs-zstd"),
    (["--verity"], "v1-erofs.verity"),
    (["--blob-compression", "zstd", "--media-type-profile", "containerd-2.3"], "v1-erofs.zstd.chunk-0"),
], ids=["raw", "blob-zstd", "erofs-zstd", "verity", "containerd-2.3"])
def test_default_destination_tags(capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str],
                                  tag: str) -> None:
    src = write_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    assert main([f"oci:{src.path}:v1", "-q", *flags]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"oci:{src.path}:{tag}@sha256:")


def test_layer_command_writes_an_encoded_blob(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "layer.tar"
    src.write_bytes(sample_layers()[0])
    out = tmp_path / "layer.erofs.zst"
    assert main(["layer", str(src), "-o", str(out), "--bottom", "--blob-compression", "zstd", "--verity", "-v"]) == 0
    err = capsys.readouterr().err
    data = subprocess.run(["zstd", "-dc", str(out)], capture_output=True, check=True).stdout
    assert f"diff_id sha256:{hashlib.sha256(data).hexdigest()}" in err
    assert "org.erofs.dmverity.root_digest=sha256:" in err and "org.erofs.chunk-index.range=" in err



def test_ls_and_cat_read_a_local_zstd_blob(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "layer.tar"
    src.write_bytes(sample_layers()[0])
    plain, wrapped = tmp_path / "layer.erofs", tmp_path / "layer.erofs.zst"
    assert main(["layer", str(src), "-o", str(plain), "--bottom"]) == 0
    assert main(["layer", str(src), "-o", str(wrapped), "--bottom", "--blob-compression", "zstd", "--verity"]) == 0
    capsys.readouterr()
    listings = []
    for image in (plain, wrapped):
        assert main(["ls", str(image)]) == 0
        listings.append(capsys.readouterr().out)
    assert listings[0] == listings[1] and "/etc/passwd" in listings[0]
    assert main(["cat", str(wrapped), "etc/hostname"]) == 0
    assert capsys.readouterr().out == "sample\n"
