"""RegistryClient's own checks under faults a real registry won't produce: manifests (digests,
sizes, schema 1, media types) and tag pagination."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from converter.errors import RegistryError, UnsupportedMediaType
from converter.oci.mediatypes import MediaType
from converter.reference import Digest
from converter.registry.client import MAX_MANIFEST_SIZE
from tests.registry.fake import FakeRegistry, json_bytes
from tests.registry.faults import HOST, failing_hook, make_client

# --- manifests --------------------------------------------------------------------------------


def test_manifest_digest_is_checked_against_the_header() -> None:
    fake = FakeRegistry()
    body = json_bytes({"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST})
    wrong = "sha256:" + "0" * 64
    failing_hook(fake, 1, lambda: httpx.Response(200, content=body, headers={
        "Content-Type": MediaType.OCI_MANIFEST, "Docker-Content-Digest": wrong}))
    with make_client(fake) as client, pytest.raises(RegistryError, match=f"Docker-Content-Digest says {wrong}"):
        client.get_manifest(HOST, "a/b", "v1")


def test_manifest_digest_is_checked_against_the_request() -> None:
    fake = FakeRegistry()
    body = json_bytes({"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST})
    fake.manifests[("a/b", "sha256:" + "1" * 64)] = (body, MediaType.OCI_MANIFEST)
    with make_client(fake) as client, pytest.raises(RegistryError, match="sent content with digest"):
        client.get_manifest(HOST, "a/b", Digest("sha256", "1" * 64))


def test_oversized_manifest_is_refused() -> None:
    fake = FakeRegistry()
    big = b"{" + b" " * MAX_MANIFEST_SIZE + b"}"
    failing_hook(fake, 1, lambda: httpx.Response(200, content=big, headers={"Content-Type": MediaType.OCI_MANIFEST}))

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b" " * (1024 * 1024)

    failing_hook(fake, 1, lambda: httpx.Response(200, content=chunks(),
                                                 headers={"Content-Type": MediaType.OCI_MANIFEST}))
    with make_client(fake) as client:
        with pytest.raises(RegistryError, match="more than the limit"):
            client.get_manifest(HOST, "a/b", "v1")  # Content-Length says so
        with pytest.raises(RegistryError, match="more than the limit"):
            client.get_manifest(HOST, "a/b", "v1")  # found while reading


@pytest.mark.parametrize("content_type", [MediaType.DOCKER_SCHEMA1_SIGNED, "application/json"])
def test_schema1_is_refused(content_type: str) -> None:
    fake = FakeRegistry()
    body = json_bytes({"schemaVersion": 1, "name": "a/b", "tag": "v1", "fsLayers": [], "signatures": []})
    fake.manifests[("a/b", "v1")] = (body, content_type)
    with make_client(fake) as client, pytest.raises(UnsupportedMediaType, match="schema 1"):
        client.get_manifest(HOST, "a/b", "v1")


def test_generic_content_type_falls_back_to_the_document() -> None:
    fake = FakeRegistry()
    body = json_bytes({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": []})
    fake.manifests[("a/b", "v1")] = (body, "application/json; charset=utf-8")
    with make_client(fake) as client:
        assert client.get_manifest(HOST, "a/b", "v1").media_type is MediaType.OCI_INDEX


# --- tags -------------------------------------------------------------------------------------


def test_tags_are_paginated_with_link_headers() -> None:
    fake = FakeRegistry(tags={"a/b": ["e", "d", "c", "b", "a"]})
    with make_client(fake) as client:
        assert client.list_tags(HOST, "a/b", page_size=2) == ["a", "b", "c", "d", "e"]
    assert [r.url.query.decode() for r in fake.requests] == ["n=2", "n=2&last=b", "n=2&last=d"]


def test_pagination_may_not_leave_the_registry() -> None:
    fake = FakeRegistry(tags={"a/b": ["a"]})
    failing_hook(fake, 1, lambda: httpx.Response(200, json={"tags": ["a"]}, headers={
        "Link": '<https://elsewhere.example/v2/a/b/tags/list?last=a>; rel="next"'}))
    with make_client(fake) as client, pytest.raises(RegistryError, match="next page is on another host"):
        client.list_tags(HOST, "a/b")


def test_pagination_loop_is_detected() -> None:
    fake = FakeRegistry()
    failing_hook(fake, 100, lambda: httpx.Response(200, json={"tags": ["a"]}, headers={
        "Link": '</v2/a/b/tags/list?n=1&last=a>; rel="next"'}))
    with make_client(fake) as client, pytest.raises(RegistryError, match="pagination does not end"):
        client.list_tags(HOST, "a/b", page_size=1)
