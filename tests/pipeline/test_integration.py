"""A real conversion: a two-layer tar+gzip image in an oci: layout → EROFS image in another layout,
through the real layer engine (converter.convert.layer.convert_layer), read back with our EROFS reader
and inspected by skopeo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from converter.erofs.reader import ErofsImage
from converter.erofs.target import parse_format
from converter.erofs.tools import erofs_utils
from converter.errors import ToolError
from converter.oci.mediatypes import MediaType
from converter.pipeline import ConvertOptions, ConvertResult, convert_image
from converter.reference import Digest, OciLayoutRef
from converter.testing.sample import Item, layer_tar, sample_layers, write_oci_layout
from converter.transports import LayoutSink, LayoutSource


def convert(src: Path, dest: Path, *, tag: str = "latest", **opts: Any) -> ConvertResult:
    src_ref, dest_ref = OciLayoutRef(src, tag), OciLayoutRef(dest, "erofs")
    return convert_image(LayoutSource(src_ref), src_ref, LayoutSink(dest_ref), dest_ref,
                         options=ConvertOptions(**opts))


def blob(layout: Path, digest: str | Digest) -> Path:
    d = Digest.parse(str(digest))
    return layout / "blobs" / d.algorithm / d.hex


def read_json(layout: Path, digest: str | Digest) -> Any:
    return json.loads(blob(layout, digest).read_bytes())


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src")
    write_oci_layout(path, sample_layers()[:2])
    return path


def test_two_layer_image(two_layer: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    result = convert(two_layer, dest, jobs=2)
    assert result.media_type is MediaType.OCI_MANIFEST
    index = json.loads((dest / "index.json").read_bytes())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "erofs"
    assert entry["digest"] == str(result.digest)
    manifest = read_json(dest, result.digest)
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.erofs"] * 2
    assert manifest["layers"][0]["annotations"] == {"org.erofs.role": "overlay-lower"}
    config = read_json(dest, manifest["config"]["digest"])
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    assert config["os.features"] == ["erofs"] and config["config"]["Cmd"] == ["/bin/sh"]

    with ErofsImage.open(blob(dest, manifest["layers"][0]["digest"])) as bottom:
        assert bottom.read_bytes("/etc/hostname") == b"sample\n"
    with ErofsImage.open(blob(dest, manifest["layers"][1]["digest"])) as top:
        assert top.read_bytes("/etc/hostname") == b"sample-v2\n"
        assert top.xattrs("/opt/data").get("trusted.overlay.opaque") == b"y"
        # implicit parent usr/local/ (not in layer 1's tar) inherits nothing: it is new here
        assert top.stat("/usr/local/bin/tool").size == 20_000

    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed")
    res = subprocess.run([skopeo, "inspect", "--config", f"oci:{dest}:erofs"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rootfs"]["diff_ids"] == config["rootfs"]["diff_ids"]


def test_prepass_and_chain_give_identical_bytes(two_layer: Path, tmp_path: Path) -> None:
    # The pre-pass computes lower trees by scanning, the chain mode takes them from the builds:
    # both must yield the same image, byte for byte.
    # Builds in processes of their own (the default with 2 jobs) overlap, the lower trees
    # crossing between processes: the same bytes again.
    a = convert(two_layer, tmp_path / "a", jobs=2, prepass=True)
    b = convert(two_layer, tmp_path / "b", jobs=1, prepass=False)
    c = convert(two_layer, tmp_path / "c", jobs=2, processes=True)
    d = convert(two_layer, tmp_path / "d", jobs=2, processes=False)
    assert a.digest == b.digest == c.digest == d.digest


def test_cross_layer_hard_link(tmp_path: Path) -> None:
    lower = [Item("data/", "dir", mode=0o750, uid=7), Item("data/big", data=b"x" * 5000, mode=0o640)]
    upper = [Item("links/", "dir"), Item("links/big", "hardlink", link="data/big"),
             Item("data/extra", data=b"new")]
    src = tmp_path / "src"
    write_oci_layout(src, [layer_tar(lower), layer_tar(upper)])
    digests = set()
    for prepass, processes in ((True, False), (False, False), (False, True)):
        dest = tmp_path / f"dest-{prepass}-{processes}"
        result = convert(src, dest, jobs=2, prepass=prepass, processes=processes)
        digests.add(result.digest)
        manifest = read_json(dest, result.digest)
        with ErofsImage.open(blob(dest, manifest["layers"][1]["digest"])) as top:
            assert top.read_bytes("/links/big") == b"x" * 5000  # materialised from layer 0
            assert top.stat("/links/big").st_mode & 0o7777 == 0o640
            data_dir = top.stat("/data")  # implicit in layer 1: inherits layer 0's metadata
            assert data_dir.st_mode & 0o7777 == 0o750 and data_dir.uid == 7
    assert len(digests) == 1


def test_internally_compressed_format(two_layer: Path, tmp_path: Path) -> None:
    # erofs+lz4 goes through mkfs.erofs; the blob is still raw application/vnd.erofs and its DiffID
    # is its own digest (spec §5.2, docs/oci-layers.md D-2), never the digest of an uncompressed twin.
    try:
        tools = erofs_utils()
    except ToolError as exc:
        pytest.skip(str(exc))
    dest = tmp_path / "dest"
    result = convert(two_layer, dest, jobs=2, fmt=parse_format("erofs+lz4"))
    manifest = read_json(dest, result.digest)
    config = read_json(dest, manifest["config"]["digest"])
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/vnd.erofs"] * 2
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]
    assert manifest["annotations"]["io.github.erofs-converter.format"] == "erofs+lz4"
    for layer in manifest["layers"]:
        assert "org.erofs.uncompressed-digest" not in layer.get("annotations", {})
        if tools.fsck is not None:
            res = subprocess.run([str(tools.fsck), str(blob(dest, layer["digest"]))], capture_output=True,
                                 text=True, timeout=60)
            assert res.returncode == 0 and "<E>" not in res.stdout + res.stderr, res.stderr
