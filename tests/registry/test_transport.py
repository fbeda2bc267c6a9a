"""Request plumbing (transport.py) under faults from the in-memory fake: retries and Retry-After,
redirects and where credentials go, token realms, encodings and nesting of answers."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest
from structlog.testing import LogCapture

from converter.errors import AuthError, RegistryError
from converter.oci.mediatypes import MediaType
from converter.registry.client import MAX_MANIFEST_SIZE, RegistryClient
from converter.registry.credentials import Credentials, StaticCredentials
from converter.registry.transport import Timeouts
from tests.registry.fake import FakeRegistry, RawStream, error, json_bytes
from tests.registry.faults import CREDS, HOST, PASSWORD, bearer_setup, failing_hook, make_client, storage
from tests.registry.helpers import Sleeps, assert_no_secrets, blob, fast_retry

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


# --- redirects and where credentials go -------------------------------------------------------


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


def test_a_dribbled_error_body_is_read_until_the_deadline_only() -> None:
    sleeps = Sleeps()
    pieces: list[bytes] = []

    class Slow(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for piece in [b'{"errors":[{"code":"DENIED","message":"no"}]}'] + [b" "] * 1000:
                sleeps.now += 100.0  # each piece takes 100 s
                pieces.append(piece)
                yield piece

    fake = FakeRegistry()
    fake.hooks.append(lambda r: httpx.Response(403, stream=Slow()))
    with make_client(fake, sleeps, timeout=Timeouts(total=350.0)) as client, \
            pytest.raises(AuthError, match=r"403 DENIED: no$"):
        client.ping(HOST)
    assert len(pieces) < 10  # what arrived by the deadline, not the whole body


def test_an_oversized_token_answer_is_refused() -> None:
    fake, _ = bearer_setup()
    fake.hosts["auth.example"] = lambda r: httpx.Response(200, stream=RawStream(b" " * (2 << 20)))
    with make_client(fake, credentials=CREDS) as client, \
            pytest.raises(RegistryError, match=r"auth.example: the answer is more than the limit of 1048576 bytes$"):
        client.ping(HOST)
