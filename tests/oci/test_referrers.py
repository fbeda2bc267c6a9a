"""The pure referrers rules: subject, list entry, fallback tag name and index."""

from __future__ import annotations

import pytest

from converter.errors import ImageError
from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor, Index, Manifest, descriptor_for
from converter.oci.referrers import (
    lists,
    parse_referrers,
    referrer_entry,
    referrers_tag,
    subject_descriptor,
    with_referrer,
)
from converter.reference import Digest


def dg(n: int) -> Digest:
    return Digest("sha256", f"{n:064x}")


def test_tag_schema() -> None:
    assert referrers_tag(dg(1)) == "sha256-" + "0" * 63 + "1"


def test_subject_is_media_type_digest_size_only() -> None:
    assert subject_descriptor(MediaType.DOCKER_MANIFEST.value, dg(2), 42).to_json() == {
        "mediaType": MediaType.DOCKER_MANIFEST.value, "digest": str(dg(2)), "size": 42}


def test_entry_takes_config_type_and_all_annotations() -> None:
    manifest = Manifest(media_type=MediaType.OCI_MANIFEST, config=descriptor_for(b"{}", MediaType.OCI_CONFIG),
                        layers=(), annotations={"a": "1", "b": "2"},
                        subject=Descriptor(MediaType.OCI_MANIFEST, dg(3), 9))
    data = manifest.to_bytes()
    entry = referrer_entry(data, MediaType.OCI_MANIFEST)
    assert entry == Descriptor(MediaType.OCI_MANIFEST, Digest.from_bytes(data), len(data),
                               annotations={"a": "1", "b": "2"}, artifact_type=MediaType.OCI_CONFIG.value)
    index = Index(media_type=MediaType.OCI_INDEX, manifests=(), annotations={"c": "3"})
    assert referrer_entry(index.to_bytes(), MediaType.OCI_INDEX).artifact_type is None


def test_with_referrer_appends_once() -> None:
    a, b = Descriptor(MediaType.OCI_MANIFEST, dg(4), 1), Descriptor(MediaType.OCI_MANIFEST, dg(5), 1)
    one = with_referrer(None, a)
    two = with_referrer(one, b)
    assert [m.digest for m in two.manifests] == [dg(4), dg(5)]
    assert with_referrer(two, a) == two and lists(two, dg(5)) and not lists(one, dg(5))


def test_a_tag_that_is_not_an_index_is_refused() -> None:
    manifest = Manifest(media_type=MediaType.OCI_MANIFEST, config=descriptor_for(b"{}", MediaType.OCI_CONFIG),
                        layers=())
    with pytest.raises(ImageError, match="not an OCI image index"):
        parse_referrers(manifest.to_bytes(), MediaType.OCI_MANIFEST, what="referrers tag x")
