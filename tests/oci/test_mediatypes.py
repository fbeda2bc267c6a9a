"""MediaType predicates and the EROFS media-type profiles."""

from __future__ import annotations

import pytest

from converter.errors import UnsupportedMediaType, UsageError
from converter.oci.mediatypes import Compression, MediaType, Profile, known, parse_media_type, parse_profile

M = MediaType

# (type, index, manifest, tar layer, erofs layer, foreign, schema1)
TABLE = [
    (M.OCI_INDEX, True, False, False, False, False, False),
    (M.DOCKER_MANIFEST_LIST, True, False, False, False, False, False),
    (M.OCI_MANIFEST, False, True, False, False, False, False),
    (M.DOCKER_MANIFEST, False, True, False, False, False, False),
    (M.DOCKER_SCHEMA1, False, False, False, False, False, True),
    (M.DOCKER_SCHEMA1_SIGNED, False, False, False, False, False, True),
    (M.OCI_LAYER, False, False, True, False, False, False),
    (M.OCI_LAYER_GZIP, False, False, True, False, False, False),
    (M.OCI_LAYER_ZSTD, False, False, True, False, False, False),
    (M.OCI_LAYER_ND, False, False, True, False, True, False),
    (M.OCI_LAYER_ND_GZIP, False, False, True, False, True, False),
    (M.OCI_LAYER_ND_ZSTD, False, False, True, False, True, False),
    (M.DOCKER_LAYER, False, False, True, False, False, False),
    (M.DOCKER_FOREIGN_LAYER, False, False, True, False, True, False),
    (M.EROFS, False, False, False, True, False, False),
    (M.EROFS_ZSTD, False, False, False, True, False, False),
    (M.OCI_LAYER_EROFS, False, False, False, True, False, False),
    (M.EROFS_LAYER_V1, False, False, False, True, False, False),
    (M.EROFS_LAYER_V1_ZSTD, False, False, False, True, False, False),
    (M.OCI_CONFIG, False, False, False, False, False, False),
]


@pytest.mark.parametrize(("mt", "index", "manifest", "tar", "erofs", "foreign", "schema1"), TABLE,
                         ids=[t[0].name for t in TABLE])
def test_predicates(mt: MediaType, index: bool, manifest: bool, tar: bool, erofs: bool, foreign: bool,
                    schema1: bool) -> None:
    assert (mt.is_index, mt.is_manifest, mt.is_tar_layer, mt.is_erofs_layer, mt.is_foreign, mt.is_schema1) == (
        index, manifest, tar, erofs, foreign, schema1)
    assert mt.is_distributable is not foreign


@pytest.mark.parametrize(("mt", "compression"), [
    (M.OCI_LAYER, Compression.NONE), (M.OCI_LAYER_GZIP, Compression.GZIP), (M.OCI_LAYER_ZSTD, Compression.ZSTD),
    (M.OCI_LAYER_ND_GZIP, Compression.GZIP), (M.DOCKER_LAYER, Compression.GZIP),
    (M.DOCKER_FOREIGN_LAYER, Compression.GZIP), (M.EROFS, Compression.NONE), (M.EROFS_ZSTD, Compression.ZSTD),
    (M.EROFS_LAYER_V1_ZSTD, Compression.ZSTD), (M.OCI_LAYER_EROFS, Compression.NONE),
])
def test_compression(mt: MediaType, compression: Compression) -> None:
    assert mt.compression is compression


def test_compression_of_non_layer_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a layer media type"):
        _ = M.OCI_MANIFEST.compression


def test_parse_media_type_strips_parameters_and_keeps_unknown() -> None:
    assert parse_media_type("application/vnd.oci.image.manifest.v1+json; charset=utf-8") is M.OCI_MANIFEST
    assert parse_media_type("application/vnd.in-toto+json") == "application/vnd.in-toto+json"
    assert known("application/json") is None
    assert known(" application/vnd.erofs ") is M.EROFS


@pytest.mark.parametrize(("profile", "raw", "zstd"), [
    (Profile.SPEC, "application/vnd.erofs", "application/vnd.erofs+zstd"),
    (Profile.CONTAINERD_23, "application/vnd.erofs.layer.v1", "application/vnd.erofs.layer.v1+zstd"),
    (Profile.CONTAINERD_21, "application/vnd.oci.image.layer.v1.erofs", None),
], ids=lambda v: str(v))
def test_profiles(profile: Profile, raw: str, zstd: str | None) -> None:
    assert profile.layer_media_type() == raw
    if zstd is None:
        with pytest.raises(UnsupportedMediaType):
            profile.layer_media_type(zstd=True)
    else:
        assert profile.layer_media_type(zstd=True) == zstd
    assert profile.uses_roles is (profile is Profile.SPEC)


def test_parse_profile() -> None:
    assert parse_profile("containerd-2.1") is Profile.CONTAINERD_21
    with pytest.raises(UsageError, match="unknown media-type profile 'cd'; choose one of spec"):
        parse_profile("cd")
