"""convert_image end to end over in-memory transports and a fake layer engine: what is pushed,
in which order, and what the rewritten config/manifest/index say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from converter.erofs.target import TargetFormat, parse_format
from converter.errors import AuthError, ImageError, UnsupportedMediaType, UsageError
from converter.oci.mediatypes import MediaType, Profile
from converter.oci.model import Platform, canonical_json
from converter.oci.rewrite import ANN_SOURCE_DIGEST, ANNOTATION_PREFIX, Provenance
from converter.pipeline import (
    ConvertOptions,
    ConvertResult,
    LayerFailed,
    PushFailed,
    convert_image,
    default_destination,
    destination_tag,
)
from converter.reference import Digest, OciLayoutRef, Reference, parse_location, parse_reference
from converter.transports.base import BlobOrigin

from .fakes import FakeEngine, MemorySink, MemorySource, add_image, add_index, manifest_entry

SRC = parse_reference("example.com/team/app:1.0")
DEST = parse_reference("example.com/team/app:1.0-erofs")


def run(source: MemorySource, sink: MemorySink, engine: FakeEngine | None = None, *, src: Any = SRC,
        dest: Any = DEST, **opts: Any) -> ConvertResult:
    engine = engine or FakeEngine()
    opts.setdefault("jobs", 2)
    return convert_image(source, src, sink, dest, options=ConvertOptions(**opts), convert_layer=engine.convert,
                         normalise=engine.normalise)


def manifest_json(sink: MemorySink, digest: Digest) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sink.manifests[digest][0])
    return data


def assert_complete(sink: MemorySink, manifest: dict[str, Any]) -> None:
    """Every blob the manifest references is in the sink."""
    for desc in [manifest["config"], *manifest["layers"]]:
        assert Digest.parse(desc["digest"]) in sink.blobs, desc


def op_index(sink: MemorySink, kind: str, what: str) -> int:
    return sink.ops.index((kind, what))


def test_single_manifest(tmp_path: Path) -> None:
    source, sink = MemorySource(), MemorySink()
    manifest, src_digest = add_image(source, [b"a" * 100, b"b" * 200], tag="1.0")
    source.default = "1.0"
    result = run(source, sink, workdir=tmp_path / "wd")
    assert result.media_type is MediaType.OCI_MANIFEST
    assert result.tag == "1.0-erofs" and sink.tags == {"1.0-erofs": result.digest}
    assert result.source_digest == src_digest
    out = manifest_json(sink, result.digest)
    assert_complete(sink, out)
    assert out["mediaType"] == MediaType.OCI_MANIFEST
    assert [layer["mediaType"] for layer in out["layers"]] == ["application/vnd.erofs"] * 2
    assert out["layers"][0]["annotations"] == {"org.erofs.role": "overlay-lower"}
    assert "annotations" not in out["layers"][1]
    prov = Provenance.from_annotations(out["annotations"])
    assert prov == Provenance(src_digest, "erofs", Profile.SPEC, prov.version)
    config = json.loads(sink.blobs[Digest.parse(out["config"]["digest"])])
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in out["layers"]]
    assert config["os.features"] == ["erofs"]
    assert config["history"] == [{"created_by": "layer 0"}, {"created_by": "layer 1"}]
    # push order: every blob, then the manifest, and the tag last
    assert sink.ops[-1] == ("tag", "1.0-erofs")
    last_blob = max(i for i, (kind, _) in enumerate(sink.ops) if kind == "blob")
    assert last_blob < op_index(sink, "manifest", str(result.digest))
    (platform,) = result.platforms
    assert platform.platform == Platform("linux", "amd64")
    assert [lo.source_digest for lo in platform.layers] == [d.digest for d in manifest.layers]
    assert [lo.digest for lo in platform.layers] == [Digest.parse(x["digest"]) for x in out["layers"]]
    # the private workdir is gone, its parent stays
    assert (tmp_path / "wd").is_dir() and list((tmp_path / "wd").iterdir()) == []


def test_conversion_is_reproducible() -> None:
    digests = set()
    for _ in range(2):
        source, sink = MemorySource(), MemorySink()
        add_image(source, [b"a" * 100, b"b" * 200])
        digests.add(run(source, sink).digest)
    assert len(digests) == 1


@pytest.mark.parametrize("profile", list(Profile), ids=str)
def test_profiles_reach_the_manifest(profile: Profile) -> None:
    source, sink = MemorySource(), MemorySink()
    add_image(source, [b"a", b"b"])
    out = manifest_json(sink, run(source, sink, profile=profile).digest)
    assert {layer["mediaType"] for layer in out["layers"]} == {profile.layer_media_type()}
    assert out["annotations"]["io.github.erofs-converter.profile"] == profile.value


def test_docker_schema2_becomes_oci() -> None:
    source, sink = MemorySource(), MemorySink()
    add_image(source, [b"a"], media_type=MediaType.DOCKER_MANIFEST, layer_type=MediaType.DOCKER_LAYER)
    engine = FakeEngine()
    out = manifest_json(sink, run(source, sink, engine).digest)
    assert out["mediaType"] == MediaType.OCI_MANIFEST
    assert out["config"]["mediaType"] == MediaType.OCI_CONFIG


def build_multi(source: MemorySource) -> tuple[list[Digest], Digest]:
    _, amd = add_image(source, [b"amd0" * 50, b"amd1" * 50], tag="", arch="amd64")
    _, arm = add_image(source, [b"arm0" * 50], tag="", arch="arm64")
    empty = source.add_blob(b"{}")
    attest_data = canonical_json({"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
                                  "config": {"mediaType": MediaType.OCI_EMPTY, "digest": str(empty.digest),
                                             "size": 2},
                                  "layers": [{"mediaType": "application/vnd.in-toto+json",
                                              "digest": str(source.add_blob(b'{"x":1}').digest), "size": 7}]})
    attest = source.add_manifest(attest_data, MediaType.OCI_MANIFEST)
    entries = [
        manifest_entry(source, amd, Platform("linux", "amd64")),
        manifest_entry(source, arm, Platform("linux", "arm64", "v8")),
        manifest_entry(source, attest, Platform("unknown", "unknown"),
                       **{"vnd.docker.reference.type": "attestation-manifest",
                          "vnd.docker.reference.digest": str(amd)}),
    ]
    _, index = add_index(source, entries, tag="1.0")
    source.default = "1.0"
    return [amd, arm, attest], index


def test_index_drops_attestations_and_tags_last() -> None:
    source, sink = MemorySource(), MemorySink()
    (amd, arm, attest), index = build_multi(source)
    with capture_logs() as logs:
        result = run(source, sink)
    assert result.media_type is MediaType.OCI_INDEX
    out = manifest_json(sink, result.digest)
    assert [m["platform"] for m in out["manifests"]] == [
        {"architecture": "amd64", "os": "linux", "os.features": ["erofs"]},
        {"architecture": "arm64", "os": "linux", "os.features": ["erofs"], "variant": "v8"},
    ]
    assert out["annotations"][ANN_SOURCE_DIGEST] == str(index)
    assert result.dropped == ((attest, "attestation manifest"),)
    dropped = [e for e in logs if e["event"] == "index_entry_dropped"]
    assert dropped == [{"event": "index_entry_dropped", "log_level": "info", "image": str(SRC),
                        "digest": str(attest), "media_type": MediaType.OCI_MANIFEST.value,
                        "platform": "unknown/unknown", "reason": "attestation manifest"}]
    assert {e["event"] for e in logs} >= {"image_conversion_started", "layer_converted", "platform_converted",
                                          "image_converted"}
    # each platform manifest is complete and pushed before the index, which is tagged last
    index_at = op_index(sink, "manifest", str(result.digest))
    for entry, source_digest in zip(out["manifests"], (amd, arm), strict=True):
        digest = Digest.parse(entry["digest"])
        assert op_index(sink, "manifest", str(digest)) < index_at
        platform_manifest = manifest_json(sink, digest)
        assert_complete(sink, platform_manifest)
        assert platform_manifest["annotations"][ANN_SOURCE_DIGEST] == str(source_digest)
        assert not any(k.startswith(ANNOTATION_PREFIX + "source.ref") for k in platform_manifest["annotations"])
    assert sink.ops[-1] == ("tag", "1.0-erofs")
    # source manifests were not copied
    assert amd not in sink.manifests and attest not in sink.manifests


def test_merge_index_keeps_sources_and_orders_entries() -> None:
    source, sink = MemorySource(), MemorySink()
    (amd, arm, attest), _ = build_multi(source)
    result = run(source, sink, merge_index=True)
    out = manifest_json(sink, result.digest)
    digests = [Digest.parse(m["digest"]) for m in out["manifests"]]
    assert digests[0] == amd and digests[2] == arm and digests[4] == attest and len(digests) == 5
    assert out["manifests"][1]["platform"]["os.features"] == ["erofs"]
    assert out["manifests"][3]["platform"]["os.features"] == ["erofs"]
    assert "os.features" not in out["manifests"][0]["platform"]
    # the kept source manifests and every blob they reference were copied before the index
    index_at = op_index(sink, "manifest", str(result.digest))
    for digest in digests:
        assert digest in sink.manifests
        assert op_index(sink, "manifest", str(digest)) < index_at
        assert_complete(sink, manifest_json(sink, digest))
    assert result.dropped == ()


def test_merge_index_mounts_unchanged_blobs_from_the_same_registry() -> None:
    source = MemorySource(origin=BlobOrigin("example.com", "team/app"))
    (amd, _, _), _ = build_multi(source)
    sink = MemorySink(mountable=set(source.blobs))
    run(source, sink, merge_index=True)
    mounted = {Digest.parse(what) for kind, what in sink.ops if kind == "mount"}
    source_manifest = json.loads(source.manifests[amd][0])
    assert Digest.parse(source_manifest["layers"][0]["digest"]) in mounted
    copied_source_blobs = {Digest.parse(w) for k, w in sink.ops if k == "blob"} & set(source.blobs)
    assert copied_source_blobs == set()


def test_merge_index_for_a_single_manifest_source() -> None:
    source, sink = MemorySource(), MemorySink()
    _, src_digest = add_image(source, [b"a"])
    result = run(source, sink, merge_index=True)
    assert result.media_type is MediaType.OCI_INDEX
    out = manifest_json(sink, result.digest)
    assert Digest.parse(out["manifests"][0]["digest"]) == src_digest
    assert out["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}
    assert out["manifests"][1]["platform"]["os.features"] == ["erofs"]
    assert src_digest in sink.manifests


def test_platform_filter() -> None:
    source, sink = MemorySource(), MemorySink()
    build_multi(source)
    result = run(source, sink, platforms=(Platform.parse("linux/arm64"),))
    assert [str(p.platform) for p in result.platforms] == ["linux/arm64/v8"]
    with pytest.raises(ImageError, match="no image manifest for linux/s390x"):
        run(source, sink, platforms=(Platform.parse("linux/s390x"),))
    single = MemorySource()
    add_image(single, [b"a"])
    with pytest.raises(ImageError, match="the image is linux/amd64, not linux/arm64"):
        run(single, MemorySink(), platforms=(Platform.parse("linux/arm64"),))
    assert run(single, MemorySink(), platforms=(Platform.parse("linux/amd64"),)).platforms


def test_failure_tags_nothing_and_cleans_up(tmp_path: Path) -> None:
    source, sink = MemorySource(), MemorySink()
    (_, arm, _), _ = build_multi(source)
    bad = json.loads(source.manifests[arm][0])["layers"][0]["digest"]

    def fail(layer: str, src: Any) -> None:
        if layer == bad:
            raise OSError(28, "No space left on device")

    with pytest.raises(LayerFailed, match=f"layer 1/1 {bad}: build: No space left on device"):
        run(source, sink, FakeEngine(before_convert=fail), workdir=tmp_path)
    assert sink.tags == {}
    assert list(tmp_path.iterdir()) == []


def test_unconvertible_sources_fail_before_pulling() -> None:
    source = MemorySource()
    add_image(source, [b"a"], layer_type=MediaType.DOCKER_FOREIGN_LAYER)
    with pytest.raises(UnsupportedMediaType, match="non-distributable/foreign layer"):
        run(source, MemorySink())
    assert source.opened == []
    schema1 = MemorySource()
    schema1.add_manifest(b'{"schemaVersion":1,"fsLayers":[]}', MediaType.DOCKER_SCHEMA1_SIGNED, "latest")
    with pytest.raises(UnsupportedMediaType, match="schema1 manifests are unsupported; convert with skopeo first"):
        run(schema1, MemorySink())


def test_diff_ids_mismatch_fails_before_pulling() -> None:
    source = MemorySource()
    manifest, _ = add_image(source, [b"a", b"b"])
    config = json.loads(source.blobs[manifest.config.digest])
    config["rootfs"]["diff_ids"].pop()
    data = canonical_json(config)
    source.blobs[manifest.config.digest] = data  # a config that does not match its descriptor
    with pytest.raises(ImageError, match="bytes, but the manifest says"):
        run(source, MemorySink())
    source2 = MemorySource()
    add_image(source2, [b"a", b"b"], history=False)
    # rebuild with a short diff_ids list and a consistent digest
    m2 = json.loads(source2.manifests[source2.tags["latest"]][0])
    cfg = json.loads(source2.blobs[Digest.parse(m2["config"]["digest"])])
    cfg["rootfs"]["diff_ids"] = cfg["rootfs"]["diff_ids"][:1]
    cdesc = source2.add_blob(canonical_json(cfg))
    m2["config"] = {"mediaType": MediaType.OCI_CONFIG, "digest": str(cdesc.digest), "size": cdesc.size}
    source2.add_manifest(canonical_json(m2), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ImageError, match=r"rootfs\.diff_ids has 1 entries but the manifest has 2 layers"):
        run(source2, MemorySink())
    assert source2.opened == []


@pytest.mark.parametrize(("src", "fmt", "dest"), [
    ("ghcr.io/a/b:1.2", "erofs", "ghcr.io/a/b:1.2-erofs"),
    ("ghcr.io/a/b:1.2", "erofs+zstd,level=3", "ghcr.io/a/b:1.2-erofs-zstd-level-3"),
    ("alpine", "erofs+lz4", "docker.io/library/alpine:latest-erofs-lz4"),
    ("ghcr.io/a/b:1@sha256:" + "a" * 64, "erofs", "ghcr.io/a/b:1-erofs"),
    ("oci:/tmp/x:v1", "erofs", "oci:/tmp/x:v1-erofs"),
])
def test_default_destination(src: str, fmt: str, dest: str) -> None:
    assert str(default_destination(parse_location(src), parse_format(fmt))) == dest


def test_default_destination_needs_a_tag() -> None:
    with pytest.raises(UsageError, match="a digest-only source needs --dest"):
        default_destination(parse_reference("ghcr.io/a/b@sha256:" + "a" * 64), TargetFormat())
    with pytest.raises(UsageError, match="an oci: source without a tag needs --dest"):
        default_destination(OciLayoutRef(Path("/x")), TargetFormat())
    with pytest.raises(UsageError, match="longer than 128"):
        default_destination(parse_reference("ghcr.io/a/b:" + "t" * 120), parse_format("erofs+lz4hc,level=9"))


def test_destination_tag() -> None:
    assert destination_tag(OciLayoutRef(Path("/x"))) == "latest"
    assert destination_tag(OciLayoutRef(Path("/x"), "t")) == "t"
    assert destination_tag(Reference("r.io", "a", "t")) == "t"
    with pytest.raises(UsageError, match="give a tag, not a digest"):
        destination_tag(parse_reference("r.io/a@sha256:" + "a" * 64))


def test_usage_errors_come_before_any_work() -> None:
    source = MemorySource()
    add_image(source, [b"a"])
    with pytest.raises(UsageError, match="unknown builder 'rust'"):
        run(source, MemorySink(), builder="rust")
    with pytest.raises(UsageError, match="--jobs must be at least 1"):
        run(source, MemorySink(), jobs=-1)
    with pytest.raises(UsageError, match="give a tag, not a digest"):
        run(source, MemorySink(), dest=parse_reference("r.io/a@sha256:" + "a" * 64))
    with pytest.raises(UsageError, match="--max-entries must not be negative, got -1"):
        run(source, MemorySink(), max_entries=-1)
    with pytest.raises(UsageError, match="--max-expanded must not be negative, got -5"):
        run(source, MemorySink(), max_expanded=-5)
    assert source.opened == []


def test_layer_limits_reach_every_layer() -> None:
    source, engine = MemorySource(), FakeEngine()
    add_image(source, [b"a", b"b"])
    run(source, MemorySink(), engine, max_expanded=None, max_entries=5)
    assert engine.calls and {c.limits for c in engine.calls} == {(None, 5)}


class RefusingSink(MemorySink):
    """A sink whose registry refuses manifests (or, with ``blobs``, blobs too) like a 403 would."""

    def __init__(self, *, blobs: bool = False) -> None:
        super().__init__()
        self.refuse_blobs = blobs

    def push_blob(self, path: Path, digest: Digest, size: int) -> None:
        if self.refuse_blobs and path.name.startswith("blob-"):  # the engine's config, not a layer
            raise AuthError(f"pushing blob {digest} to r.io/dest: 403 DENIED", status=403)
        super().push_blob(path, digest, size)

    def put_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Digest:
        raise AuthError(f"pushing manifest r.io/dest:{tag}: 403 DENIED: no push access", status=403)


@pytest.mark.parametrize("what", ["manifest", "config"])
def test_a_refused_push_names_the_source_image(what: str) -> None:
    source = MemorySource()
    add_image(source, [b"a"])
    with pytest.raises(PushFailed) as info:
        run(source, RefusingSink(blobs=what == "config"))
    err = info.value
    assert str(err).startswith(f"converting {SRC}: pushing {what if what == 'manifest' else 'blob'} ")
    assert "403 DENIED" in str(err) and err.image == str(SRC)
    assert isinstance(err.__cause__, AuthError) and err.exit_status == 1


def test_the_config_file_is_private(tmp_path: Path) -> None:
    source = MemorySource()
    add_image(source, [b"a"])
    modes: list[int] = []

    class Looking(MemorySink):
        def push_blob(self, path: Path, digest: Digest, size: int) -> None:
            if path.name.startswith("blob-"):  # the engine's own file; layer images come from the engine
                modes.append(path.stat().st_mode & 0o777)
            super().push_blob(path, digest, size)

    run(source, Looking(), workdir=tmp_path)
    assert modes == [0o600]
