"""Pure rewrite rules: source config/manifest/index plus new EROFS layers → what we push.

No I/O and no logging here: every function takes bytes or models and returns bytes or models,
so each rule of docs/oci-layers.md §1 is a table-driven unit test. Decisions the
caller should log (index entries dropped) are returned as data (``IndexPlan.dropped``).

The rules, with their spec sections:

* config (§5.1, §5.2, §5.4, §9): ``os.features`` gains ``"erofs"`` once; ``rootfs.type`` is
  ``"layers"``; ``rootfs.diff_ids`` are the new layers' DiffIDs — for a raw blob its own
  digest, also with EROFS-internal compression (spec §5.2, docs/oci-layers.md D-2: never apko's "twin" digest); every
  other key, ``history`` included, is kept in its original order.
* manifest (§4, §9): always ``application/vnd.oci.image.manifest.v1+json`` (Docker schema 2
  inputs too); layer media type from the profile; with profile ``spec``,
  ``org.erofs.role=overlay-lower`` on every layer but the last (§2.4, D-3); provenance
  annotations under ``io.github.erofs-converter.*`` and no timestamps, so a rerun gives the
  same digest and a mirror job can tell what an image was made from. Nothing about *where*
  the source was read from (registry host, proxy, tag or digest spelling, layout path) is
  hashed: the output is a function of the source content and the options alone.
* index (§6, D-13): entries carry ``erofs`` in ``platform.os.features``; without merging only
  the EROFS manifests remain; with ``merge`` the source entries stay and each EROFS manifest
  follows its platform's tar manifest. Attestations and unknown entries are dropped unless
  merging.
* foreign / non-distributable layers are refused (D-14).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from converter.errors import ImageError, InvalidReference, UnsupportedMediaType
from converter.oci.mediatypes import MediaType, Profile
from converter.oci.model import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    canonical_json,
    descriptor_for,
    parse_config,
)
from converter.reference import Digest

EROFS_FEATURE = "erofs"
ROLE_ANNOTATION = "org.erofs.role"
ROLE_OVERLAY_LOWER = "overlay-lower"
UNCOMPRESSED_DIGEST_ANNOTATION = "org.erofs.uncompressed-digest"

ANNOTATION_PREFIX = "io.github.erofs-converter."
ANN_SOURCE_DIGEST = ANNOTATION_PREFIX + "source.digest"
ANN_FORMAT = ANNOTATION_PREFIX + "format"
ANN_PROFILE = ANNOTATION_PREFIX + "profile"
ANN_VERSION = ANNOTATION_PREFIX + "version"
ANN_PLATFORMS = ANNOTATION_PREFIX + "platforms"
ANN_BUILDER = ANNOTATION_PREFIX + "builder"
ANN_BUILD_TIME = ANNOTATION_PREFIX + "build-time"
ALL_PLATFORMS = "all"
ANN_BLOB_ENCODING = ANNOTATION_PREFIX + "blob-encoding"

# BuildKit marks provenance/SBOM manifests this way (and gives them platform unknown/unknown).
DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"
ATTESTATION_MANIFEST = "attestation-manifest"


@dataclass(frozen=True, slots=True)
class Provenance:
    """What an EROFS image was made from, and everything in the request that decides its bytes
    (format, profile, tool version, the platform selection, the builder and the build time);
    written as manifest/index annotations, so a rerun with a different request is never taken
    for "already converted". Content only: the source digest, never its location or reference
    spelling (those are logged and reported, not hashed), so every route to the same source
    gives one digest."""

    source_digest: Digest
    fmt: str
    profile: Profile
    version: str
    platforms: str = ALL_PLATFORMS  # the --platform selection, sorted and comma-separated, or "all"
    builder: str = "python"
    build_time: int = 0
    encoding: str = "none"  # BlobEncoding.canonical(); recorded only when not "none"

    def annotations(self) -> dict[str, str]:
        out = {
            ANN_SOURCE_DIGEST: str(self.source_digest),
            ANN_FORMAT: self.fmt,
            ANN_PROFILE: self.profile.value,
            ANN_VERSION: self.version,
            ANN_PLATFORMS: self.platforms,
            ANN_BUILDER: self.builder,
            ANN_BUILD_TIME: str(self.build_time),
        }
        if self.encoding != "none":
            out[ANN_BLOB_ENCODING] = self.encoding
        return out

    def differs(self, other: Provenance) -> str:
        """Why a conversion with provenance ``other`` is not what this one asks for ("" if it is),
        the source digest aside."""
        for what, mine, theirs in (("format", self.fmt, other.fmt), ("profile", self.profile.value,
                                   other.profile.value), ("erofs-converter version", self.version, other.version),
                                   ("platforms", self.platforms, other.platforms), ("builder", self.builder,
                                   other.builder), ("build time", str(self.build_time), str(other.build_time)),
                                   ("blob encoding", self.encoding, other.encoding)):
            if mine != theirs:
                return f"made with {what} {theirs}, want {mine}"
        return ""

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> Provenance | None:
        """The provenance recorded by an earlier run, or None if absent or unreadable."""
        try:
            return cls(
                source_digest=Digest.parse(annotations[ANN_SOURCE_DIGEST]),
                fmt=annotations[ANN_FORMAT],
                profile=Profile(annotations[ANN_PROFILE]),
                version=annotations[ANN_VERSION],
                # Absent in conversions by older versions: never equal to a request's.
                platforms=annotations.get(ANN_PLATFORMS, "unknown"),
                builder=annotations.get(ANN_BUILDER, "unknown"),
                build_time=int(annotations.get(ANN_BUILD_TIME, "-1")),
                encoding=annotations.get(ANN_BLOB_ENCODING, "none"),
            )
        except (KeyError, ValueError, InvalidReference):
            return None


def platform_selection(platforms: Sequence[Platform]) -> str:
    """A ``--platform`` selection as recorded in the provenance: sorted, comma-separated, or "all"."""
    return ",".join(sorted({str(p) for p in platforms})) or ALL_PLATFORMS


@dataclass(frozen=True, slots=True)
class NewLayer:
    """A converted layer blob. ``uncompressed_digest`` is only for a zstd-wrapped blob, whose
    DiffID is the digest of the decompressed image (§5.2); a raw blob's DiffID is its digest."""

    digest: Digest
    size: int
    zstd: bool = False
    uncompressed_digest: Digest | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)  # verity, chunk index (§2.3)

    def __post_init__(self) -> None:
        if self.zstd and self.uncompressed_digest is None:
            raise ValueError("a zstd-wrapped layer needs its uncompressed digest")
        if not self.zstd and self.uncompressed_digest is not None:
            raise ValueError("a raw layer's DiffID is its digest; give no uncompressed digest")

    @property
    def diff_id(self) -> Digest:
        return self.uncompressed_digest if self.uncompressed_digest is not None else self.digest


# --- checks on the source ---------------------------------------------------------------------


def check_source_layers(manifest: Manifest, *, image: str) -> None:
    """Refuse layers we cannot convert: foreign/non-distributable (D-14), non-tar, already EROFS."""
    for i, layer in enumerate(manifest.layers):
        mt = layer.known_type
        where = f"converting {image}: layer {i} ({layer.digest})"
        if mt is not None and mt.is_foreign:
            raise UnsupportedMediaType(
                f"{where}: non-distributable/foreign layer {mt.value} cannot be converted "
                "(it may only be fetched from its URLs, and EROFS has no non-distributable type)"
            )
        if mt is not None and mt.is_erofs_layer:
            raise UnsupportedMediaType(f"{where}: already an EROFS layer ({mt.value})")
        if mt is None or not mt.is_tar_layer:
            raise UnsupportedMediaType(f"{where}: unsupported layer media type {layer.media_type}")


# --- config -----------------------------------------------------------------------------------


def _insert_after(raw: dict[str, Any], key: str, value: Any, *, after: Sequence[str]) -> dict[str, Any]:
    """``raw`` with ``key`` set; a new key goes after the last of ``after`` present, else last."""
    if key in raw:
        out = dict(raw)
        out[key] = value
        return out
    anchor = next((a for a in reversed(after) if a in raw), None)
    out = {}
    for k, v in raw.items():
        out[k] = v
        if k == anchor:
            out[key] = value
    if anchor is None:
        out[key] = value
    return out


def rewrite_config(config: bytes, *, descriptor: Descriptor, layers: Sequence[NewLayer],
                   source_layers: int, image: str = "image") -> bytes:
    """The EROFS image's config from the source config bytes.

    ``descriptor`` is the source manifest's config descriptor (digest and size are checked);
    ``source_layers`` the number of source layers, which ``rootfs.diff_ids`` must match.
    """
    what = f"config of {image}"
    cfg = parse_config(config, descriptor=descriptor, what=what)
    if len(cfg.diff_ids) != source_layers:
        raise ImageError(f"parsing {what}: rootfs.diff_ids has {len(cfg.diff_ids)} entries "
                         f"but the manifest has {source_layers} layers")
    if len(layers) != source_layers:
        raise ImageError(f"rewriting {what}: {len(layers)} converted layers "
                         f"for {source_layers} source layers")
    raw: dict[str, Any] = copy.deepcopy(dict(cfg.raw))
    features = list(raw.get("os.features") or [])
    if EROFS_FEATURE not in features:
        features.append(EROFS_FEATURE)
    # Where image-spec's Go struct puts os.features: after os / os.version.
    raw = _insert_after(raw, "os.features", features, after=("os", "os.version"))
    rootfs = dict(raw.get("rootfs") or {})
    rootfs["type"] = "layers"
    rootfs["diff_ids"] = [str(layer.diff_id) for layer in layers]
    raw["rootfs"] = rootfs
    return canonical_json(raw)


# --- manifest ---------------------------------------------------------------------------------


def layer_descriptors(layers: Sequence[NewLayer], *, profile: Profile) -> tuple[Descriptor, ...]:
    """The manifest's layer descriptors: profile media type, roles (§2.4), DiffID annotation."""
    out = []
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        annotations: dict[str, str] = dict(layer.annotations)
        if profile.uses_roles and i != last:
            annotations[ROLE_ANNOTATION] = ROLE_OVERLAY_LOWER
        if layer.zstd:
            # §8.1-7: every +zstd layer carries its DiffID (docs/blob-encoding.md); consumers that do not know the
            # key ignore it (§2.3), so the containerd profiles get it too.
            annotations[UNCOMPRESSED_DIGEST_ANNOTATION] = str(layer.diff_id)
        out.append(Descriptor(media_type=profile.layer_media_type(zstd=layer.zstd), digest=layer.digest,
                              size=layer.size, annotations=annotations))
    return tuple(out)


def build_manifest(source: Manifest, *, config: bytes, layers: Sequence[NewLayer], profile: Profile,
                   provenance: Provenance, subject: Descriptor | None = None) -> Manifest:
    """The EROFS manifest: OCI media types, new config and layers, source annotations kept
    (except ours, which are replaced). ``subject`` is the source manifest's descriptor when the
    conversion is published as its referrer (``converter.oci.referrers``); the source's own
    subject is never copied (it is not ours)."""
    annotations = {k: v for k, v in source.annotations.items() if not k.startswith(ANNOTATION_PREFIX)}
    annotations.update(provenance.annotations())
    return Manifest(
        media_type=MediaType.OCI_MANIFEST,
        config=descriptor_for(config, MediaType.OCI_CONFIG),
        layers=layer_descriptors(layers, profile=profile),
        annotations=annotations,
        subject=subject,
    )


# --- index ------------------------------------------------------------------------------------


def is_attestation(desc: Descriptor) -> bool:
    """BuildKit attestation manifests (provenance, SBOM)."""
    return desc.annotations.get(DOCKER_REFERENCE_TYPE) == ATTESTATION_MANIFEST


def is_erofs_entry(desc: Descriptor) -> bool:
    """An index entry that already points at an EROFS manifest."""
    return desc.platform is not None and EROFS_FEATURE in desc.platform.os_features


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """Which index entries to convert, and which the new index drops and why."""

    convert: tuple[Descriptor, ...]
    dropped: tuple[tuple[Descriptor, str], ...] = ()


def plan_index(index: Index, *, platforms: Sequence[Platform] = (), merge: bool = False,
               image: str = "image") -> IndexPlan:
    """Choose the entries of ``index`` to convert.

    An entry is converted if it is an image manifest for a real platform that matches
    ``platforms`` (all, when empty). Everything else is *dropped* from a non-merged index, with
    a reason: attestations, unknown/unknown or platform-less entries, nested indexes, unknown
    media types, already-EROFS entries, platforms filtered out. With ``merge`` nothing is
    dropped except EROFS entries for a platform we convert again (they are superseded).
    """
    convert: list[Descriptor] = []
    dropped: list[tuple[Descriptor, str]] = []
    skipped: list[tuple[Descriptor, str]] = []
    for desc in index.manifests:
        mt = desc.known_type
        reason = None
        if is_attestation(desc):
            reason = "attestation manifest"
        elif mt is None or not (mt.is_manifest or mt.is_index):
            reason = f"unsupported media type {desc.media_type}"
        elif mt.is_index:
            reason = "nested index"
        elif desc.platform is None:
            reason = "no platform"
        elif desc.platform.is_unknown:
            reason = "platform unknown/unknown"
        elif is_erofs_entry(desc):
            reason = "already an EROFS manifest"
        elif platforms and not any(desc.platform.matches(p) for p in platforms):
            reason = f"platform {desc.platform} not selected"
        if reason is None:
            convert.append(desc)
        else:
            skipped.append((desc, reason))
    if not convert:
        wanted = ", ".join(str(p) for p in platforms) or "any platform"
        present = sorted({str(d.platform) for d, why in skipped if why.endswith(" not selected")})
        has = f"; it has {', '.join(present)}" if present else ""
        raise ImageError(f"converting {image}: no image manifest for {wanted} in the index{has}")
    if merge:
        converted_platforms = [d.platform for d in convert]
        for desc, _reason in skipped:
            if is_erofs_entry(desc) and any(_same_platform(desc.platform, p) for p in converted_platforms):
                dropped.append((desc, "superseded EROFS manifest"))
    else:
        dropped = skipped
    return IndexPlan(convert=tuple(convert), dropped=tuple(dropped))


def _same_platform(a: Platform | None, b: Platform | None) -> bool:
    if a is None or b is None:
        return False
    plain = replace(b, os_features=(), features=())
    return a.matches(plain) and plain.matches(replace(a, os_features=(), features=()))


@dataclass(frozen=True, slots=True)
class ConvertedEntry:
    """One converted platform: the source entry (as listed in the source index, or made up for a
    single-manifest source) and the new EROFS manifest's descriptor."""

    source: Descriptor
    manifest: Descriptor


def erofs_entry(manifest: bytes, *, platform: Platform) -> Descriptor:
    """The index entry for an EROFS manifest: ``erofs`` in ``platform.os.features`` (§6)."""
    return descriptor_for(manifest, MediaType.OCI_MANIFEST, platform=platform.with_os_feature(EROFS_FEATURE))


def build_index(source: Index | None, converted: Sequence[ConvertedEntry], *, plan: IndexPlan | None = None,
                merge: bool = False, provenance: Provenance, subject: Descriptor | None = None) -> Index:
    """The new index.

    Without ``merge``: the EROFS entries, in source order. With ``merge``: the source entries
    (minus ``plan.dropped``), each converted platform's EROFS entry right after its tar entry
    (§6: tar first, so clients that take the first match still get tar). ``source`` None means
    the source was a single manifest (then ``merge`` lists it first, then the EROFS one).
    ``subject``: the source index's (or manifest's) descriptor, as for ``build_manifest``.
    """
    if not converted:
        raise ImageError("building index: no converted manifests")
    annotations: dict[str, str] = {}
    if source is not None:
        annotations = {k: v for k, v in source.annotations.items() if not k.startswith(ANNOTATION_PREFIX)}
    annotations.update(provenance.annotations())
    if not merge:
        entries = [c.manifest for c in converted]
    else:
        after = {str(c.source.digest): c.manifest for c in converted}
        dropped = {str(d.digest) for d, _ in (plan.dropped if plan else ())}
        listed = list(source.manifests) if source is not None else [c.source for c in converted]
        entries = []
        for desc in listed:
            if str(desc.digest) in dropped:
                continue
            entries.append(desc)
            new = after.pop(str(desc.digest), None)
            if new is not None:
                entries.append(new)
        if after:
            raise ImageError("building index: converted manifests missing from the source index: "
                             + ", ".join(after))
    return Index(media_type=MediaType.OCI_INDEX, manifests=tuple(entries), annotations=annotations,
                 subject=subject)


__all__ = [
    "ANNOTATION_PREFIX",
    "ANN_BLOB_ENCODING",
    "ANN_FORMAT",
    "ANN_PROFILE",
    "ANN_SOURCE_DIGEST",
    "ANN_VERSION",
    "EROFS_FEATURE",
    "ROLE_ANNOTATION",
    "ROLE_OVERLAY_LOWER",
    "ConvertedEntry",
    "IndexPlan",
    "NewLayer",
    "Provenance",
    "build_index",
    "build_manifest",
    "check_source_layers",
    "erofs_entry",
    "is_attestation",
    "is_erofs_entry",
    "layer_descriptors",
    "plan_index",
    "rewrite_config",
]
