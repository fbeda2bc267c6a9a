"""verify across the kinds of sources and outputs we produce; inspect's view of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converter.cli import main
from converter.testing.sample import sample_layers, write_oci_layout
from tests.support.registry import RegistryServer
from tests.test_image_e2e import push_sample

from .test_verify import TAG, _convert, _verify


@pytest.mark.parametrize(("compress", "profile", "merge"), [
    ("zstd", "containerd-2.1", False),
    (False, "spec", True),
])
def test_index_sources(tmp_path: Path, compress: bool | str, profile: str, merge: bool) -> None:
    src = write_oci_layout(tmp_path / "src", sample_layers(), tag=TAG, compress=compress,
                           platforms=("amd64", "arm64")).path
    out = tmp_path / "out"
    _convert(src, f"oci:{out}:{TAG}", "--media-type-profile", profile, *(["--merge-index"] if merge else []))
    res = _verify(f"oci:{out}:{TAG}", "--report", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["layers_checked"] == 6
    if merge:
        assert sum("a tar image kept in the index" in n for n in report["notes"]) == 2
    only_arm = _verify(f"oci:{out}:{TAG}", "--platform", "linux/arm64", "--report", str(tmp_path / "a.json"))
    assert only_arm.returncode == 0 and json.loads((tmp_path / "a.json").read_text())["layers_checked"] == 3


def test_docker_schema2_source(tmp_path: Path, registry_open: RegistryServer) -> None:
    push_sample(tmp_path, registry_open, "verify/docker", docker=True)
    ref = f"{registry_open.host}/verify/docker:{TAG}"
    assert main([ref, "--to", "erofs+zstd", "-q", "--log-format", "json"]) == 0
    res = _verify(f"{ref}-erofs-zstd")
    assert res.returncode == 0, res.stdout + res.stderr


def test_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_oci_layout(tmp_path / "src", sample_layers(), tag=TAG).path
    out = tmp_path / "out"
    _convert(src, f"oci:{out}:{TAG}", "--to", "erofs+lzma")
    capsys.readouterr()
    assert main(["inspect", f"oci:{out}:{TAG}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (plat,) = info["platforms"]
    assert plat["platform"] == "linux/amd64" and plat["source"]["format"] == "erofs+lzma"
    assert plat["source"]["ref"] == f"oci:{out}"  # the source sits beside the converted image
    assert [layer["role"] for layer in plat["layers"]] == ["overlay-lower", "overlay-lower", ""]
    assert all(layer["source_size"] > 0 for layer in plat["layers"])
    assert {layer["fs_compression"] for layer in plat["layers"]} == {"lzma"}
    assert {layer["blob_compression"] for layer in plat["layers"]} == {"none"}
    assert main(["inspect", f"oci:{out}:{TAG}", "-v"]) == 0
    text = capsys.readouterr().out
    assert "fs compression lzma" in text and " /bin/sh -> busybox" in text


def test_zstd_verity_chunked_layers_verify_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """+zstd blobs with a chunk index and a dm-verity tree: verify reads them, inspect shows both."""
    src = write_oci_layout(tmp_path / "src", sample_layers(), tag=TAG).path
    out = tmp_path / "out"
    _convert(src, f"oci:{out}:{TAG}", "--blob-compression", "zstd", "--chunk-size", "4K", "--verity")
    res = _verify(f"oci:{out}:{TAG}", "--report", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((tmp_path / "r.json").read_text())["layers_checked"] == 3
    capsys.readouterr()
    assert main(["inspect", f"oci:{out}:{TAG}", "--json"]) == 0
    (plat,) = json.loads(capsys.readouterr().out)["platforms"]
    assert {layer["blob_compression"] for layer in plat["layers"]} == {"zstd"}
    assert all(layer["verity_root"].startswith("sha256:") for layer in plat["layers"])
    assert all(":" in layer["chunk_index"] for layer in plat["layers"])  # org.erofs.chunk-index.range
