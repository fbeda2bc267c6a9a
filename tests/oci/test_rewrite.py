"""The pure rewrite rules: config, manifest, index (docs/oci-layers.md §1 and D-1..D-14)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from converter.errors import ImageError, UnsupportedMediaType
from converter.oci.mediatypes import MediaType, Profile
from converter.oci.model import Descriptor, Index, Manifest, Platform, parse_image_manifest
from converter.oci.rewrite import (
    ANN_FORMAT,
    ANN_PROFILE,
    ANN_SOURCE_DIGEST,
    ANN_VERSION,
    ANNOTATION_PREFIX,
    ROLE_ANNOTATION,
    ConvertedEntry,
    NewLayer,
    Provenance,
    build_index,
    build_manifest,
    check_source_layers,
    erofs_entry,
    plan_index,
    rewrite_config,
)
from converter.reference import Digest


def dg(n: int) -> Digest:
    return Digest("sha256", f"{n:064x}")


PROV = Provenance(source_digest=dg(99), fmt="erofs+lz4hc,level=9",
                  profile=Profile.SPEC, version="0.1.0")
NEW = [NewLayer(dg(11), 1000), NewLayer(dg(12), 2000), NewLayer(dg(13), 3000)]


def config_bytes(**over: Any) -> bytes:
    cfg: dict[str, Any] = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "container_config": {"Hostname": "abc"},  # Docker-only field: must survive
        "rootfs": {"type": "layers", "diff_ids": [str(dg(1)), str(dg(2)), str(dg(3))]},
        "history": [{"created_by": "a"}, {"created_by": "b", "empty_layer": True}, {"created_by": "c"},
                    {"created_by": "d"}],
    }
    cfg.update(over)
    return json.dumps(cfg).encode()


def cdesc(data: bytes) -> Descriptor:
    return Descriptor(MediaType.OCI_CONFIG, Digest.from_bytes(data), len(data))


def rewrite(data: bytes, layers: list[NewLayer] = NEW, source_layers: int = 3) -> dict[str, Any]:
    out = rewrite_config(data, descriptor=cdesc(data), layers=layers, source_layers=source_layers)
    result: dict[str, Any] = json.loads(out)
    return result


# --- config -----------------------------------------------------------------------------------


def test_config_gets_erofs_feature_and_new_diff_ids() -> None:
    src = config_bytes()
    cfg = rewrite(src)
    assert cfg["os.features"] == ["erofs"]
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [str(dg(11)), str(dg(12)), str(dg(13))]}
    original = json.loads(src)
    for key in ("created", "config", "container_config", "history", "architecture", "os"):
        assert cfg[key] == original[key]
    # key order is the source's, with os.features right after os
    assert list(cfg) == ["created", "architecture", "os", "os.features", "config", "container_config",
                         "rootfs", "history"]


def test_erofs_feature_is_not_duplicated_and_others_kept() -> None:
    cfg = rewrite(config_bytes(**{"os.features": ["win32k", "erofs"]}))
    assert cfg["os.features"] == ["win32k", "erofs"]
    cfg = rewrite(config_bytes(**{"os.features": ["win32k"]}))
    assert cfg["os.features"] == ["win32k", "erofs"]


def test_os_features_goes_after_os_version() -> None:
    cfg = rewrite(config_bytes(**{"os.version": "10.0"}))
    keys = list(cfg)
    assert keys.index("os.features") == keys.index("os.version") + 1


def test_rootfs_type_is_forced_and_extra_rootfs_keys_kept() -> None:
    data = config_bytes(rootfs={"type": "weird", "diff_ids": [str(dg(1)), str(dg(2)), str(dg(3))], "x": 1})
    assert rewrite(data)["rootfs"] == {"type": "layers", "diff_ids": [str(dg(11)), str(dg(12)), str(dg(13))],
                                       "x": 1}


def test_raw_diff_id_is_the_blob_digest_even_with_internal_compression() -> None:
    # erofs+lz4hc is still a raw application/vnd.erofs blob: DiffID = descriptor digest (spec §5.2, D-2).
    layer = NewLayer(dg(21), 10)
    assert layer.diff_id == dg(21)
    with pytest.raises(ValueError, match="raw layer's DiffID is its digest"):
        NewLayer(dg(21), 10, uncompressed_digest=dg(22))
    with pytest.raises(ValueError, match="needs its uncompressed digest"):
        NewLayer(dg(21), 10, zstd=True)
    assert NewLayer(dg(21), 10, zstd=True, uncompressed_digest=dg(22)).diff_id == dg(22)


def test_config_rewrite_is_deterministic() -> None:
    src = config_bytes()
    a = rewrite_config(src, descriptor=cdesc(src), layers=NEW, source_layers=3)
    b = rewrite_config(src, descriptor=cdesc(src), layers=NEW, source_layers=3)
    assert a == b
    assert b" " not in a.replace(b"PATH=/bin", b"").replace(b"/bin/sh", b"")  # compact separators


def test_diff_ids_count_mismatch() -> None:
    with pytest.raises(ImageError, match=r"rootfs\.diff_ids has 3 entries but the manifest has 2 layers"):
        rewrite(config_bytes(), layers=NEW[:2], source_layers=2)
    with pytest.raises(ImageError, match="2 converted layers for 3 source layers"):
        rewrite(config_bytes(), layers=NEW[:2], source_layers=3)


def test_config_digest_mismatch() -> None:
    data = config_bytes()
    wrong = Descriptor(MediaType.OCI_CONFIG, dg(5), len(data))
    with pytest.raises(ImageError, match="content has digest"):
        rewrite_config(data, descriptor=wrong, layers=NEW, source_layers=3)


# --- manifest ---------------------------------------------------------------------------------


def source_manifest(media_type: MediaType = MediaType.OCI_MANIFEST, n: int = 3, **kw: Any) -> Manifest:
    layer_type = MediaType.DOCKER_LAYER if media_type is MediaType.DOCKER_MANIFEST else MediaType.OCI_LAYER_GZIP
    config_type = MediaType.DOCKER_CONFIG if media_type is MediaType.DOCKER_MANIFEST else MediaType.OCI_CONFIG
    return Manifest(media_type=media_type, config=Descriptor(config_type, dg(50), 10),
                    layers=tuple(Descriptor(layer_type, dg(60 + i), 100, annotations={"src": "x"})
                                 for i in range(n)), **kw)


@pytest.mark.parametrize(("profile", "layer_type", "roles"), [
    (Profile.SPEC, "application/vnd.erofs", ["overlay-lower", "overlay-lower", None]),
    (Profile.CONTAINERD_21, "application/vnd.oci.image.layer.v1.erofs", [None, None, None]),
    (Profile.CONTAINERD_23, "application/vnd.erofs.layer.v1", [None, None, None]),
], ids=lambda v: str(v) if isinstance(v, Profile) else None)
@pytest.mark.parametrize("source_type", [MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST],
                         ids=["oci", "docker-schema2"])
def test_manifest_per_profile(profile: Profile, layer_type: str, roles: list[str | None],
                              source_type: MediaType) -> None:
    cfg = b'{"os":"linux"}'
    m = build_manifest(source_manifest(source_type), config=cfg, layers=NEW, profile=profile, provenance=PROV)
    assert m.media_type is MediaType.OCI_MANIFEST
    assert m.config == Descriptor(MediaType.OCI_CONFIG, Digest.from_bytes(cfg), len(cfg))
    assert [layer.media_type for layer in m.layers] == [layer_type] * 3
    assert [(layer.digest, layer.size) for layer in m.layers] == [(n.digest, n.size) for n in NEW]
    assert [layer.annotations.get(ROLE_ANNOTATION) for layer in m.layers] == roles
    # nothing from the tar layers' descriptors leaks, and no org.erofs keys outside the spec profile
    for layer in m.layers:
        assert "src" not in layer.annotations
        if profile is not Profile.SPEC:
            assert not layer.annotations
    data = json.loads(m.to_bytes())
    assert data["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert data["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"


def test_single_layer_has_no_role() -> None:
    m = build_manifest(source_manifest(n=1), config=b"{}", layers=NEW[:1], profile=Profile.SPEC, provenance=PROV)
    assert ROLE_ANNOTATION not in m.layers[0].annotations


def test_zstd_layers_carry_uncompressed_digest_in_spec_profile() -> None:
    layer = NewLayer(dg(31), 5, zstd=True, uncompressed_digest=dg(32))
    m = build_manifest(source_manifest(n=1), config=b"{}", layers=[layer], profile=Profile.SPEC, provenance=PROV)
    assert m.layers[0].media_type == "application/vnd.erofs+zstd"
    assert m.layers[0].annotations == {"org.erofs.uncompressed-digest": str(dg(32))}


def test_manifest_annotations_provenance_and_no_subject() -> None:
    src = source_manifest(annotations={"org.opencontainers.image.source": "https://x",
                                       ANNOTATION_PREFIX + "source.ref": "stale"},
                          subject=Descriptor(MediaType.OCI_MANIFEST, dg(70), 1))
    m = build_manifest(src, config=b"{}", layers=NEW, profile=Profile.SPEC, provenance=PROV)
    assert m.subject is None
    assert m.annotations == {
        "org.opencontainers.image.source": "https://x",
        ANN_SOURCE_DIGEST: str(dg(99)),
        ANN_FORMAT: "erofs+lz4hc,level=9",
        ANN_PROFILE: "spec",
        ANN_VERSION: "0.1.0",
        "io.github.erofs-converter.platforms": "all",
        "io.github.erofs-converter.builder": "python",
        "io.github.erofs-converter.build-time": "0",
    }
    assert Provenance.from_annotations(m.annotations) == PROV
    # reproducible: no timestamps, same bytes every time
    again = build_manifest(src, config=b"{}", layers=NEW, profile=Profile.SPEC, provenance=PROV)
    assert again.to_bytes() == m.to_bytes()
    assert b"created" not in m.to_bytes()
    assert parse_image_manifest(m.to_bytes()) == m


def test_provenance_from_bad_annotations() -> None:
    assert Provenance.from_annotations({}) is None
    bad = dict(PROV.annotations())
    bad[ANN_SOURCE_DIGEST] = "nope"
    assert Provenance.from_annotations(bad) is None
    bad = dict(PROV.annotations())
    bad[ANN_PROFILE] = "other"
    assert Provenance.from_annotations(bad) is None


@pytest.mark.parametrize(("layer_type", "message"), [
    (MediaType.DOCKER_FOREIGN_LAYER, "non-distributable/foreign layer"),
    (MediaType.OCI_LAYER_ND_GZIP, "non-distributable/foreign layer"),
    (MediaType.OCI_LAYER_ND, "non-distributable/foreign layer"),
    (MediaType.EROFS, "already an EROFS layer"),
    ("application/vnd.in-toto+json", "unsupported layer media type application/vnd.in-toto"),
])
def test_unconvertible_layers(layer_type: str, message: str) -> None:
    src = source_manifest(n=2)
    bad = Manifest(media_type=src.media_type, config=src.config,
                   layers=(src.layers[0], Descriptor(layer_type, dg(80), 1, urls=("https://x",))))
    with pytest.raises(UnsupportedMediaType, match=f"converting img: layer 1 .*{message}"):
        check_source_layers(bad, image="img")
    check_source_layers(src, image="img")


# --- index ------------------------------------------------------------------------------------

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")


def entry(n: int, platform: Platform | None, media_type: str = MediaType.OCI_MANIFEST,
          **annotations: str) -> Descriptor:
    return Descriptor(media_type, dg(n), 500 + n, platform=platform, annotations=annotations)


ATTEST = entry(3, Platform("unknown", "unknown"), **{"vnd.docker.reference.type": "attestation-manifest",
                                                      "vnd.docker.reference.digest": str(dg(1))})
SOURCE_INDEX = Index(media_type=MediaType.OCI_INDEX, annotations={"org.example": "keep"}, manifests=(
    entry(1, AMD64),
    entry(2, ARM64),
    ATTEST,
    entry(4, Platform("unknown", "unknown")),
    entry(5, None),
    entry(6, Platform("linux", "s390x"), "application/vnd.oci.image.index.v1+json"),
    entry(7, Platform("linux", "ppc64le"), "application/x-unknown"),
))


def test_plan_drops_attestations_and_unknown_entries() -> None:
    plan = plan_index(SOURCE_INDEX)
    assert [d.digest for d in plan.convert] == [dg(1), dg(2)]
    assert {d.digest: reason for d, reason in plan.dropped} == {
        dg(3): "attestation manifest",
        dg(4): "platform unknown/unknown",
        dg(5): "no platform",
        dg(6): "nested index",
        dg(7): "unsupported media type application/x-unknown",
    }


def test_plan_keeps_everything_when_merging() -> None:
    plan = plan_index(SOURCE_INDEX, merge=True)
    assert [d.digest for d in plan.convert] == [dg(1), dg(2)]
    assert plan.dropped == ()


def test_plan_platform_filter() -> None:
    plan = plan_index(SOURCE_INDEX, platforms=[Platform.parse("linux/arm64")])
    assert [d.digest for d in plan.convert] == [dg(2)]
    assert (SOURCE_INDEX.manifests[0], "platform linux/amd64 not selected") in plan.dropped
    with pytest.raises(ImageError) as info:
        plan_index(SOURCE_INDEX, platforms=[Platform.parse("linux/riscv64")], image="img")
    # the message lists the platforms the index does have (attestations and unknown/unknown aside)
    assert str(info.value) == ("converting img: no image manifest for linux/riscv64 in the index; "
                               "it has linux/amd64, linux/arm64/v8")


def converted() -> list[ConvertedEntry]:
    return [ConvertedEntry(source=SOURCE_INDEX.manifests[0], manifest=erofs_entry(b"amd64-erofs", platform=AMD64)),
            ConvertedEntry(source=SOURCE_INDEX.manifests[1], manifest=erofs_entry(b"arm64-erofs", platform=ARM64))]


def test_index_without_merge_holds_only_erofs_manifests() -> None:
    idx = build_index(SOURCE_INDEX, converted(), plan=plan_index(SOURCE_INDEX), provenance=PROV)
    assert idx.media_type is MediaType.OCI_INDEX
    assert [m.digest for m in idx.manifests] == [Digest.from_bytes(b"amd64-erofs"), Digest.from_bytes(b"arm64-erofs")]
    for m in idx.manifests:
        assert m.media_type is MediaType.OCI_MANIFEST
        assert m.platform is not None and m.platform.os_features == ("erofs",)
    assert idx.manifests[1].platform == Platform("linux", "arm64", "v8", os_features=("erofs",))
    assert idx.annotations == {"org.example": "keep", **PROV.annotations()}


def test_merged_index_puts_each_erofs_manifest_after_its_tar_manifest() -> None:
    plan = plan_index(SOURCE_INDEX, merge=True)
    idx = build_index(SOURCE_INDEX, converted(), plan=plan, merge=True, provenance=PROV)
    amd, arm = (c.manifest.digest for c in converted())
    assert [m.digest for m in idx.manifests] == [dg(1), amd, dg(2), arm, dg(3), dg(4), dg(5), dg(6), dg(7)]
    assert idx.manifests[0] == SOURCE_INDEX.manifests[0]  # source entries unchanged
    assert idx.manifests[4] == ATTEST


def test_merge_supersedes_old_erofs_entries_of_converted_platforms() -> None:
    old_erofs = entry(8, AMD64.with_os_feature("erofs"))
    other_erofs = entry(9, Platform("linux", "riscv64", os_features=("erofs",)))
    src = Index(media_type=MediaType.OCI_INDEX, manifests=(entry(1, AMD64), old_erofs, other_erofs))
    plan = plan_index(src, merge=True)
    assert plan.dropped == ((old_erofs, "superseded EROFS manifest"),)
    new = erofs_entry(b"new", platform=AMD64)
    idx = build_index(src, [ConvertedEntry(src.manifests[0], new)], plan=plan, merge=True, provenance=PROV)
    assert [m.digest for m in idx.manifests] == [dg(1), new.digest, dg(9)]
    # without merging, existing EROFS entries are never converted again
    assert (old_erofs, "already an EROFS manifest") in plan_index(src).dropped


def test_merge_of_a_single_manifest_source() -> None:
    src = entry(1, AMD64)
    new = erofs_entry(b"m", platform=AMD64)
    idx = build_index(None, [ConvertedEntry(src, new)], merge=True, provenance=PROV)
    assert [m.digest for m in idx.manifests] == [dg(1), new.digest]
    assert idx.annotations == PROV.annotations()


def test_build_index_errors() -> None:
    with pytest.raises(ImageError, match="no converted manifests"):
        build_index(SOURCE_INDEX, [], provenance=PROV)
    stray = ConvertedEntry(entry(42, AMD64), erofs_entry(b"x", platform=AMD64))
    with pytest.raises(ImageError, match="missing from the source index"):
        build_index(SOURCE_INDEX, [stray], merge=True, provenance=PROV)


def test_erofs_entry_keeps_existing_os_features() -> None:
    e = erofs_entry(b"x", platform=Platform("windows", "amd64", os_version="10.0", os_features=("win32k",)))
    assert e.platform == Platform("windows", "amd64", os_version="10.0", os_features=("win32k", "erofs"))
    assert e.size == 1 and e.digest == Digest.from_bytes(b"x")
