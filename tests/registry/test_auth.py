"""WWW-Authenticate parsing, scopes, token lifetimes, the per-scope token cache, and token fetching."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import httpx
import pytest
from structlog.testing import LogCapture

from converter.errors import AuthError
from converter.registry.auth import (
    DEFAULT_TOKEN_LIFETIME,
    Authenticator,
    Challenge,
    Scope,
    TokenCache,
    parse_www_authenticate,
    pull_scope,
    push_scope,
    token_lifetime,
)
from converter.registry.credentials import Credentials, StaticCredentials
from tests.registry.helpers import Sleeps, assert_no_secrets, fast_retry
from tests.support.registry import RegistryServer

REALM = "https://auth.example/token"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
         'scope="repository:samalba/my-app:pull,push"',
         [Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                               "scope": "repository:samalba/my-app:pull,push"})]),
        # Case-insensitive scheme and parameter names; spaces around "=" and ",".
        ('BEARER Realm = "https://a/t" , Service=svc', [Challenge("bearer", {"realm": "https://a/t",
                                                                              "service": "svc"})]),
        # Quoted strings hold commas, spaces and escaped quotes.
        (r'Bearer realm="https://a/t",scope="repository:a:pull repository:b:pull,push",error="x \"y\", z"',
         [Challenge("bearer", {"realm": "https://a/t", "scope": "repository:a:pull repository:b:pull,push",
                               "error": 'x "y", z'})]),
        # Several challenges in one header.
        ('Bearer realm="https://a/t",service="s", Basic realm="b"',
         [Challenge("bearer", {"realm": "https://a/t", "service": "s"}), Challenge("basic", {"realm": "b"})]),
        ("Negotiate", [Challenge("negotiate", {})]),
        ("", []),
        # Garbage does not raise.
        ('="x", Bearer realm="https://a/t", "stray, Basic', [Challenge("bearer", {"realm": "https://a/t"})]),
        ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_challenge_accessors() -> None:
    (challenge,) = parse_www_authenticate(
        'Bearer realm="https://a/t",service="s",scope="repository:a:pull repository:b:push",error="invalid_token"')
    assert (challenge.realm, challenge.service) == ("https://a/t", "s")
    assert challenge.scopes == ["repository:a:pull", "repository:b:push"]
    # What the registry remembers for later requests: not one request's scope or error.
    assert challenge.for_registry() == Challenge("bearer", {"realm": "https://a/t", "service": "s"})


def test_scopes() -> None:
    assert str(pull_scope("library/alpine")) == "repository:library/alpine:pull"
    assert str(push_scope("a/b")) == "repository:a/b:pull,push"
    assert Scope.parse("repository:a/b:push,pull") == push_scope("a/b")
    assert Scope.parse("registry:catalog:*") == Scope("registry", "catalog", ("*",))
    assert Scope.parse("repository:host:5000/a:pull").name == "host:5000/a"
    assert frozenset({push_scope("a"), pull_scope("b")}) == frozenset({pull_scope("b"), push_scope("a")})
    with pytest.raises(ValueError, match="malformed scope"):
        Scope.parse("nonsense")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, DEFAULT_TOKEN_LIFETIME),
        ({"expires_in": 300}, 300.0),
        ({"expires_in": 0}, DEFAULT_TOKEN_LIFETIME),
        ({"expires_in": "300"}, DEFAULT_TOKEN_LIFETIME),
        ({"expires_in": True}, DEFAULT_TOKEN_LIFETIME),
        # Issued 20 s ago (by our clock): 20 s of the 300 are gone.
        ({"expires_in": 300, "issued_at": "2033-05-18T03:33:00Z"}, 280.0),
        # Go's nanosecond timestamps and explicit offsets.
        ({"expires_in": 300, "issued_at": "2033-05-18T03:33:00.123456789Z"}, 280.123456),
        ({"expires_in": 300, "issued_at": "2033-05-18T05:33:00+02:00"}, 280.0),
        # An issuer clock far behind ours only halves the lifetime (no refresh loop).
        ({"expires_in": 300, "issued_at": "2033-05-18T00:00:00Z"}, 150.0),
        # An issuer clock ahead of ours is ignored.
        ({"expires_in": 300, "issued_at": "2033-05-18T04:00:00Z"}, 300.0),
        ({"expires_in": 300, "issued_at": "yesterday"}, 300.0),
        ({"expires_in": 300, "issued_at": "2033-05-18T03:33:00"}, 300.0),  # no zone: ignored
    ],
)
def test_token_lifetime(body: dict[str, object], expected: float) -> None:
    now = 2_000_000_000.0  # 2033-05-18T03:33:20Z
    assert token_lifetime(body, now=now) == pytest.approx(expected)


def test_token_cache_is_per_registry_and_scope_set() -> None:
    clock = Sleeps()
    cache = TokenCache(clock=clock.clock)
    a, b = frozenset({pull_scope("a")}), frozenset({pull_scope("b")})
    cache.put("r1", a, "token-a", 100)
    assert cache.get("r1", a) == "token-a"
    assert cache.get("r1", b) is None  # never reused for another repository
    assert cache.get("r2", a) is None  # nor another registry
    assert cache.get("r1", frozenset({push_scope("a")})) is None  # nor other actions
    clock.sleep(89.9)
    assert cache.get("r1", a) == "token-a"
    clock.sleep(0.2)  # refreshed 10 s (at most 10 %) before it expires
    assert cache.get("r1", a) is None
    assert len(cache) == 0


def test_token_cache_discard_keeps_a_newer_token() -> None:
    cache = TokenCache()
    scopes = frozenset({pull_scope("a")})
    cache.put("r", scopes, "new", 60)
    cache.discard("r", scopes, "old")
    assert cache.get("r", scopes) == "new"
    cache.discard("r", scopes, "new")
    assert cache.get("r", scopes) is None
    assert repr(cache) == "TokenCache(entries=0)"


def short_lived_cache() -> tuple[TokenCache, Sleeps]:
    clock = Sleeps()
    return TokenCache(clock=clock.clock), clock


class TokenService:
    """A token endpoint for MockTransport that records requests and issues numbered tokens."""

    def __init__(self, status: int = 200, body: object = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.body = body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        body = self.body if self.body is not None else {"token": f"tok-{len(self.requests)}", "expires_in": 60}
        return httpx.Response(self.status, json=body)


def authenticator(service: TokenService, creds: Credentials | None = None, **kwargs: object
                  ) -> Authenticator:
    http = httpx.Client(transport=httpx.MockTransport(service))
    provider = StaticCredentials({"reg.example": creds}) if creds else None
    return Authenticator(http, credentials=provider, retry=fast_retry(),
                         plain_http_allowed=lambda host: host.startswith("127."), **kwargs)  # type: ignore[arg-type]


CHALLENGE = f'Bearer realm="{REALM}",service="reg.example",scope="repository:a:pull"'


def test_anonymous_token_fetch() -> None:
    service = TokenService()
    auth = authenticator(service)
    scopes = frozenset({pull_scope("a")})
    assert auth.authorization("reg.example", scopes) is None  # no challenge seen yet
    header, reason = auth.on_unauthorized("reg.example", scopes, CHALLENGE, rejected=None)
    assert (header, reason) == ("Bearer tok-1", "")
    (request,) = service.requests
    assert request.method == "GET" and "Authorization" not in request.headers
    assert request.url.params.get_list("service") == ["reg.example"]
    assert request.url.params.get_list("scope") == ["repository:a:pull"]
    # Cached for the scope; fetched up front (without a 401) for another scope.
    assert auth.authorization("reg.example", scopes) == "Bearer tok-1"
    assert auth.authorization("reg.example", frozenset({push_scope("b")})) == "Bearer tok-2"
    assert service.requests[1].url.params.get_list("scope") == ["repository:b:pull,push"]


def test_token_fetch_with_password() -> None:
    service = TokenService()
    auth = authenticator(service, Credentials("alice", "pw-123456"))
    scopes = frozenset({push_scope("b"), pull_scope("a")})
    auth.on_unauthorized("reg.example", scopes, f'Bearer realm="{REALM}",service="s"', rejected=None)
    (request,) = service.requests
    assert request.headers["Authorization"] == Credentials("alice", "pw-123456").basic_authorization()
    assert request.url.params.get_list("scope") == ["repository:a:pull", "repository:b:pull,push"]
    assert request.url.params["account"] == "alice"


def test_token_fetch_with_identity_token() -> None:
    service = TokenService(body={"access_token": "oauth-tok", "expires_in": 120})
    auth = authenticator(service, Credentials(identity_token="refresh-xyz"))
    header, _ = auth.on_unauthorized("reg.example", frozenset({pull_scope("a")}), CHALLENGE, rejected=None)
    assert header == "Bearer oauth-tok"
    (request,) = service.requests
    assert request.method == "POST" and "Authorization" not in request.headers
    form = urllib.parse.parse_qs(request.content.decode())
    assert form == {"grant_type": ["refresh_token"], "refresh_token": ["refresh-xyz"],
                    "service": ["reg.example"], "client_id": ["erofs-converter"], "scope": ["repository:a:pull"]}


def test_rejected_token_is_replaced() -> None:
    service = TokenService()
    auth = authenticator(service)
    scopes = frozenset({pull_scope("a")})
    first, _ = auth.on_unauthorized("reg.example", scopes, CHALLENGE, rejected=None)
    # The registry refuses it later (expired mid-job): a fresh one, not the cached one.
    second, _ = auth.on_unauthorized("reg.example", scopes, CHALLENGE, rejected=first)
    assert (first, second) == ("Bearer tok-1", "Bearer tok-2")
    assert auth.authorization("reg.example", scopes) == "Bearer tok-2"


def test_token_service_refusal() -> None:
    service = TokenService(status=401, body={"details": "incorrect username or password"})
    auth = authenticator(service, Credentials("alice", "pw-123456"))
    with pytest.raises(AuthError) as info:
        auth.on_unauthorized("reg.example", frozenset({pull_scope("a")}), CHALLENGE, rejected=None)
    assert str(info.value) == ("fetching a token for reg.example from auth.example: 401 Unauthorized (check the "
                               "credentials for reg.example: `docker login reg.example`; they are read from "
                               "$REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
    assert info.value.url == REALM
    assert_no_secrets([info.value, repr(auth)], ["pw-123456"])


@pytest.mark.parametrize("body", [{"nothing": 1}, [1, 2], {"token": ""}])
def test_token_answer_without_a_token(body: object) -> None:
    auth = authenticator(TokenService(body=body))
    with pytest.raises(AuthError, match=r"holds no token|not a JSON object"):
        auth.on_unauthorized("reg.example", frozenset(), CHALLENGE, rejected=None)


def test_token_answer_that_is_not_json_is_not_quoted() -> None:
    def service(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="token=abc-secret-def")

    http = httpx.Client(transport=httpx.MockTransport(service))
    auth = Authenticator(http, credentials=None, retry=fast_retry(), plain_http_allowed=lambda h: False)
    with pytest.raises(AuthError) as info:
        auth.on_unauthorized("reg.example", frozenset(), CHALLENGE, rejected=None)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert_no_secrets([info.value], ["abc-secret-def"])


@pytest.mark.parametrize(
    ("realm", "allowed"),
    [
        ("https://auth.example/token", True),
        ("http://auth.example/token", False),  # credentials would travel in clear text
        ("http://127.0.0.1:8080/token", False),  # loopback, but never a downgrade from an HTTPS registry
        ("ftp://auth.example/token", False),
        ("/token", False),  # relative: not the registry's to choose
        ("", False),
    ],
)
def test_realm_must_be_https(realm: str, allowed: bool) -> None:
    service = TokenService()
    auth = authenticator(service, Credentials("alice", "pw-123456"))
    challenge = f'Bearer realm="{realm}",service="s"' if realm else 'Bearer service="s"'
    if allowed:
        assert auth.on_unauthorized("reg.example", frozenset(), challenge, rejected=None)[0] == "Bearer tok-1"
        return
    if not realm:  # no realm at all: nothing to use
        assert auth.on_unauthorized("reg.example", frozenset(), challenge, rejected=None)[0] is None
    else:
        with pytest.raises(AuthError, match="must be an https URL"):
            auth.on_unauthorized("reg.example", frozenset(), challenge, rejected=None)
    assert service.requests == []


def test_a_plain_http_registry_may_name_a_plain_http_realm_it_is_allowed() -> None:
    service = TokenService()
    auth = authenticator(service, Credentials("alice", "pw-123456"), registry_plain_http=lambda r: True)
    challenge = 'Bearer realm="http://127.0.0.1:8080/token",service="s"'
    assert auth.on_unauthorized("reg.example", frozenset(), challenge, rejected=None)[0] == "Bearer tok-1"
    challenge = 'Bearer realm="http://auth.example/token",service="s"'  # not allowed plain HTTP
    with pytest.raises(AuthError, match="must be an https URL"):
        auth.on_unauthorized("other.example", frozenset(), challenge, rejected=None)


def test_basic_challenge() -> None:
    auth = authenticator(TokenService(), Credentials("alice", "pw-123456"))
    expected = Credentials("alice", "pw-123456").basic_authorization()
    header, _ = auth.on_unauthorized("reg.example", frozenset(), 'Basic realm="r"', rejected=None)
    assert header == expected
    assert auth.authorization("reg.example", frozenset({pull_scope("x")})) == expected  # up front from now on
    header, reason = auth.on_unauthorized("reg.example", frozenset(), 'Basic realm="r"', rejected=expected)
    assert header is None and reason == "the registry refused the credentials for reg.example"
    anonymous = authenticator(TokenService())
    header, reason = anonymous.on_unauthorized("reg.example", frozenset(), 'Basic realm="r"', rejected=None)
    assert header is None and reason == "no user name and password for reg.example"


def test_identity_token_is_not_used_for_basic() -> None:
    auth = authenticator(TokenService(), Credentials(identity_token="refresh-xyz"))
    header, _ = auth.on_unauthorized("reg.example", frozenset(), 'Basic realm="r"', rejected=None)
    assert header is None


def test_unknown_challenge() -> None:
    auth = authenticator(TokenService())
    assert auth.on_unauthorized("reg.example", frozenset(), "Negotiate", rejected=None) == (
        None, "no usable WWW-Authenticate challenge")
    assert auth.on_unauthorized("reg.example", frozenset(), None, rejected=None)[0] is None


def test_concurrent_requests_share_one_fetch() -> None:
    from concurrent.futures import ThreadPoolExecutor

    service = TokenService()
    auth = authenticator(service)
    scopes = frozenset({pull_scope("a")})
    auth.on_unauthorized("reg.example", scopes, CHALLENGE, rejected=None)
    auth.cache.discard("reg.example", scopes, "tok-1")
    with ThreadPoolExecutor(8) as pool:
        headers = set(pool.map(lambda _: auth.authorization("reg.example", scopes), range(32)))
    assert headers == {"Bearer tok-2"} and len(service.requests) == 2


def test_token_fetch_logs_no_token(log_capture: LogCapture) -> None:
    auth = authenticator(TokenService(body={"token": "very-secret-token-value"}), Credentials("alice", "pw-123456"))
    auth.on_unauthorized("reg.example", frozenset({pull_scope("a")}), CHALLENGE, rejected=None)
    entries = log_capture.entries
    assert any(e["event"] == "registry_token_fetched" for e in entries)
    assert_no_secrets([json.dumps(entries, default=str)], ["very-secret-token-value", "pw-123456"])


def test_a_refused_token_names_the_token_server_with_its_port(registry_token: RegistryServer, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """#13 item 9: the 401 of a token server names it with its port, and says where credentials come from."""
    from converter.cli import main

    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    wrong = base64.b64encode(b"someone:wrong-password").decode()
    config.write_text(json.dumps({"auths": {registry_token.host: {"auth": wrong}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config.parent))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    assert main([f"{registry_token.host}/private/app:1", "--dest", f"{registry_token.host}/private/out:1",
                 "-q", "--retries", "1"]) == 1
    err = capsys.readouterr().err
    assert registry_token.issuer is not None
    realm = registry_token.issuer.realm.removeprefix("http://").split("/")[0]
    assert f"from {realm}: 401" in err and f"docker login {registry_token.host}" in err, err
    assert "wrong-password" not in err


def test_a_missing_registry_auth_file_is_an_error(tmp_path: Path) -> None:
    from converter.registry.credentials import DockerConfigCredentials

    creds = DockerConfigCredentials(env={"REGISTRY_AUTH_FILE": str(tmp_path / "nope.json"), "HOME": str(tmp_path)})
    with pytest.raises(AuthError, match=f"REGISTRY_AUTH_FILE names {tmp_path / 'nope.json'}, which does not exist"):
        creds.lookup("reg.example")
