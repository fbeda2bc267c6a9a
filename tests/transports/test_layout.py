"""The oci: layout transport: write, read back, and let skopeo and umoci read what we wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from converter.errors import ImageError
from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor, Manifest, canonical_json
from converter.reference import Digest, OciLayoutRef, parse_location
from converter.testing.sample import gzip_bytes, sample_layers
from converter.transports import TRANSPORTS, LayoutSink, LayoutSource, open_sink, open_source, transport_name
from converter.transports.base import BlobOrigin, ImageSink, ImageSource
from converter.transports.layout import REF_NAME, VerifiedStream


def _blob(tmp: Path, data: bytes) -> tuple[Path, Digest]:
    path = tmp / f"blob-{Digest.from_bytes(data).hex[:8]}"
    path.write_bytes(data)
    return path, Digest.from_bytes(data)


def write_image(sink: LayoutSink, tmp: Path, *, tag: str = "v1") -> tuple[bytes, Digest]:
    """A real one-layer tar+gzip image, written through the sink like the pipeline does."""
    tar = sample_layers()[0]
    layer = gzip_bytes(tar)
    config = canonical_json({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [str(Digest.from_bytes(tar))]},
                             "history": [{"created_by": "test"}]})
    for data in (layer, config):
        path, digest = _blob(tmp, data)
        assert not sink.has_blob(digest)
        sink.push_blob(path, digest, len(data))
        assert sink.has_blob(digest)
    manifest = Manifest(media_type=MediaType.OCI_MANIFEST,
                        config=Descriptor(MediaType.OCI_CONFIG, Digest.from_bytes(config), len(config)),
                        layers=(Descriptor(MediaType.OCI_LAYER_GZIP, Digest.from_bytes(layer), len(layer)),))
    data = manifest.to_bytes()
    return data, sink.put_manifest(data, MediaType.OCI_MANIFEST, tag)


def test_round_trip(tmp_path: Path) -> None:
    ref = OciLayoutRef(tmp_path / "out", "v1")
    sink = LayoutSink(ref)
    assert isinstance(sink, ImageSink)
    data, digest = write_image(sink, tmp_path)
    assert digest == Digest.from_bytes(data)
    index = json.loads((ref.path / "index.json").read_bytes())
    assert index["manifests"] == [{"mediaType": MediaType.OCI_MANIFEST.value, "digest": str(digest),
                                   "size": len(data), "annotations": {REF_NAME: "v1"}}]
    assert json.loads((ref.path / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert not list(ref.path.rglob(".tmp-*"))

    source = LayoutSource(ref)
    assert isinstance(source, ImageSource)
    assert source.origin is None
    assert source.get_manifest() == (data, MediaType.OCI_MANIFEST.value, digest)
    assert source.get_manifest("v1") == (data, MediaType.OCI_MANIFEST.value, digest)
    assert source.get_manifest(digest) == (data, MediaType.OCI_MANIFEST.value, digest)
    layer = json.loads(data)["layers"][0]
    with source.open_blob(Digest.parse(layer["digest"]), size=layer["size"]) as stream:
        # It says it checked the digest (so the layer graph's pull does not hash it again),
        # once the end was read.
        assert isinstance(stream, VerifiedStream) and stream.verified is False
        assert Digest.from_bytes(stream.read()) == Digest.parse(layer["digest"])
        assert stream.verified is True


def test_tags_replace_and_accumulate(tmp_path: Path) -> None:
    sink = LayoutSink(OciLayoutRef(tmp_path / "out"))
    _, first = write_image(sink, tmp_path, tag="a")
    sink.put_manifest(b'{"schemaVersion":2,"manifests":[]}', MediaType.OCI_INDEX, "b")
    again = sink.put_manifest(b'{"schemaVersion":2,"manifests":[]} ', MediaType.OCI_INDEX, "b")
    assert sink.tags() == ["a", "b"]
    source = LayoutSource(OciLayoutRef(tmp_path / "out"))
    assert source.get_manifest("b")[2] == again
    assert source.get_manifest("a")[2] == first
    with pytest.raises(ImageError, match="2 images in the layout, name one with oci:DIR:TAG"):
        source.get_manifest()
    with pytest.raises(ImageError, match="no image tagged 'c'"):
        source.get_manifest("c")
    # a manifest pushed without a tag is stored but not listed
    untagged = sink.put_manifest(b'{"x":1}', MediaType.OCI_MANIFEST)
    assert sink.has_blob(untagged) and sink.tags() == ["a", "b"]


def test_push_blob_checks(tmp_path: Path) -> None:
    sink = LayoutSink(OciLayoutRef(tmp_path / "out"))
    path, digest = _blob(tmp_path, b"hello")
    with pytest.raises(ImageError, match="has 5 bytes, expected 6"):
        sink.push_blob(path, digest, 6)
    assert sink.mount_blob(digest, BlobOrigin("r", "x")) is False
    sink.push_blob(path, digest, 5)
    sink.push_blob(path, digest, 5)  # idempotent
    assert (tmp_path / "out" / "blobs" / "sha256" / digest.hex).read_bytes() == b"hello"


def test_corrupt_and_missing_blobs(tmp_path: Path) -> None:
    ref = OciLayoutRef(tmp_path / "out", "v1")
    _, digest = write_image(LayoutSink(ref), tmp_path)
    source = LayoutSource(ref)
    missing = Digest.from_bytes(b"nothing")
    with pytest.raises(ImageError, match="missing"), source.open_blob(missing):
        pass
    with pytest.raises(ImageError, match="missing"):
        source.get_blob_bytes(missing, max_size=10)
    blob = ref.path / "blobs" / "sha256" / digest.hex
    blob.write_bytes(blob.read_bytes() + b" ")
    with pytest.raises(ImageError, match="does not match its digest"):
        source.get_manifest()
    layer_path = next(p for p in (ref.path / "blobs" / "sha256").iterdir() if p.stat().st_size > 10_000)
    layer_digest = Digest("sha256", layer_path.name)
    layer_path.write_bytes(b"x" + layer_path.read_bytes()[1:])
    with pytest.raises(ImageError, match="does not match digest"), source.open_blob(layer_digest) as stream:
        try:
            stream.read()
        finally:
            assert isinstance(stream, VerifiedStream) and stream.verified is False
    with pytest.raises(ImageError, match="larger than 10 bytes"):
        source.get_blob_bytes(layer_digest, max_size=10)


def test_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not an OCI image layout"):
        LayoutSource(OciLayoutRef(tmp_path))


def test_transport_table() -> None:
    assert set(TRANSPORTS) == {"docker", "oci", "docker-archive", "oci-archive", "docker-daemon"}
    assert transport_name(parse_location("oci:/x:y")) == "oci"
    assert transport_name(parse_location("ghcr.io/a/b:1")) == "docker"
    assert transport_name(parse_location("docker-archive:/x.tar:a/b:1")) == "docker-archive"
    assert transport_name(parse_location("oci-archive:/x.tar")) == "oci-archive"
    assert transport_name(parse_location("docker-daemon:a/b:1")) == "docker-daemon"


def test_open_by_location(tmp_path: Path) -> None:
    loc = parse_location(f"oci:{tmp_path}/l:t")
    sink = open_sink(loc)
    assert isinstance(sink, LayoutSink)
    write_image(sink, tmp_path, tag="t")
    assert isinstance(open_source(loc), LayoutSource)
    from converter.errors import ConverterError

    with pytest.raises(ConverterError, match="needs a registry client"):
        open_source(parse_location("ghcr.io/a/b:1"))


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed")
    return exe


def test_skopeo_reads_our_layout(tmp_path: Path) -> None:
    skopeo = _tool("skopeo")
    ref = OciLayoutRef(tmp_path / "out", "v1")
    data, digest = write_image(LayoutSink(ref), tmp_path)
    res = subprocess.run([skopeo, "inspect", f"oci:{ref.path}:v1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["Digest"] == str(digest)
    assert info["Architecture"] == "amd64"
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{ref.path}:v1"], capture_output=True, timeout=60)
    assert raw.returncode == 0 and raw.stdout == data
    # and skopeo can copy it out, verifying every blob
    res = subprocess.run([skopeo, "copy", "-q", f"oci:{ref.path}:v1", f"oci:{tmp_path / 'copy'}:v1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_we_read_a_skopeo_layout(tmp_path: Path) -> None:
    skopeo = _tool("skopeo")
    ref = OciLayoutRef(tmp_path / "out", "v1")
    write_image(LayoutSink(ref), tmp_path)
    res = subprocess.run([skopeo, "copy", "-q", f"oci:{ref.path}:v1", f"oci:{tmp_path / 'sk'}:other"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    data, media_type, digest = LayoutSource(OciLayoutRef(tmp_path / "sk", "other")).get_manifest()
    assert media_type == MediaType.OCI_MANIFEST and digest == Digest.from_bytes(data)


def test_umoci_reads_our_layout(tmp_path: Path) -> None:
    umoci = _tool("umoci")
    ref = OciLayoutRef(tmp_path / "out", "v1")
    write_image(LayoutSink(ref), tmp_path)
    res = subprocess.run([umoci, "ls", "--layout", str(ref.path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["v1"]
    res = subprocess.run([umoci, "stat", "--image", f"{ref.path}:v1", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["history"][0]["created_by"] == "test"
