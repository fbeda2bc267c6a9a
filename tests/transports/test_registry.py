"""The registry transport against a real loopback registry: push a tar image with our sink,
convert it registry → registry (another repository, merged index, so unchanged source blobs are
mounted across repositories), and check the result with our client and skopeo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from converter.oci.mediatypes import MediaType
from converter.pipeline import ConvertOptions, convert_image
from converter.reference import Digest, OciLayoutRef, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.sample import sample_layers, write_oci_layout
from converter.transports import LayoutSource, RegistrySink, RegistrySource
from converter.transports.base import BlobOrigin
from tests.support.registry import RegistryServer


def copy_image(source: LayoutSource, sink: RegistrySink, tag: str, tmp: Path) -> Digest:
    """Copy a single-manifest image blob by blob, then the manifest under ``tag``."""
    data, media_type, _ = source.get_manifest()
    manifest = json.loads(data)
    for desc in [manifest["config"], *manifest["layers"]]:
        digest = Digest.parse(desc["digest"])
        path = tmp / digest.hex
        path.write_bytes(source.get_blob_bytes(digest, max_size=1 << 26))
        if not sink.has_blob(digest):
            sink.push_blob(path, digest, desc["size"])
    return sink.put_manifest(data, media_type, tag)


def test_registry_round_trip(registry_open: RegistryServer, client: RegistryClient, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, sample_layers()[:2])
    src_ref = parse_reference(f"{registry_open.host}/src/app:1")
    sink = RegistrySink(client, src_ref)
    assert sink.origin == BlobOrigin(registry_open.host, "src/app")
    src_digest = copy_image(LayoutSource(OciLayoutRef(layout, "latest")), sink, "1", tmp_path)

    source = RegistrySource(client, src_ref)
    data, media_type, digest = source.get_manifest()
    assert digest == src_digest and media_type == MediaType.OCI_MANIFEST
    assert source.get_manifest(digest)[2] == digest

    dest_ref = parse_reference(f"{registry_open.host}/dest/app:1-erofs")
    dest = RegistrySink(client, dest_ref)
    with capture_logs() as logs:
        result = convert_image(source, src_ref, dest, dest_ref,
                               options=ConvertOptions(jobs=2, merge_index=True, workdir=tmp_path / "wd"))
    assert result.media_type is MediaType.OCI_INDEX
    assert list((tmp_path / "wd").iterdir()) == []

    out = RegistrySource(client, dest_ref)
    index_data, index_type, index_digest = out.get_manifest()
    assert index_digest == result.digest and index_type == MediaType.OCI_INDEX
    entries = json.loads(index_data)["manifests"]
    assert len(entries) == 2 and Digest.parse(entries[0]["digest"]) == src_digest
    erofs_data, _, _ = out.get_manifest(Digest.parse(entries[1]["digest"]))
    erofs = json.loads(erofs_data)
    assert {layer["mediaType"] for layer in erofs["layers"]} == {"application/vnd.erofs"}
    # the unchanged source blobs reached dest/app by cross-repository mount, not by upload
    source_blobs = [json.loads(data)["config"]["digest"], *(x["digest"] for x in json.loads(data)["layers"])]
    for d in source_blobs:
        assert dest.has_blob(Digest.parse(d))
    mounted = {e["digest"] for e in logs if e["event"] == "blob_mounted"}
    assert mounted == set(source_blobs)

    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed")
    res = subprocess.run([skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{dest_ref}"],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == index_data
    res = subprocess.run([skopeo, "inspect", "--tls-verify=false", "--config",
                          f"docker://{dest_ref.name}@{entries[1]['digest']}"], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["os.features"] == ["erofs"]
