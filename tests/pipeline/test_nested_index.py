"""Hostile nested indexes with --merge-index: every level lists its child 12 times, so a walk
that remembers nothing makes 12**depth visits (and, from a registry, as many requests). Each
digest must be read once per run, from a layout and from a registry."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.cli import main
from converter.oci.mediatypes import MediaType
from converter.pipeline import ConvertOptions, convert_image
from converter.reference import Digest, OciLayoutRef, parse_reference
from converter.registry.client import RegistryClient
from converter.testing.sample import Item, layer_tar, write_oci_layout
from converter.transports import LayoutSink, LayoutSource, RegistrySink
from tests.support.hostile import HostileRegistry
from tests.support.registry import RegistryServer

FAN_OUT = 12
LEVELS = 4  # nested indexes below the top one (the engine allows 4)
PLATFORM = {"architecture": "amd64", "os": "linux"}


def _desc(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(Digest.from_bytes(data)), "size": len(data), **extra}


def nested_layout(root: Path) -> tuple[list[bytes], bytes]:
    """A layout whose tag points at an index listing the image twice and a chain of LEVELS
    indexes FAN_OUT times, each listing the next FAN_OUT times. Returns the nested indexes
    (innermost first) and the top index."""
    sample = write_oci_layout(root, [layer_tar([Item("a.txt", data=b"nested\n")])])
    manifest = (root / "blobs" / "sha256" / Digest.parse(sample.manifest_digest).hex).read_bytes()
    child = _desc(MediaType.OCI_MANIFEST.value, manifest, platform=PLATFORM)
    indexes = []
    for _ in range(LEVELS):
        data = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value,
                           "manifests": [child] * FAN_OUT}).encode()
        (root / "blobs" / "sha256" / Digest.from_bytes(data).hex).write_bytes(data)
        indexes.append(data)
        child = _desc(MediaType.OCI_INDEX.value, data)
    image = _desc(MediaType.OCI_MANIFEST.value, manifest, platform=PLATFORM)
    top = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value,
                      "manifests": [image, image, *[child] * (FAN_OUT - 2)]}).encode()
    (root / "blobs" / "sha256" / Digest.from_bytes(top).hex).write_bytes(top)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        _desc(MediaType.OCI_INDEX.value, top, annotations={"org.opencontainers.image.ref.name": "latest"})]}))
    return indexes, top


class CountingLayoutSource(LayoutSource):
    """A real layout source that counts manifest reads per digest."""

    def __init__(self, ref: OciLayoutRef) -> None:
        super().__init__(ref)
        self.reads: collections.Counter[str] = collections.Counter()

    def get_manifest(self, reference: str | Digest | None = None) -> tuple[bytes, str, Digest]:
        data, media_type, digest = super().get_manifest(reference)
        self.reads[str(digest)] += 1
        return data, media_type, digest


def test_layout_nested_indexes_are_walked_once(tmp_path: Path) -> None:
    indexes, _ = nested_layout(tmp_path / "src")
    source = CountingLayoutSource(OciLayoutRef(tmp_path / "src", "latest"))
    sink = LayoutSink(OciLayoutRef(tmp_path / "out", "latest"))
    result = convert_image(source, OciLayoutRef(tmp_path / "src", "latest"), sink,
                           OciLayoutRef(tmp_path / "out", "latest"),
                           options=ConvertOptions(merge_index=True, workdir=tmp_path / "w"))
    assert len(result.platforms) == 1  # the image listed twice is converted once
    assert max(source.reads.values()) == 1 and len(source.reads) == LEVELS + 2  # top, image, nested indexes
    out = json.loads((tmp_path / "out" / "blobs" / "sha256" / result.digest.hex).read_bytes())
    kinds = [(m["mediaType"], m["digest"]) for m in out["manifests"]]
    # tar entry, its EROFS entry, the duplicate tar entry, then the nested index entries: all kept
    assert len(kinds) == FAN_OUT + 1
    for data in indexes:  # every nested index was copied
        assert (tmp_path / "out" / "blobs" / "sha256" / Digest.from_bytes(data).hex).read_bytes() == data


@pytest.fixture
def hostile(registry_open: RegistryServer) -> Iterator[HostileRegistry]:
    with HostileRegistry(registry_open.host) as server:
        yield server


def test_registry_nested_indexes_cost_one_request_per_digest(hostile: HostileRegistry, client: RegistryClient,
                                                             prefix: str, tmp_path: Path) -> None:
    indexes, top = nested_layout(tmp_path / "src")
    source = LayoutSource(OciLayoutRef(tmp_path / "src", "latest"))
    ref = parse_reference(f"{prefix}/nested:1")
    sink = RegistrySink(client, ref)
    manifest, _, _ = source.get_manifest(Digest.parse(json.loads(indexes[0])["manifests"][0]["digest"]))
    for desc in (*(json.loads(manifest)["layers"]), json.loads(manifest)["config"]):
        sink.push_blob(source.blob_path(Digest.parse(desc["digest"])), Digest.parse(desc["digest"]), desc["size"])
    sink.put_manifest(manifest, MediaType.OCI_MANIFEST, None)
    for data in indexes:
        sink.put_manifest(data, MediaType.OCI_INDEX, None)
    sink.put_manifest(top, MediaType.OCI_INDEX, "1")
    repo = ref.repository
    assert main([f"{hostile.host}/{repo}:1", "--dest", f"{prefix}/out:1", "--merge-index",
                 "--workdir", str(tmp_path / "w"), "-q"]) == 0
    gets = collections.Counter(path for method, path in hostile.seen
                               if method == "GET" and path.startswith(f"/v2/{repo}/manifests/"))
    assert gets and max(gets.values()) == 1, gets
    assert sum(gets.values()) == LEVELS + 2  # the tag, the image, each nested index
