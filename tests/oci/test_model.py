"""Parsing and validating manifests, indexes, configs and platforms; canonical JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from converter.errors import ImageError, UnsupportedMediaType, UsageError
from converter.oci.mediatypes import MediaType
from converter.oci.model import (
    MAX_MANIFEST_SIZE,
    SCHEMA1_MESSAGE,
    Descriptor,
    Index,
    Manifest,
    Platform,
    canonical_json,
    parse_config,
    parse_image_manifest,
    parse_index,
    parse_manifest,
)
from converter.reference import Digest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def manifest_obj(**over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST.value,
        "config": {"mediaType": MediaType.OCI_CONFIG.value, "digest": D1, "size": 10},
        "layers": [{"mediaType": MediaType.OCI_LAYER_GZIP.value, "digest": D2, "size": 20}],
    }
    obj.update(over)
    return obj


def index_obj(**over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_INDEX.value,
        "manifests": [{"mediaType": MediaType.OCI_MANIFEST.value, "digest": D1, "size": 300,
                       "platform": {"architecture": "arm64", "os": "linux", "variant": "v8",
                                    "os.features": ["x"]}}],
    }
    obj.update(over)
    return obj


def test_parse_oci_manifest() -> None:
    m = parse_image_manifest(dumps(manifest_obj(annotations={"a": "b"})))
    assert m.media_type is MediaType.OCI_MANIFEST
    assert m.config.digest == Digest.parse(D1) and m.config.size == 10
    assert [layer.known_type for layer in m.layers] == [MediaType.OCI_LAYER_GZIP]
    assert m.annotations == {"a": "b"}


def test_parse_docker_schema2_manifest() -> None:
    obj = manifest_obj(mediaType=MediaType.DOCKER_MANIFEST.value)
    obj["config"]["mediaType"] = MediaType.DOCKER_CONFIG.value
    obj["layers"][0]["mediaType"] = MediaType.DOCKER_LAYER.value
    m = parse_image_manifest(dumps(obj), MediaType.DOCKER_MANIFEST)
    assert m.media_type is MediaType.DOCKER_MANIFEST
    assert m.layers[0].known_type is MediaType.DOCKER_LAYER


def test_parse_index_with_platform() -> None:
    idx = parse_index(dumps(index_obj()))
    (entry,) = idx.manifests
    assert entry.platform == Platform("linux", "arm64", "v8", os_features=("x",))
    assert str(entry.platform) == "linux/arm64/v8"


def test_media_type_from_shape_when_absent() -> None:
    m = manifest_obj()
    del m["mediaType"]
    assert isinstance(parse_manifest(dumps(m)), Manifest)
    i = index_obj()
    del i["mediaType"]
    assert isinstance(parse_manifest(dumps(i)), Index)
    # the transport's content type is enough too
    assert isinstance(parse_manifest(dumps(i), MediaType.DOCKER_MANIFEST_LIST), Index)
    # a generic content type from a registry does not count
    assert isinstance(parse_manifest(dumps(m), "application/json"), Manifest)


def test_unknown_fields_survive_round_trip() -> None:
    obj = manifest_obj(artifactType="application/x-thing", extraTopLevel={"k": [1, 2]})
    obj["layers"][0]["data"] = "aGk="
    obj["layers"][0]["annotations"] = {"x": "y"}
    obj["subject"] = {"mediaType": MediaType.OCI_MANIFEST.value, "digest": D3, "size": 5}
    m = parse_image_manifest(dumps(obj))
    assert m.layers[0].extra == {"data": "aGk="}
    again = json.loads(m.to_bytes())
    assert again == obj


def test_descriptor_serialisation_order() -> None:
    desc = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=Digest.parse(D1), size=3,
                      annotations={"a": "b"}, platform=Platform("linux", "amd64", os_features=("erofs",)))
    assert list(desc.to_json()) == ["mediaType", "digest", "size", "annotations", "platform"]
    assert desc.to_json()["platform"] == {"architecture": "amd64", "os": "linux", "os.features": ["erofs"]}


def _corrupt(path: list[Any], value: Any, *, delete: bool = False) -> bytes:
    obj = manifest_obj()
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return dumps(obj)


BAD = [
    ("invalid-json", b"{not json", "invalid JSON"),
    ("not-object", b"[1]", "want a JSON object"),
    ("nan", b'{"schemaVersion": NaN}', "invalid JSON"),
    ("schema-3", _corrupt(["schemaVersion"], 3), "schemaVersion must be 2"),
    ("no-config", _corrupt(["config"], None, delete=True), "missing config"),
    ("layers-not-list", _corrupt(["layers"], {}), "layers must be a list"),
    ("layer-not-object", _corrupt(["layers", 0], "x"), "descriptor must be an object"),
    ("no-media-type", _corrupt(["layers", 0, "mediaType"], None, delete=True), "missing mediaType"),
    ("digest-uppercase", _corrupt(["layers", 0, "digest"], "sha256:" + "A" * 64), "invalid digest"),
    ("digest-short", _corrupt(["layers", 0, "digest"], "sha256:abc"), "invalid digest"),
    ("digest-algorithm", _corrupt(["layers", 0, "digest"], "md5:" + "a" * 32), "invalid digest"),
    ("digest-not-string", _corrupt(["config", "digest"], 5), "digest must be a string"),
    ("size-negative", _corrupt(["layers", 0, "size"], -1), "size must not be negative"),
    ("size-bool", _corrupt(["layers", 0, "size"], True), "size must be an integer"),
    ("size-string", _corrupt(["layers", 0, "size"], "20"), "size must be an integer"),
    ("annotations", _corrupt(["annotations"], {"a": 1}), "annotations must map strings"),
    ("urls", _corrupt(["layers", 0, "urls"], "http://x"), "urls must be a list"),
    ("platform-no-os", _corrupt(["config", "platform"], {"architecture": "amd64"}), "missing os"),
    ("index-manifests", dumps(index_obj(manifests={})), "manifests must be a list"),
    ("manifest-with-manifests", dumps(manifest_obj(manifests=[])), "must not have manifests"),
    ("shapeless", b'{"schemaVersion": 2}', "neither a manifest nor an index"),
]


@pytest.mark.parametrize(("data", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_manifests(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_manifest(data, what="manifest x")


def test_error_names_the_field() -> None:
    with pytest.raises(ImageError, match=r"parsing manifest x: layers\[0\]: invalid digest"):
        parse_manifest(_corrupt(["layers", 0, "digest"], "sha256:zz"), what="manifest x")


@pytest.mark.parametrize(("data", "header"), [
    (dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}), None),
    (dumps({"schemaVersion": 1, "mediaType": MediaType.DOCKER_SCHEMA1.value}), None),
    (dumps({"schemaVersion": 1}), MediaType.DOCKER_SCHEMA1_SIGNED.value),
], ids=["schemaVersion", "body", "header"])
def test_schema1_is_refused(data: bytes, header: str | None) -> None:
    with pytest.raises(UnsupportedMediaType, match=SCHEMA1_MESSAGE):
        parse_manifest(data, header)
    assert SCHEMA1_MESSAGE == "schema1 manifests are unsupported; convert with skopeo first"


def test_unknown_or_wrong_kind_media_type() -> None:
    with pytest.raises(UnsupportedMediaType, match="unsupported media type application/x-foo"):
        parse_manifest(dumps(manifest_obj(mediaType="application/x-foo")))
    with pytest.raises(UnsupportedMediaType, match="not a manifest or index"):
        parse_manifest(dumps(manifest_obj(mediaType=MediaType.OCI_CONFIG.value)))


def test_header_contradicting_body() -> None:
    with pytest.raises(ImageError, match="contradicts"):
        parse_manifest(dumps(manifest_obj()), MediaType.DOCKER_MANIFEST)


def test_wrong_kind_helpers() -> None:
    with pytest.raises(ImageError, match="want an image manifest, got an index"):
        parse_image_manifest(dumps(index_obj()))
    with pytest.raises(ImageError, match="want an index, got an image manifest"):
        parse_index(dumps(manifest_obj()))


def test_oversized_manifest_is_refused() -> None:
    obj = manifest_obj(annotations={"pad": ""})
    base = len(dumps(obj))
    obj["annotations"]["pad"] = "x" * (MAX_MANIFEST_SIZE - base)
    at_limit = dumps(obj)
    assert len(at_limit) == MAX_MANIFEST_SIZE
    parse_manifest(at_limit)
    obj["annotations"]["pad"] += "x"
    with pytest.raises(ImageError, match="more than the 4194304 byte limit"):
        parse_manifest(dumps(obj))


def test_digest_is_verified() -> None:
    data = dumps(manifest_obj())
    parse_manifest(data, digest=Digest.from_bytes(data))
    with pytest.raises(ImageError, match="content has digest"):
        parse_manifest(data, digest=Digest.parse(D3))


def test_index_referencing_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # Content addressing makes a real self-reference impossible (the index would have to contain
    # its own hash), so only a source that skips or lies about verification can produce one;
    # turn the digest check off to reach the self-reference check.
    from converter.oci import model

    obj = index_obj()
    claimed = Digest.parse(D3)
    obj["manifests"].append({"mediaType": MediaType.OCI_INDEX.value, "digest": D3, "size": 1})
    with pytest.raises(ImageError, match="content has digest"):
        parse_index(dumps(obj), digest=claimed)
    monkeypatch.setattr(model, "_verify_digest", lambda *a, **k: None)
    with pytest.raises(ImageError, match=r"manifests\[1\] refers to the index itself"):
        parse_index(dumps(obj), digest=claimed)


def test_canonical_json() -> None:
    obj = {"z": 1, "a": "é", "m": [1, {"b": None}]}
    assert canonical_json(obj) == '{"z":1,"a":"é","m":[1,{"b":null}]}'.encode()
    assert canonical_json({"s": "\ud800"}) == b'{"s":"\\ud800"}'  # lone surrogate: ASCII fallback
    with pytest.raises(ValueError):
        canonical_json({"f": float("nan")})


def test_manifest_bytes_are_deterministic() -> None:
    m = parse_image_manifest(dumps(manifest_obj()))
    assert m.to_bytes() == parse_image_manifest(m.to_bytes()).to_bytes()
    assert list(json.loads(m.to_bytes())) == ["schemaVersion", "mediaType", "config", "layers"]


@pytest.mark.parametrize(("text", "expect"), [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm/v7", Platform("linux", "arm", "v7")),
])
def test_platform_parse(text: str, expect: Platform) -> None:
    assert Platform.parse(text) == expect
    assert str(expect) == text


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_platform_parse_errors(text: str) -> None:
    with pytest.raises(UsageError, match="want OS/ARCH"):
        Platform.parse(text)


@pytest.mark.parametrize(("have", "want", "ok"), [
    (Platform("linux", "amd64"), Platform("linux", "amd64"), True),
    (Platform("linux", "arm64", "v8"), Platform("linux", "arm64"), True),
    (Platform("linux", "arm64"), Platform("linux", "arm64", "v8"), True),  # arm64 means v8
    (Platform("linux", "arm", "v6"), Platform("linux", "arm", "v7"), False),
    (Platform("linux", "arm"), Platform("linux", "arm", "v7"), False),
    (Platform("windows", "amd64"), Platform("linux", "amd64"), False),
])
def test_platform_matches(have: Platform, want: Platform, ok: bool) -> None:
    assert have.matches(want) is ok


def test_with_os_feature_is_idempotent() -> None:
    p = Platform("linux", "amd64", os_features=("a",))
    assert p.with_os_feature("erofs").os_features == ("a", "erofs")
    assert p.with_os_feature("erofs").with_os_feature("erofs").os_features == ("a", "erofs")


CONFIG = {"architecture": "arm64", "os": "linux", "variant": "v8", "os.features": ["f"],
          "rootfs": {"type": "layers", "diff_ids": [D1, D2]}}


def _desc(data: bytes) -> Descriptor:
    return Descriptor(MediaType.OCI_CONFIG, Digest.from_bytes(data), len(data))


def test_parse_config() -> None:
    data = dumps(CONFIG)
    cfg = parse_config(data, descriptor=_desc(data))
    assert cfg.diff_ids == (Digest.parse(D1), Digest.parse(D2))
    assert cfg.platform == Platform("linux", "arm64", "v8", os_features=("f",))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda c: c.pop("os"), "missing os"),
    (lambda c: c.update({"architecture": 1}), "missing architecture"),
    (lambda c: c.update({"os.features": "erofs"}), "os.features must be a list"),
    (lambda c: c.update({"rootfs": []}), "rootfs must be an object"),
    (lambda c: c["rootfs"].update({"diff_ids": {}}), "diff_ids must be a list"),
    (lambda c: c["rootfs"].update({"diff_ids": ["sha256:x"]}), r"diff_ids\[0\]: invalid digest"),
], ids=["no-os", "bad-arch", "features", "rootfs", "diff-ids", "diff-id"])
def test_config_errors(mutate: Any, message: str) -> None:
    cfg = json.loads(json.dumps(CONFIG))
    mutate(cfg)
    with pytest.raises(ImageError, match=message):
        parse_config(dumps(cfg))


def test_config_digest_and_size_are_checked() -> None:
    data = dumps(CONFIG)
    with pytest.raises(ImageError, match="content has digest"):
        parse_config(data, descriptor=Descriptor(MediaType.OCI_CONFIG, Digest.parse(D3), len(data)))
    with pytest.raises(ImageError, match="but the manifest says 1"):
        parse_config(data, descriptor=Descriptor(MediaType.OCI_CONFIG, Digest.from_bytes(data), 1))
