"""OCI 1.1 referrers, pure: the subject descriptor, a referrer's list entry, the fallback tag index.

A converted manifest names its source as ``subject`` (image-spec 1.1 ``manifest.md``), so
registries list the conversion among the source's referrers. Where a registry lacks the
referrers API, the distribution spec's fallback is a tag ``<alg>-<hex>`` holding an image
index of the referrers, which each client pushing a referrer maintains (``referrers_tag``,
``with_referrer``). The I/O side is ``converter.transports.referrers``.
"""

from __future__ import annotations

from converter.errors import ImageError
from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor, Index, Manifest, parse_manifest
from converter.reference import Digest


def referrers_tag(subject: Digest) -> str:
    """The distribution spec's referrers tag schema: ``<alg>-<ref>`` (``sha256-<64 hex>``)."""
    return f"{subject.algorithm}-{subject.hex}"


def subject_descriptor(media_type: str, digest: Digest, size: int) -> Descriptor:
    """The ``subject`` of a converted manifest: the source manifest's media type, digest and size
    only (no platform, no annotations: those belong to the source index, not to the source)."""
    return Descriptor(media_type=media_type, digest=digest, size=size)


def referrer_entry(data: bytes, media_type: str) -> Descriptor:
    """The descriptor of a pushed referrer as the referrers list shows it (distribution spec,
    "pushing manifests with subject"): ``artifactType`` from the manifest, else its config's
    media type; every annotation of the manifest."""
    doc = parse_manifest(data, media_type, what="referrer manifest")
    artifact_type = doc.artifact_type
    if artifact_type is None and isinstance(doc, Manifest):
        artifact_type = str(doc.config.media_type)
    return Descriptor(media_type=str(doc.media_type), digest=Digest.from_bytes(data), size=len(data),
                      annotations=dict(doc.annotations), artifact_type=artifact_type)


def parse_referrers(data: bytes, media_type: str, *, what: str) -> Index:
    """A referrers list (from the API or the fallback tag); anything but an image index is an error."""
    doc = parse_manifest(data, media_type, what=what)
    if not isinstance(doc, Index) or doc.media_type != MediaType.OCI_INDEX:
        raise ImageError(f"reading {what}: not an OCI image index ({doc.media_type}); "
                         "refusing to overwrite it")
    return doc


def lists(index: Index, digest: Digest) -> bool:
    """Whether the referrers list ``index`` has an entry for ``digest``."""
    return any(m.digest == digest for m in index.manifests)


def with_referrer(index: Index | None, entry: Descriptor) -> Index:
    """``index`` (None: an empty list) with ``entry`` appended unless already listed."""
    if index is None:
        return Index(media_type=MediaType.OCI_INDEX, manifests=(entry,))
    if lists(index, entry.digest):
        return index
    return Index(media_type=MediaType.OCI_INDEX, manifests=(*index.manifests, entry),
                 annotations=index.annotations, extra=index.extra)


__all__ = ["lists", "parse_referrers", "referrer_entry", "referrers_tag", "subject_descriptor", "with_referrer"]
