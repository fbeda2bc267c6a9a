"""Blob uploads (upload.py) under faults: failed chunks and PUTs, non-seekable sources, mounts, Location checks."""

from __future__ import annotations

import hashlib
import io

import httpx
import pytest
from structlog.testing import LogCapture

from converter.errors import AuthError, RegistryError
from converter.registry.client import BlobPush
from tests.registry.fake import FakeRegistry, error
from tests.registry.faults import CREDS, HOST, PASSWORD, failing_hook, make_client
from tests.registry.helpers import Sleeps, assert_no_secrets, blob

# --- uploads ----------------------------------------------------------------------------------


def test_failed_chunk_restarts_with_a_new_session() -> None:
    data, digest = blob(250_000)
    fake = FakeRegistry()
    failing_hook(fake, 1, lambda: error(500, "UNKNOWN", "disk hiccup"), method="PATCH")
    with make_client(fake) as client:
        assert client.push_blob(HOST, "a/b", digest, len(data), io.BytesIO(data), chunk_size=100_000) \
            is BlobPush.UPLOADED
    assert fake.blobs[str(digest)] == data
    methods = [m for m, _ in fake.seen()]
    # HEAD, POST, failed PATCH, DELETE of the broken session; then all over again.
    assert methods == ["HEAD", "POST", "PATCH", "DELETE", "HEAD", "POST", "PATCH", "PATCH", "PATCH", "PUT"]
    assert fake.uploads == {}


def test_failed_monolithic_put_is_retried_from_the_start() -> None:
    data, digest = blob(10_000)
    fake = FakeRegistry()
    failing_hook(fake, 1, lambda: httpx.Response(502), method="PUT")
    with make_client(fake) as client:
        assert client.push_blob(HOST, "a/b", digest, len(data), io.BytesIO(data)) is BlobPush.UPLOADED
    assert fake.blobs[str(digest)] == data


def test_non_seekable_source_is_not_resent() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            return self._inner.readinto(buffer)

    data, digest = blob(10_000)
    fake = FakeRegistry()
    failing_hook(fake, 1, lambda: httpx.Response(502), method="PUT")
    with make_client(fake) as client, pytest.raises(RegistryError) as info:
        client.push_blob(HOST, "a/b", digest, len(data), Pipe(data))  # type: ignore[arg-type]
    assert info.value.status == 502
    # Before any byte is read, a retry is still possible.
    failing_hook(fake, 1, lambda: httpx.Response(503), method="POST")
    with make_client(fake) as client:
        client.push_blob(HOST, "a/b", digest, len(data), Pipe(data))  # type: ignore[arg-type]
    assert hashlib.sha256(fake.blobs[str(digest)]).hexdigest() == digest.hex


def test_upload_location_may_not_downgrade_to_http() -> None:
    data, digest = blob(100)
    fake = FakeRegistry()
    failing_hook(fake, 1, lambda: httpx.Response(202, headers={"Location": "http://reg.example/v2/a/b/u/1"}),
                 method="POST")
    sleeps = Sleeps()
    with make_client(fake, sleeps) as client, pytest.raises(RegistryError, match="leave HTTPS"):
        client.push_blob(HOST, "a/b", digest, len(data), io.BytesIO(data))
    assert sleeps.delays == []


def test_mount_falls_back_and_cancels() -> None:
    fake = FakeRegistry()
    _, digest = blob(10)
    with make_client(fake) as client:
        assert client.mount_blob(HOST, "a/b", digest, "c/d") is False
    assert [m for m, _ in fake.seen()] == ["POST", "DELETE"]
    assert fake.uploads == {}


def test_push_errors_name_the_operation_and_keep_secrets(log_capture: LogCapture) -> None:
    data, digest = blob(100)
    fake = FakeRegistry(basic=("alice", "something-else"))
    with make_client(fake, credentials=CREDS) as client, pytest.raises(AuthError) as info:
        client.push_blob(HOST, "a/b", digest, len(data), io.BytesIO(data))
    # The first request of a push is a HEAD: the 401 has no body, so no registry error code.
    assert str(info.value) == (f"pushing blob {digest} to {HOST}/a/b: 401 Unauthorized "
                               "(the registry refused our credentials)")
    assert info.value.method == "HEAD" and info.value.status == 401
    entries = log_capture.entries
    assert_no_secrets([info.value, repr(client), *entries], [PASSWORD, "s3cr3t"])
