"""RegistryClient under faults a real registry won't produce on demand, with an in-memory fake.

Retry-After, 429/5xx bursts, connections reset mid-body (Range resume), redirects to other hosts
(Authorization must be dropped) or to plain HTTP (refused), bad digests, oversize answers,
Link pagination, a failed chunk upload, token realms and where tokens are sent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Callable, Iterator

import httpx
import pytest
from structlog.testing import LogCapture

from converter.errors import AuthError, RegistryError, UnsupportedMediaType
from converter.oci.mediatypes import MediaType
from converter.reference import Digest
from converter.registry.client import MAX_MANIFEST_SIZE, BlobPush, RegistryClient
from converter.registry.credentials import Credentials, StaticCredentials
from tests.registry.fake import BrokenStream, FakeRegistry, RawStream, error, json_bytes
from tests.registry.helpers import Sleeps, assert_no_secrets, blob, fast_retry

HOST = "reg.example"
PASSWORD = "pa55-word-very-secret"
CREDS = StaticCredentials({HOST: Credentials("alice", PASSWORD)})


def make_client(fake: FakeRegistry, sleeps: Sleeps | None = None, **kwargs: object) -> RegistryClient:
    return RegistryClient(transport=fake.transport(), retry=fast_retry(sleeps), **kwargs)  # type: ignore[arg-type]


def failing_hook(fake: FakeRegistry, times: int, make: Callable[[], httpx.Response], *, method: str = "",
                 path: str = "") -> list[int]:
    """Answer the first ``times`` matching requests with ``make()`` (a Response, or raise)."""
    hits = [0]

    def hook(request: httpx.Request) -> httpx.Response | None:
        if (method and request.method != method) or path not in request.url.path or hits[0] >= times:
            return None
        hits[0] += 1
        return make()

    fake.hooks.append(hook)
    return hits


# --- retries ----------------------------------------------------------------------------------


def test_503_with_retry_after_is_waited_for() -> None:
    fake = FakeRegistry()
    failing_hook(fake, 2, lambda: error(503, "UNAVAILABLE", "busy", {"Retry-After": "3"}))
    sleeps = Sleeps()
    with make_client(fake, sleeps) as client:
        client.ping(HOST)
    assert sleeps.delays == [3.0, 3.0]
    assert fake.seen() == [("GET", "/v2/")] * 3


def test_retry_after_is_capped_and_http_dates_work() -> None:
    fake = FakeRegistry()
    failing_hook(fake, 1, lambda: httpx.Response(503, headers={"Retry-After": "3600"}))
    failing_hook(fake, 1, lambda: httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2065 07:28:00 GMT"}))
    sleeps = Sleeps()
    with make_client(fake, sleeps) as client:
        client.ping(HOST)
    assert sleeps.delays == [10.0, 10.0]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    fake = FakeRegistry()
    failing_hook(fake, 1, lambda: httpx.Response(status))
    sleeps = Sleeps()
    with make_client(fake, sleeps) as client:
        client.ping(HOST)
    assert len(sleeps.delays) == 1 and 0.25 <= sleeps.delays[0] <= 0.5


def test_retries_are_bounded() -> None:
    fake = FakeRegistry()
    failing_hook(fake, 100, lambda: httpx.Response(502))
    sleeps = Sleeps()
    with make_client(fake, sleeps) as client, pytest.raises(RegistryError) as info:
        client.ping(HOST)
    assert len(fake.seen()) == 4 and len(sleeps.delays) == 3
    assert sleeps.delays == [0.375, 0.75, 1.5]  # 0.5 s doubling, "equal jitter" at random()=0.5
    assert info.value.temporary and info.value.status == 502
    assert str(info.value) == f"checking registry {HOST}: 502 Bad Gateway"


def test_total_retry_budget() -> None:
    fake = FakeRegistry()
    failing_hook(fake, 100, lambda: httpx.Response(503, headers={"Retry-After": "4"}))
    sleeps = Sleeps()
    client = RegistryClient(transport=fake.transport(), retry=fast_retry(sleeps, budget=6.0))
    with client, pytest.raises(RegistryError):
        client.ping(HOST)
    assert sleeps.delays == [4.0]  # a second 4 s wait would pass the 6 s budget


def test_permanent_errors_are_not_retried() -> None:
    fake = FakeRegistry()
    failing_hook(fake, 100, lambda: error(400, "MANIFEST_INVALID", "manifest invalid"))
    sleeps = Sleeps()
    with make_client(fake, sleeps) as client, pytest.raises(RegistryError) as info:
        client.get_manifest(HOST, "a/b", "v1")
    assert sleeps.delays == [] and len(fake.seen()) == 1
    assert info.value.code == "MANIFEST_INVALID" and not info.value.temporary
    assert str(info.value) == f"fetching manifest {HOST}/a/b:v1: 400 MANIFEST_INVALID: manifest invalid"


def test_connection_errors_are_retried() -> None:
    fake = FakeRegistry()

    def refuse() -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    failing_hook(fake, 2, refuse)
    with make_client(fake) as client:
        client.ping(HOST)
    failing_hook(fake, 100, refuse)
    with make_client(fake) as client, pytest.raises(RegistryError) as info:
        client.ping(HOST)
    assert info.value.temporary
    assert str(info.value) == f"checking registry {HOST}: cannot connect: connection refused"


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


# --- redirects and where credentials go -------------------------------------------------------


def storage(seen: list[httpx.Request], data: bytes) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=data)

    return handle


def test_cross_host_redirect_drops_authorization() -> None:
    data, digest = blob(1000)
    stored: list[httpx.Request] = []
    fake = FakeRegistry(basic=("alice", PASSWORD), hosts={"storage.example": storage(stored, data)})
    signed = "https://storage.example/blob?X-Amz-Signature=topsecret&X-Amz-Credential=AKIA"
    failing_hook(fake, 100, lambda: httpx.Response(307, headers={"Location": signed}), method="GET",
                 path="/blobs/")
    with make_client(fake, credentials=CREDS) as client:
        assert client.get_blob_bytes(HOST, "a/b", digest) == data
    registry_requests = [r for r in fake.requests if r.url.host == HOST]
    assert registry_requests[-1].headers["Authorization"].startswith("Basic ")
    assert len(stored) == 1 and "Authorization" not in stored[0].headers


def test_same_host_redirect_keeps_authorization() -> None:
    data, digest = blob(1000)
    fake = FakeRegistry(basic=("alice", PASSWORD), blobs={str(digest): data})

    def moved(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/v2/old/blobs/" + str(digest):
            return httpx.Response(301, headers={"Location": "/v2/new/blobs/" + str(digest)})
        return None

    fake.hooks.append(moved)
    with make_client(fake, credentials=CREDS) as client:
        assert client.get_blob_bytes(HOST, "old", digest) == data
    assert fake.requests[-1].url.path == "/v2/new/blobs/" + str(digest)
    assert fake.requests[-1].headers["Authorization"].startswith("Basic ")


def test_redirect_to_plain_http_is_refused() -> None:
    data, digest = blob(1000)
    stored: list[httpx.Request] = []
    fake = FakeRegistry(hosts={"storage.example": storage(stored, data)})
    failing_hook(fake, 100, lambda: httpx.Response(302, headers={"Location": "http://storage.example/b"}))
    with make_client(fake) as client, pytest.raises(RegistryError, match="it would leave HTTPS"):
        client.get_blob_bytes(HOST, "a/b", digest)
    assert stored == []


def test_storage_errors_do_not_show_signed_urls() -> None:
    _, digest = blob(10)
    fake = FakeRegistry(hosts={"storage.example": lambda r: httpx.Response(403, text="AccessDenied")})
    failing_hook(fake, 100, lambda: httpx.Response(
        307, headers={"Location": "https://storage.example/b?X-Amz-Signature=topsecret"}))
    with make_client(fake) as client, pytest.raises(AuthError) as info:
        client.open_blob(HOST, "a/b", digest)
    assert info.value.url == "https://storage.example/b?X-Amz-Signature=REDACTED"
    assert_no_secrets([info.value, info.value.url], ["topsecret"])


def bearer_setup(realm: str = "https://auth.example/token") -> tuple[FakeRegistry, list[httpx.Request]]:
    asked: list[httpx.Request] = []
    fake = FakeRegistry(bearer_realm=realm, tokens={"tok-1", "tok-2"})

    def issue(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json={"token": f"tok-{len(asked)}", "expires_in": 300})

    fake.hosts["auth.example"] = issue
    return fake, asked


def test_bearer_token_goes_only_to_the_registry() -> None:
    data, digest = blob(1000)
    stored: list[httpx.Request] = []
    fake, asked = bearer_setup()
    fake.hosts["storage.example"] = storage(stored, data)
    failing_hook(fake, 100, lambda: httpx.Response(307, headers={"Location": "https://storage.example/b"}),
                 method="GET", path="/blobs/")
    with make_client(fake, credentials=CREDS) as client:
        assert client.get_blob_bytes(HOST, "a/b", digest) == data
    # The token service got the user's Basic credentials and the scope; nobody else did.
    assert len(asked) == 1
    assert asked[0].headers["Authorization"].startswith("Basic ")
    assert asked[0].url.params.get_list("scope") == ["repository:a/b:pull"]
    assert asked[0].url.params["service"] == "fake"
    assert fake.requests[-2].headers["Authorization"] == "Bearer tok-1"
    assert "Authorization" not in stored[0].headers


def test_plain_http_token_realm_is_refused() -> None:
    fake, asked = bearer_setup("http://auth.example/token")
    with make_client(fake, credentials=CREDS) as client, pytest.raises(AuthError, match="must be an https URL"):
        client.ping(HOST)
    assert asked == []


def test_plain_http_realm_allowed_when_configured() -> None:
    fake, asked = bearer_setup("http://auth.example/token")
    with make_client(fake, credentials=CREDS, plain_http=[HOST, "auth.example"]) as client:
        client.ping(HOST)
    assert len(asked) == 1


@pytest.mark.parametrize("realm", ["http://auth.example/token", "http://127.0.0.1:5999/token"])
def test_an_https_registry_never_downgrades_to_a_plain_http_realm(realm: str) -> None:
    fake, asked = bearer_setup(realm)
    fake.hosts["127.0.0.1:5999"] = fake.hosts["auth.example"]
    with make_client(fake, credentials=CREDS, plain_http=["auth.example"]) as client, \
            pytest.raises(AuthError, match="must be an https URL"):
        client.ping(HOST)
    assert asked == []
    assert not [r for r in fake.requests if r.url.scheme == "http"]


def test_token_service_outage_is_retried() -> None:
    fake, _ = bearer_setup()
    original = fake.hosts["auth.example"]
    calls = [0]

    def flaky(request: httpx.Request) -> httpx.Response:
        calls[0] += 1
        return httpx.Response(503) if calls[0] == 1 else original(request)

    fake.hosts["auth.example"] = flaky
    with make_client(fake) as client:
        client.ping(HOST)
    assert calls[0] == 2


def test_registry_messages_are_scrubbed() -> None:
    fake = FakeRegistry()
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    failing_hook(fake, 1, lambda: error(400, "BAD", f"rejected header Authorization: Bearer {jwt}"))
    with make_client(fake) as client, pytest.raises(RegistryError) as info:
        client.ping(HOST)
    assert_no_secrets([info.value], [jwt])


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


def test_credentials_in_clear_to_a_non_loopback_host_warn_once(log_capture: LogCapture) -> None:
    fake = FakeRegistry(basic=("alice", PASSWORD))
    with make_client(fake, credentials=CREDS, plain_http=[HOST]) as client:
        client.ping(HOST)
        client.ping(HOST)
    assert [r.url.scheme for r in fake.requests] == ["http"] * 3  # 401, then Basic twice
    warnings = [e for e in log_capture.entries if e["event"] == "registry_credentials_in_clear"]
    assert [(w["log_level"], w["host"]) for w in warnings] == [("warning", HOST)]


def test_credentials_to_a_loopback_registry_do_not_warn(log_capture: LogCapture) -> None:
    fake = FakeRegistry(host="127.0.0.1:5000", basic=("alice", PASSWORD))
    creds = StaticCredentials({"127.0.0.1:5000": Credentials("alice", PASSWORD)})
    with make_client(fake, credentials=creds) as client:
        client.ping("127.0.0.1:5000")
    assert not [e for e in log_capture.entries if e["event"] == "registry_credentials_in_clear"]


# --- hostile answers: encodings, nesting ------------------------------------------------------


def test_no_request_asks_for_a_content_encoding() -> None:
    fake = FakeRegistry()
    fake.manifests[("a/b", "v1")] = (json_bytes({"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST}),
                                     MediaType.OCI_MANIFEST)
    with make_client(fake) as client:
        client.get_manifest(HOST, "a/b", "v1")
        client.ping(HOST)
    assert {r.headers.get("Accept-Encoding") for r in fake.requests} == {"identity"}


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_encoded_answer_is_decoded_under_the_limit(encoding: str) -> None:
    import zlib

    document = json_bytes({"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST})
    small = zlib.compress(document) if encoding == "deflate" else gzip.compress(document)
    bomb = gzip.compress(bytes(MAX_MANIFEST_SIZE + 1))
    fake = FakeRegistry()
    answers = iter([small, bomb])
    fake.hooks.append(lambda r: httpx.Response(200, stream=RawStream(next(answers)), headers={
        "Content-Type": MediaType.OCI_MANIFEST, "Content-Encoding": encoding}))
    with make_client(fake) as client:
        assert client.get_manifest(HOST, "a/b", "v1").data == document
        with pytest.raises(RegistryError, match=f"more than the limit of {MAX_MANIFEST_SIZE} bytes"):
            client.get_manifest(HOST, "a/b", "v1")


def test_an_unknown_encoding_is_refused() -> None:
    fake = FakeRegistry()
    fake.hooks.append(lambda r: httpx.Response(200, stream=RawStream(b"\x28\xb5\x2f\xfd"), headers={
        "Content-Encoding": "br\x1b[2K"}))
    with make_client(fake) as client, pytest.raises(RegistryError) as caught:
        client.get_manifest(HOST, "a/b", "v1")
    assert str(caught.value).endswith(r"the answer is br\x1b[2k-encoded, which was not asked for")


@pytest.mark.parametrize("where", ["manifest", "tags", "error", "token"])
def test_deeply_nested_json_is_a_clean_error(where: str) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    fake, _ = bearer_setup() if where == "token" else (FakeRegistry(), [])
    if where == "token":
        fake.hosts["auth.example"] = lambda r: httpx.Response(200, content=nested)
    else:
        status = 404 if where == "error" else 200
        fake.hooks.append(lambda r: httpx.Response(status, content=nested,
                                                   headers={"Content-Type": "application/json"}))
    with make_client(fake) as client:
        if where == "manifest":  # handed over unparsed (the caller's parser refuses it), no RecursionError
            assert client.get_manifest(HOST, "a/b", "v1").media_type == "application/json"
            return
        with pytest.raises(RegistryError) as caught:
            if where == "tags":
                client.list_tags(HOST, "a/b")
            else:
                client.get_manifest(HOST, "a/b", "v1")
    assert len(str(caught.value)) < 400
