"""Structure checks of a converted image: the EROFS OCI layer spec (draft) producer checklist (§1, §8.1).

Each check looks at the manifest, the config, the index entry and the facts measured while
the layer blobs were read (their digests and sizes); none reads a layer's files. Annotation
checks are a table keyed by annotation name (``ANNOTATION_CHECKS``) and whole-layer checks a
list (``LAYER_CHECKS``), so checks for new annotations (chunk indexes, dm-verity) plug in
without touching the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from converter.errors import UnsupportedMediaType
from converter.oci.mediatypes import MediaType, Profile, known
from converter.oci.model import Descriptor, ImageConfig, Manifest
from converter.oci.rewrite import (
    ANNOTATION_PREFIX,
    EROFS_FEATURE,
    ROLE_ANNOTATION,
    ROLE_OVERLAY_LOWER,
    UNCOMPRESSED_DIGEST_ANNOTATION,
    Provenance,
)
from converter.reference import Digest
from converter.verify.report import Problem

#: Roles the draft spec defines (§2.4).
ROLES = frozenset({"device", ROLE_OVERLAY_LOWER, "overlay-data"})
_PROFILE_OF_TYPE: Mapping[MediaType, tuple[Profile, bool]] = {
    MediaType.EROFS: (Profile.SPEC, False),
    MediaType.EROFS_ZSTD: (Profile.SPEC, True),
    MediaType.OCI_LAYER_EROFS: (Profile.CONTAINERD_21, False),
    MediaType.EROFS_LAYER_V1: (Profile.CONTAINERD_23, False),
    MediaType.EROFS_LAYER_V1_ZSTD: (Profile.CONTAINERD_23, True),
}


@dataclass(frozen=True, slots=True)
class LayerFacts:
    """What reading one layer blob measured."""

    index: int
    count: int
    descriptor: Descriptor
    blob_digest: Digest | None  # None: the blob could not be read
    blob_size: int
    erofs_digest: Digest | None  # the digest of the EROFS image (after an outer zstd, if any)
    zstd: bool = False
    extra: Mapping[str, object] = field(default_factory=dict)  # for pluggable checks

    @property
    def label(self) -> str:
        return f"layer {self.index + 1}/{self.count} {self.descriptor.digest}"


def layer_profile(desc: Descriptor) -> tuple[Profile, bool] | None:
    """The profile a layer media type belongs to and whether it is zstd-wrapped; None if not EROFS."""
    mt = known(desc.media_type)
    return None if mt is None else _PROFILE_OF_TYPE.get(mt)


def image_profile(manifest: Manifest) -> Profile | None:
    """The profile recorded in the provenance, else the one the first layer's type implies."""
    prov = Provenance.from_annotations(manifest.annotations)
    if prov is not None:
        return prov.profile
    for layer in manifest.layers:
        found = layer_profile(layer)
        if found is not None:
            return found[0]
    return None


# --- annotations (pluggable) ------------------------------------------------------------------

AnnotationCheck = Callable[[LayerFacts, str], Iterator[tuple[str, str, str]]]  # (what, got, want)


def _check_role(facts: LayerFacts, value: str) -> Iterator[tuple[str, str, str]]:
    if value not in ROLES:
        yield f"annotation {ROLE_ANNOTATION} is not a known role", value, " | ".join(sorted(ROLES))


def _check_uncompressed_digest(facts: LayerFacts, value: str) -> Iterator[tuple[str, str, str]]:
    try:
        digest = Digest.parse(value)
    except ValueError:
        yield f"annotation {UNCOMPRESSED_DIGEST_ANNOTATION} is not a digest", value, "sha256:<64 hex>"
        return
    if not facts.zstd:
        yield f"annotation {UNCOMPRESSED_DIGEST_ANNOTATION} on a layer that is not zstd-wrapped", value, ""
    elif facts.erofs_digest is not None and digest != facts.erofs_digest:
        yield f"annotation {UNCOMPRESSED_DIGEST_ANNOTATION}", value, str(facts.erofs_digest)


ANNOTATION_CHECKS: dict[str, AnnotationCheck] = {
    ROLE_ANNOTATION: _check_role,
    UNCOMPRESSED_DIGEST_ANNOTATION: _check_uncompressed_digest,
}

#: Whole-layer checks beyond annotations (chunk index framing, dm-verity roots, ...).
LayerCheck = Callable[[LayerFacts], Iterator[tuple[str, str, str]]]
LAYER_CHECKS: list[LayerCheck] = []


# --- the checklist ----------------------------------------------------------------------------


def diff_id(facts: LayerFacts) -> Digest | None:
    """The DiffID the config must list (§5.2): the blob digest, or the EROFS digest under zstd."""
    return facts.erofs_digest if facts.zstd else facts.blob_digest


def check_image(*, platform: str, manifest: Manifest, config: ImageConfig, layers: Sequence[LayerFacts],
                entry: Descriptor | None, profile: Profile | None) -> Iterator[Problem]:
    """Every structural problem of one platform's manifest, config, index entry and layers."""

    def problem(where: str, what: str, got: object = "", want: object = "") -> Problem:
        return Problem(platform=platform, where=where, what=what, got=str(got), want=str(want))

    if manifest.media_type != MediaType.OCI_MANIFEST:
        yield problem("manifest", "media type", manifest.media_type, MediaType.OCI_MANIFEST.value)
    if manifest.config.media_type != MediaType.OCI_CONFIG:
        yield problem("manifest", "config media type", manifest.config.media_type, MediaType.OCI_CONFIG.value)
    if any(k.startswith(ANNOTATION_PREFIX) for k in manifest.annotations) \
            and Provenance.from_annotations(manifest.annotations) is None:
        yield problem("manifest", f"provenance annotations {ANNOTATION_PREFIX}* are incomplete or malformed")
    if not manifest.layers:
        yield problem("manifest", "has no layers")
    if profile is None:
        yield problem("manifest", "no layer has an EROFS media type")
    yield from _check_config(problem, config, layers)
    if entry is not None:
        yield from _check_entry(problem, entry, config)
    for facts in layers:
        yield from _check_layer(problem, facts, profile)


def _check_config(problem: Callable[..., Problem], config: ImageConfig,
                  layers: Sequence[LayerFacts]) -> Iterator[Problem]:
    features = config.raw.get("os.features")
    if not isinstance(features, list) or EROFS_FEATURE not in features:
        yield problem("config", "os.features", features if features is not None else "", f"[..., {EROFS_FEATURE!r}]")
    rootfs = config.raw.get("rootfs")
    rtype = rootfs.get("type") if isinstance(rootfs, dict) else None
    if rtype != "layers":
        yield problem("config", "rootfs.type", rtype or "", "layers")
    if len(config.diff_ids) != len(layers):
        yield problem("config", "rootfs.diff_ids count", len(config.diff_ids), len(layers))
    for facts, listed in zip(layers, config.diff_ids, strict=False):
        want = diff_id(facts)
        if want is not None and listed != want:
            yield problem(f"config, {facts.label}", "diff_id", listed, want)


def _check_entry(problem: Callable[..., Problem], entry: Descriptor, config: ImageConfig) -> Iterator[Problem]:
    if entry.media_type != MediaType.OCI_MANIFEST:
        yield problem("index entry", "media type", entry.media_type, MediaType.OCI_MANIFEST.value)
    plat = entry.platform
    if plat is None:
        yield problem("index entry", "has no platform")
        return
    if EROFS_FEATURE not in plat.os_features:
        yield problem("index entry", "platform.os.features", list(plat.os_features), f"[..., {EROFS_FEATURE!r}]")
    cp = config.platform
    if (plat.os, plat.architecture) != (cp.os, cp.architecture):
        yield problem("index entry", "platform", f"{plat.os}/{plat.architecture}",
                      f"{cp.os}/{cp.architecture} (from the config)")


def _check_layer(problem: Callable[..., Problem], facts: LayerFacts, profile: Profile | None) -> Iterator[Problem]:
    desc = facts.descriptor
    where = facts.label
    found = layer_profile(desc)
    if found is None:
        yield problem(where, "media type is not an EROFS layer type", desc.media_type)
    elif profile is not None:
        try:
            expected = profile.layer_media_type(zstd=found[1]).value
        except UnsupportedMediaType:
            expected = f"{profile.layer_media_type().value} (the profile has no zstd type)"
        if desc.media_type != expected:
            yield problem(where, f"media type for profile {profile.value}", desc.media_type, expected)
    if facts.blob_digest is not None and facts.blob_digest != desc.digest:
        yield problem(where, "blob digest", facts.blob_digest, desc.digest)
    if facts.blob_digest is not None and facts.blob_size != desc.size:
        yield problem(where, "blob size", facts.blob_size, desc.size)
    role = desc.annotations.get(ROLE_ANNOTATION)
    last = facts.index == facts.count - 1
    if profile is not None and profile.uses_roles:
        if not last and role != ROLE_OVERLAY_LOWER:
            yield problem(where, f"annotation {ROLE_ANNOTATION} (a lower layer, §2.4)", role or "", ROLE_OVERLAY_LOWER)
    elif profile is not None and role is not None:
        yield problem(where, f"annotation {ROLE_ANNOTATION} (profile {profile.value} has no roles)", role, "")
    if facts.zstd and UNCOMPRESSED_DIGEST_ANNOTATION not in desc.annotations:
        yield problem(where, f"annotation {UNCOMPRESSED_DIGEST_ANNOTATION} (every +zstd layer, §8.1-7)", "",
                      facts.erofs_digest or "")
    for key, value in desc.annotations.items():
        check = ANNOTATION_CHECKS.get(key)
        if check is not None:
            for what, got, want in check(facts, value):
                yield problem(where, what, got, want)
    for layer_check in LAYER_CHECKS:
        for what, got, want in layer_check(facts):
            yield problem(where, what, got, want)
