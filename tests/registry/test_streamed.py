"""Streamed uploads (registry/streamed.py): a blob sent in parts before its digest is known,
against the real registry and, for what it cannot do on demand, the fake."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from converter.errors import ImageError, RegistryError
from converter.reference import Digest
from tests.registry.fake import FakeRegistry, error
from tests.registry.faults import HOST, failing_hook, make_client
from tests.registry.helpers import Recorder, client_for, random_blob
from tests.support.registry import RegistryServer


@pytest.fixture
def image(tmp_path: Path) -> Iterator[tuple[Path, bytes, Digest, int]]:
    """A 300,000-byte file standing for an image, its bytes and digest, and a descriptor open on it."""
    data, digest = random_blob(300_000)
    path = tmp_path / "image"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield path, data, digest, fd
    finally:
        os.close(fd)


def test_a_blob_sent_in_parts_is_stored_under_its_digest(registry_open: RegistryServer,
                                                         image: tuple[Path, bytes, Digest, int]) -> None:
    path, data, digest, fd = image
    recorder = Recorder()
    with client_for(recorder) as client:
        upload = client.streamed_upload(registry_open.host, "streamed/parts")
        # The first block comes from memory (the writer's block 0 is written to the file last).
        upload.send_first(data[:4096], fd, 100_000)
        upload.send_more(fd, 180_000)
        upload.send_more(fd, 180_000)  # nothing new: no request
        assert upload.sent == 180_000
        assert upload.finish(path, digest, len(data)) is True
        assert recorder.methods("/blobs/") == ["POST", "PATCH", "PATCH", "HEAD", "PATCH", "PUT"]
        ranges = [s.headers["Content-Range"] for s in recorder.seen if s.method == "PATCH"]
        assert ranges == ["0-99999", "100000-179999", "180000-299999"]
        assert client.get_blob_bytes(registry_open.host, "streamed/parts", digest) == data


def test_block0_is_sent_from_memory_not_from_the_file(registry_open: RegistryServer,
                                                      image: tuple[Path, bytes, Digest, int]) -> None:
    path, data, _, fd = image
    final = b"\x01" * 4096 + data[4096:]  # the file's first block is rewritten after the data is sent
    with client_for() as client:
        upload = client.streamed_upload(registry_open.host, "streamed/block0")
        upload.send_first(final[:4096], fd, 200_000)
        path.write_bytes(final)
        digest = Digest.from_bytes(final)
        assert upload.finish(path, digest, len(final)) is True
        assert client.get_blob_bytes(registry_open.host, "streamed/block0", digest) == final


def test_a_blob_the_repository_has_cancels_the_session(registry_open: RegistryServer,
                                                       image: tuple[Path, bytes, Digest, int]) -> None:
    path, data, digest, fd = image
    recorder = Recorder()
    with client_for(recorder) as client:
        client.push_blob(registry_open.host, "streamed/exists", digest, len(data), path)
        recorder.clear()
        upload = client.streamed_upload(registry_open.host, "streamed/exists")
        upload.send_first(data[:4096], fd, 150_000)
        assert upload.finish(path, digest, len(data)) is False
        assert recorder.methods("/blobs/") == ["POST", "PATCH", "HEAD", "DELETE"]
        assert recorder.statuses()[-1] == 204  # the registry dropped the session


def test_bytes_that_changed_after_they_were_sent_make_the_put_fail(registry_open: RegistryServer,
                                                                   image: tuple[Path, bytes, Digest, int]) -> None:
    """The registry checks the digest against what it got: a part sent before it was final
    cannot make a wrong blob."""
    path, data, _, fd = image
    changed = data[:50_000] + b"\0" + data[50_001:]
    with client_for() as client:
        upload = client.streamed_upload(registry_open.host, "streamed/changed")
        upload.send_first(data[:4096], fd, 100_000)
        path.write_bytes(changed)
        digest = Digest.from_bytes(changed)
        with pytest.raises(RegistryError, match=r"DIGEST_INVALID|digest"):
            upload.finish(path, digest, len(changed))
        upload.cancel()
        assert client.blob_exists(registry_open.host, "streamed/changed", digest) is None


def test_a_file_of_another_size_is_refused_before_anything_more_is_sent(
        image: tuple[Path, bytes, Digest, int]) -> None:
    path, data, digest, fd = image
    fake = FakeRegistry()
    with make_client(fake) as client:
        upload = client.streamed_upload(HOST, "a/b")
        upload.send_first(data[:4096], fd, 100_000)
        with pytest.raises(ImageError, match="has 300000 bytes, expected 300001"):
            upload.finish(path, digest, len(data) + 1)
    assert [m for m, _ in fake.seen()] == ["POST", "PATCH", "HEAD"]


def test_a_registry_wanting_bigger_chunks_gets_no_part(image: tuple[Path, bytes, Digest, int]) -> None:
    _, data, _, fd = image
    fake = FakeRegistry()

    def post() -> httpx.Response:
        fake.uploads["s"] = bytearray()
        return httpx.Response(202, headers={"Location": "/v2/a/b/blobs/uploads/s", "OCI-Chunk-Min-Length": "5000000"})

    failing_hook(fake, 1, post, method="POST")
    with make_client(fake) as client:
        upload = client.streamed_upload(HOST, "a/b")
        with pytest.raises(RegistryError, match="chunks of at least 5000000 bytes, the first part has 100000"):
            upload.send_first(data[:4096], fd, 100_000)
        upload.cancel()
    assert [m for m, _ in fake.seen()] == ["POST", "DELETE"]
    assert fake.uploads == {}


def test_a_failed_part_is_not_resent(image: tuple[Path, bytes, Digest, int]) -> None:
    """Single tries: the caller cancels and falls back to the usual upload, which retries."""
    _, data, _, fd = image
    fake = FakeRegistry()
    failing_hook(fake, 1, lambda: error(500, "UNKNOWN", "disk hiccup"), method="PATCH")
    with make_client(fake) as client:
        upload = client.streamed_upload(HOST, "a/b")
        with pytest.raises(RegistryError, match="500"):
            upload.send_first(data[:4096], fd, 100_000)
        upload.cancel()
    assert [m for m, _ in fake.seen()] == ["POST", "PATCH", "DELETE"]
    assert fake.uploads == {}


def test_the_registry_holding_less_than_sent_fails_the_part(image: tuple[Path, bytes, Digest, int]) -> None:
    _, data, _, fd = image
    fake = FakeRegistry()

    def short(request: httpx.Request) -> httpx.Response | None:
        if request.method != "PATCH":
            return None
        return httpx.Response(202, headers={"Location": str(request.url.copy_with(query=None)), "Range": "0-99"})

    fake.hooks.append(short)
    with make_client(fake) as client:
        upload = client.streamed_upload(HOST, "a/b")
        with pytest.raises(RegistryError, match="holds 100 bytes after a chunk, expected 100000"):
            upload.send_first(data[:4096], fd, 100_000)


def test_calls_out_of_order_are_bugs(image: tuple[Path, bytes, Digest, int]) -> None:
    path, data, digest, fd = image
    with make_client(FakeRegistry()) as client:
        upload = client.streamed_upload(HOST, "a/b")
        with pytest.raises(RuntimeError, match="before send_first"):
            upload.finish(path, digest, len(data))
        with pytest.raises(RuntimeError, match="before send_first"):
            upload.send_more(fd, 10)
        upload.send_first(data[:4096], fd, 8192)
        with pytest.raises(RuntimeError, match="twice"):
            upload.send_first(data[:4096], fd, 8192)
