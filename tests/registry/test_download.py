"""Blob downloads (download.py) under faults: Range resume, wrong content, wrong size."""

from __future__ import annotations

import httpx
import pytest

from converter.errors import RegistryError
from tests.registry.fake import BrokenStream, FakeRegistry
from tests.registry.faults import HOST, failing_hook, make_client
from tests.registry.helpers import blob

# --- downloads --------------------------------------------------------------------------------


def test_dropped_download_resumes_with_range() -> None:
    data, digest = blob(300_000)
    fake = FakeRegistry(blobs={str(digest): data})
    ranges: list[str | None] = []

    def flaky(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" not in request.url.path or request.method != "GET":
            return None
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:
            return httpx.Response(200, headers={"Content-Length": str(len(data)), "Accept-Ranges": "bytes"},
                                  stream=BrokenStream(data, 100_000))
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        if len(ranges) == 2:  # the second try breaks again, further on
            return httpx.Response(206, headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                                  stream=BrokenStream(data[start:], 50_000))
        return httpx.Response(206, headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
                              content=data[start:])

    fake.hooks.append(flaky)
    with make_client(fake) as client, client.open_blob(HOST, "a/b", digest) as reader:
        assert reader.read() == data
        assert reader.verified
    assert ranges == [None, "bytes=100000-", "bytes=150000-"]


def test_resume_when_the_server_ignores_range() -> None:
    data, digest = blob(200_000)
    fake = FakeRegistry(blobs={str(digest): data})
    failing_hook(fake, 1, lambda: httpx.Response(200, headers={"Content-Length": str(len(data))},
                                                 stream=BrokenStream(data, 77_777)), method="GET", path="/blobs/")
    with make_client(fake) as client, client.open_blob(HOST, "a/b", digest) as reader:
        assert reader.read() == data  # the repeated prefix was skipped
        assert reader.verified


def test_resume_gives_up_after_the_attempts() -> None:
    data, digest = blob(10_000)
    fake = FakeRegistry(blobs={str(digest): data})
    failing_hook(fake, 100, lambda: httpx.Response(200, headers={"Content-Length": str(len(data))},
                                                   stream=BrokenStream(data, 0)), method="GET", path="/blobs/")
    with make_client(fake) as client, client.open_blob(HOST, "a/b", digest) as reader, \
            pytest.raises(RegistryError) as info:
        reader.read()
    assert info.value.temporary
    assert "connection lost after 0 bytes" in str(info.value)


def test_blob_with_wrong_content_is_refused_at_eof() -> None:
    data, digest = blob(5000)
    fake = FakeRegistry(blobs={str(digest): data[:-1] + b"X"})
    with make_client(fake) as client, client.open_blob(HOST, "a/b", digest) as reader:
        assert reader.read(4000) == data[:4000]  # bytes flow before the end
        with pytest.raises(RegistryError, match="the content's digest is sha256:"):
            reader.read()
        assert not reader.verified
        with pytest.raises(RegistryError):  # and it stays failed
            reader.read()


def test_blob_size_is_checked() -> None:
    data, digest = blob(5000)
    fake = FakeRegistry(blobs={str(digest): data})
    with make_client(fake) as client:
        with pytest.raises(RegistryError, match="announces 5000 bytes, expected 4000"):
            client.open_blob(HOST, "a/b", digest, size=4000)
        with pytest.raises(RegistryError, match="more than the limit of 100"):
            client.get_blob_bytes(HOST, "a/b", digest, max_size=100)
