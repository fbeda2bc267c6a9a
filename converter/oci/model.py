"""Frozen models of OCI/Docker descriptors, manifests and indexes, parsed and validated from bytes.

Everything that comes from a registry or a layout directory is untrusted: ``parse_*`` check
sizes, types and digests and raise ``ImageError`` naming the field ("parsing manifest X:
layers[2].digest: ..."), or ``UnsupportedMediaType`` for Docker schema 1. Fields we do not
model (``data``, future additions) are kept in ``extra`` so an index entry can be carried into
a merged index unchanged.

Image *configs* are deliberately not modelled: ``ImageConfig`` wraps the parsed dict and
exposes read-only accessors; ``converter.oci.rewrite`` changes a copy of that dict surgically,
so unknown keys (Docker's ``container_config``, vendor extensions) survive a conversion.

Canonical serialisation (``canonical_json``): compact separators ``(",", ":")``, keys in a
stable order (for our models: the field order of the image-spec Go structs, which is what
containerd and go-containerregistry emit; for configs: the source's own order, with new keys
inserted at a fixed place), UTF-8 without ``\\uXXXX`` escaping, no NaN/Infinity. We do *not*
sort keys: sorted output would reorder every source config we touch and make diffs against
the original noisy, and determinism only needs the same input to give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from converter.errors import ImageError, InvalidReference, UnsupportedMediaType, UsageError
from converter.oci.mediatypes import MediaType, known, parse_media_type
from converter.reference import Digest

# containerd and the OCI distribution spec settle on 4 MiB as the largest manifest a client must
# handle; anything bigger is refused before parsing (a hostile registry could send gigabytes).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# Configs carry history and environment; they can be larger than manifests but not unbounded.
MAX_CONFIG_SIZE = 16 * 1024 * 1024

SCHEMA1_MESSAGE = "schema1 manifests are unsupported; convert with skopeo first"

JSON = dict[str, Any]


def canonical_json(obj: Any) -> bytes:
    """Deterministic compact JSON (see the module docstring for the choices)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\ud800" escape in the source) cannot be UTF-8 encoded;
        # fall back to ASCII escapes for this document rather than failing.
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json_object(data: bytes, *, what: str, limit: int) -> JSON:
    """``data`` parsed as a JSON object, with ImageError naming ``what`` on any problem."""
    if len(data) > limit:
        raise ImageError(f"parsing {what}: {len(data)} bytes is more than the {limit} byte limit")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ImageError(f"parsing {what}: invalid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ImageError(f"parsing {what}: want a JSON object, got {type(obj).__name__}")
    return obj


# --- field helpers ----------------------------------------------------------------------------


def _str(obj: JSON, key: str, *, what: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ImageError(f"parsing {what}: missing {key}")
        return None
    if not isinstance(value, str):
        raise ImageError(f"parsing {what}: {key} must be a string")
    return value


def _str_list(obj: JSON, key: str, *, what: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"parsing {what}: {key} must be a list of strings")
    return tuple(value)


def _annotations(obj: JSON, *, what: str) -> dict[str, str]:
    value = obj.get("annotations")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImageError(f"parsing {what}: annotations must map strings to strings")
    return dict(value)


def parse_digest(value: object, *, what: str) -> Digest:
    """A Digest from untrusted JSON; a bad one is an ImageError (not a usage error)."""
    if not isinstance(value, str):
        raise ImageError(f"parsing {what}: digest must be a string")
    try:
        return Digest.parse(value)
    except InvalidReference as exc:
        raise ImageError(f"parsing {what}: invalid digest {value!r}") from exc


def _extra(obj: JSON, known_keys: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known_keys}


# --- Platform ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Platform:
    """An image platform: ``os``/``architecture``[/``variant``] plus OS version and features."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as given to ``--platform``; raise UsageError if malformed."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"parsing platform {text!r}: want OS/ARCH[/VARIANT], e.g. linux/arm64/v8")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, obj: object, *, what: str) -> Platform:
        if not isinstance(obj, dict):
            raise ImageError(f"parsing {what}: platform must be an object")
        os_ = _str(obj, "os", what=what)
        arch = _str(obj, "architecture", what=what)
        assert os_ is not None and arch is not None
        return cls(
            os=os_,
            architecture=arch,
            variant=_str(obj, "variant", what=what, required=False) or None,
            os_version=_str(obj, "os.version", what=what, required=False) or None,
            os_features=_str_list(obj, "os.features", what=what),
            features=_str_list(obj, "features", what=what),
        )

    def to_json(self) -> JSON:
        # Field order of image-spec's Go ``Platform`` struct.
        out: JSON = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        if self.features:
            out["features"] = list(self.features)
        return out

    def with_os_feature(self, feature: str) -> Platform:
        """This platform with ``feature`` in ``os.features`` (added once, at the end)."""
        if feature in self.os_features:
            return self
        return replace(self, os_features=(*self.os_features, feature))

    def _norm_variant(self) -> str | None:
        # containerd's normalisation: arm64 without a variant is v8.
        if self.architecture == "arm64" and self.variant in (None, "v8"):
            return "v8"
        return self.variant

    def matches(self, want: Platform) -> bool:
        """Whether this platform satisfies the filter ``want`` (variant only if ``want`` has one)."""
        if (self.os, self.architecture) != (want.os, want.architecture):
            return False
        return want.variant is None or self._norm_variant() == want._norm_variant()

    @property
    def is_unknown(self) -> bool:
        """``unknown/unknown``: how BuildKit marks attestation manifests."""
        return self.os == "unknown" and self.architecture == "unknown"

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return text + f"/{self.variant}" if self.variant else text


# --- Descriptor -------------------------------------------------------------------------------

_DESCRIPTOR_KEYS = frozenset({"mediaType", "digest", "size", "urls", "annotations", "platform",
                              "artifactType"})


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor. ``media_type`` is a ``MediaType`` member when known, else the raw
    string. ``extra`` keeps fields we do not model (e.g. ``data``) for faithful re-serialisation.
    Mapping fields make instances unhashable; compare them, do not put them in sets."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def known_type(self) -> MediaType | None:
        return known(self.media_type)

    @classmethod
    def from_json(cls, obj: object, *, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ImageError(f"parsing {what}: descriptor must be an object")
        media_type = _str(obj, "mediaType", what=what)
        assert media_type is not None
        size = obj.get("size")
        if isinstance(size, bool) or not isinstance(size, int):
            raise ImageError(f"parsing {what}: size must be an integer")
        if size < 0:
            raise ImageError(f"parsing {what}: size must not be negative")
        platform = obj.get("platform")
        return cls(
            media_type=parse_media_type(media_type),
            digest=parse_digest(obj.get("digest"), what=what),
            size=size,
            annotations=_annotations(obj, what=what),
            platform=None if platform is None else Platform.from_json(platform, what=f"{what}.platform"),
            urls=_str_list(obj, "urls", what=what),
            artifact_type=_str(obj, "artifactType", what=what, required=False),
            extra=_extra(obj, _DESCRIPTOR_KEYS),
        )

    def to_json(self) -> JSON:
        # Field order of image-spec's Go ``Descriptor`` struct; unknown fields follow.
        out: JSON = {"mediaType": str(self.media_type), "digest": str(self.digest), "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        out.update(self.extra)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


def descriptor_for(data: bytes, media_type: str, **kwargs: Any) -> Descriptor:
    """The descriptor of the blob ``data``."""
    return Descriptor(media_type=media_type, digest=Digest.from_bytes(data), size=len(data), **kwargs)


# --- Manifest and Index -----------------------------------------------------------------------

_MANIFEST_KEYS = frozenset({"schemaVersion", "mediaType", "artifactType", "config", "layers",
                            "subject", "annotations"})
_INDEX_KEYS = frozenset({"schemaVersion", "mediaType", "artifactType", "manifests", "subject",
                         "annotations"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI, or Docker schema 2 which has the same shape)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JSON:
        out: JSON = {"schemaVersion": 2, "mediaType": str(self.media_type)}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        out.update(self.extra)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (OCI) or manifest list (Docker)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JSON:
        out: JSON = {"schemaVersion": 2, "mediaType": str(self.media_type)}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["manifests"] = [m.to_json() for m in self.manifests]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        out.update(self.extra)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


def _kind(obj: JSON, header: str | None, *, what: str) -> MediaType:
    """Which document this is, from the body's mediaType, the transport's, or its shape."""
    body = obj.get("mediaType")
    if body is not None and not isinstance(body, str):
        raise ImageError(f"parsing {what}: mediaType must be a string")
    body_type = known(body) if body else None
    header_type = known(header) if header else None
    for t in (body_type, header_type):
        if t is not None and t.is_schema1:
            raise UnsupportedMediaType(f"parsing {what}: {SCHEMA1_MESSAGE}")
    if obj.get("schemaVersion") == 1:
        raise UnsupportedMediaType(f"parsing {what}: {SCHEMA1_MESSAGE}")
    if obj.get("schemaVersion") != 2:
        raise ImageError(f"parsing {what}: schemaVersion must be 2, got {obj.get('schemaVersion')!r}")
    if body and body_type is None:
        raise UnsupportedMediaType(f"parsing {what}: unsupported media type {body}")
    if body_type is not None and not (body_type.is_index or body_type.is_manifest):
        raise UnsupportedMediaType(f"parsing {what}: {body_type.value} is not a manifest or index")
    # A registry's Content-Type only counts when it names a manifest kind; some serve
    # application/json or text/plain.
    if header_type is not None and not (header_type.is_index or header_type.is_manifest):
        header_type = None
    if body_type is not None and header_type is not None and body_type != header_type:
        raise ImageError(f"parsing {what}: mediaType {body_type.value} contradicts {header_type.value}")
    kind = body_type or header_type
    if kind is None:
        # OCI allows leaving mediaType out; fall back to the document's shape.
        if "manifests" in obj:
            kind = MediaType.OCI_INDEX
        elif "config" in obj or "layers" in obj:
            kind = MediaType.OCI_MANIFEST
        else:
            raise ImageError(f"parsing {what}: neither a manifest nor an index")
    if kind.is_index and "manifests" not in obj:
        raise ImageError(f"parsing {what}: missing manifests")
    if kind.is_manifest and "manifests" in obj:
        raise ImageError(f"parsing {what}: a {kind.value} must not have manifests")
    return kind


def _verify_digest(data: bytes, digest: Digest | None, *, what: str) -> None:
    if digest is None:
        return
    got = hashlib.new(digest.algorithm, data).hexdigest()
    if got != digest.hex:
        raise ImageError(f"parsing {what}: content has digest {digest.algorithm}:{got}, want {digest}")


def parse_manifest(
    data: bytes, media_type: str | None = None, *, digest: Digest | None = None, what: str = "manifest"
) -> Manifest | Index:
    """Parse a manifest or an index from ``data``.

    ``media_type`` is what the transport said (Content-Type, or a descriptor's mediaType);
    ``digest``, when known, is checked against the bytes, and an index may not list itself.
    """
    _verify_digest(data, digest, what=what)
    obj = load_json_object(data, what=what, limit=MAX_MANIFEST_SIZE)
    kind = _kind(obj, media_type, what=what)
    subject = obj.get("subject")
    subj = None if subject is None else Descriptor.from_json(subject, what=f"{what}: subject")
    annotations = _annotations(obj, what=what)
    artifact_type = _str(obj, "artifactType", what=what, required=False)
    if kind.is_index:
        entries = obj["manifests"]
        if not isinstance(entries, list):
            raise ImageError(f"parsing {what}: manifests must be a list")
        manifests = tuple(
            Descriptor.from_json(e, what=f"{what}: manifests[{i}]") for i, e in enumerate(entries)
        )
        if digest is not None:
            for i, m in enumerate(manifests):
                if m.digest == digest:
                    raise ImageError(f"parsing {what}: manifests[{i}] refers to the index itself")
        return Index(media_type=kind, manifests=manifests, annotations=annotations, subject=subj,
                     artifact_type=artifact_type, extra=_extra(obj, _INDEX_KEYS))
    if "config" not in obj:
        raise ImageError(f"parsing {what}: missing config")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"parsing {what}: layers must be a list")
    return Manifest(
        media_type=kind,
        config=Descriptor.from_json(obj["config"], what=f"{what}: config"),
        layers=tuple(Descriptor.from_json(e, what=f"{what}: layers[{i}]") for i, e in enumerate(layers)),
        annotations=annotations,
        subject=subj,
        artifact_type=artifact_type,
        extra=_extra(obj, _MANIFEST_KEYS),
    )


def parse_image_manifest(
    data: bytes, media_type: str | None = None, *, digest: Digest | None = None, what: str = "manifest"
) -> Manifest:
    """Like ``parse_manifest`` but an index is an error."""
    doc = parse_manifest(data, media_type, digest=digest, what=what)
    if not isinstance(doc, Manifest):
        raise ImageError(f"parsing {what}: want an image manifest, got an index")
    return doc


def parse_index(
    data: bytes, media_type: str | None = None, *, digest: Digest | None = None, what: str = "index"
) -> Index:
    """Like ``parse_manifest`` but an image manifest is an error."""
    doc = parse_manifest(data, media_type, digest=digest, what=what)
    if not isinstance(doc, Index):
        raise ImageError(f"parsing {what}: want an index, got an image manifest")
    return doc


# --- Config -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """A parsed image config: the raw dict (never re-serialised through a lossy model) plus
    validated accessors. Treat ``raw`` as read-only; ``rewrite`` works on a deep copy."""

    raw: Mapping[str, Any]
    diff_ids: tuple[Digest, ...]

    @property
    def platform(self) -> Platform:
        raw = self.raw
        features = raw.get("os.features")
        variant = raw.get("variant")
        os_version = raw.get("os.version")
        return Platform(
            os=str(raw["os"]),
            architecture=str(raw["architecture"]),
            variant=variant if isinstance(variant, str) and variant else None,
            os_version=os_version if isinstance(os_version, str) and os_version else None,
            os_features=tuple(features) if isinstance(features, list) else (),
        )


def parse_config(data: bytes, *, descriptor: Descriptor | None = None, what: str = "config") -> ImageConfig:
    """Parse and check an image config; with ``descriptor``, its digest and size must match."""
    if descriptor is not None:
        if len(data) != descriptor.size:
            raise ImageError(f"parsing {what}: {len(data)} bytes, but the manifest says {descriptor.size}")
        _verify_digest(data, descriptor.digest, what=what)
    raw = load_json_object(data, what=what, limit=MAX_CONFIG_SIZE)
    for key in ("os", "architecture"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ImageError(f"parsing {what}: missing {key}")
    features = raw.get("os.features")
    if features is not None and (not isinstance(features, list) or
                                 not all(isinstance(f, str) for f in features)):
        raise ImageError(f"parsing {what}: os.features must be a list of strings")
    rootfs = raw.get("rootfs")
    diff_ids: tuple[Digest, ...] = ()
    if rootfs is not None:
        if not isinstance(rootfs, dict):
            raise ImageError(f"parsing {what}: rootfs must be an object")
        ids = rootfs.get("diff_ids", [])
        if not isinstance(ids, list):
            raise ImageError(f"parsing {what}: rootfs.diff_ids must be a list")
        diff_ids = tuple(parse_digest(d, what=f"{what}: rootfs.diff_ids[{i}]") for i, d in enumerate(ids))
    return ImageConfig(raw=raw, diff_ids=diff_ids)
