"""Registry authentication: WWW-Authenticate challenges, Basic auth, and bearer tokens cached per scope.

The flow is the distribution token spec (docs/spec/auth/token.md in distribution): a request
without credentials gets ``401`` with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``;
the client asks the realm for a token for the scopes it needs and retries. Tokens are scoped to
repositories and actions, so they are cached per (registry, scope set) — never one token per
client (the oras-py bug: a pull token for repository A reused to push to B). Once a registry's
challenge is known, tokens for new scopes are fetched before the request, saving a 401 round trip.

Security rules kept here: a token is only requested from the realm the registry named, over
HTTPS unless that realm host is allowed plain HTTP (loopback or configured); tokens and Basic
credentials are only ever attached to the registry they belong to (the client enforces the
host); nothing secret is logged or put into an exception.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import structlog

from converter.errors import AuthError, RegistryError
from converter.registry._http import host_port, redact_url, scrub
from converter.registry.body import load_json, read_body
from converter.registry.credentials import CredentialProvider, Credentials
from converter.registry.retry import (
    TRANSIENT_STATUSES,
    RetryPolicy,
    TemporaryRegistryError,
    is_transient,
    parse_retry_after,
    run_with_retry,
)

log = structlog.get_logger()

# The token spec: "If no expires_in is given, the token should be assumed to expire in 60 s".
DEFAULT_TOKEN_LIFETIME = 60.0
# Refresh a little before the registry would refuse the token (never more than 10 s early).
_EARLY_REFRESH_FRACTION = 0.1
_EARLY_REFRESH_MAX = 10.0
_MAX_TOKEN_RESPONSE = 1 << 20
_CLIENT_ID = "erofs-converter"


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """An access request such as ``repository:library/alpine:pull,push`` (token spec "scope")."""

    resource_type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.resource_type}:{self.name}:{','.join(self.actions)}"

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse ``type:name:action,action``; the name may contain colons (``registry:catalog:*``)."""
        resource_type, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not resource_type or not name:
            raise ValueError(f"malformed scope {text!r}")
        return cls(resource_type, name, tuple(sorted(a for a in actions.split(",") if a)))


def pull_scope(repository: str) -> Scope:
    return Scope("repository", repository, ("pull",))


def push_scope(repository: str) -> Scope:
    """Pushing also needs pull: a push starts with HEAD requests for existing blobs."""
    return Scope("repository", repository, ("pull", "push"))


Scopes = frozenset[Scope]


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge from a WWW-Authenticate header; the scheme is lower case, as are param names."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> list[str]:
        """Scopes the registry said the request needs (space-separated in one parameter)."""
        return self.params.get("scope", "").split()

    def for_registry(self) -> Challenge:
        """The challenge without what belonged to one request (its scope, its error), to reuse
        for the registry's later requests."""
        kept = {k: v for k, v in self.params.items() if k not in ("scope", "error", "error_description")}
        return Challenge(self.scheme, kept)


_TOKEN_CHARS = re.compile(r"[^\s,=\"]+")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate value (RFC 9110 §11.6.1) into challenges.

    Handles several challenges in one header (``Bearer realm="a", Basic realm="b"``), quoted
    strings containing commas and backslash escapes, and bare token values. Malformed parts are
    skipped rather than raising: the registry's answer is input, and a best effort beats a crash.
    """
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    pos, end = 0, len(header)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < end and header[pos] in chars:
            pos += 1

    while pos < end:
        skip(" \t,")
        match = _TOKEN_CHARS.match(header, pos)
        if match is None:
            # A stray "=" or quoted string where a name should be: skip it (a quoted one whole).
            pos = _parse_value(header, pos)[1] if header[pos] == '"' else pos + 1
            continue
        word = match.group()
        pos = match.end()
        skip(" \t")
        if pos < end and header[pos] == "=" and challenges:
            pos += 1
            skip(" \t")
            value, pos = _parse_value(header, pos)
            params[word.lower()] = value
        elif pos < end and header[pos] == "=":
            pos += 1  # a parameter before any scheme: ignore it
            _, pos = _parse_value(header, pos)
        else:
            params = {}
            challenges.append(Challenge(word.lower(), params))
    return challenges


def _parse_value(header: str, pos: int) -> tuple[str, int]:
    """A token or quoted-string starting at ``pos``; returns the value and the position after it."""
    if pos < len(header) and header[pos] == '"':
        out: list[str] = []
        pos += 1
        while pos < len(header) and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < len(header):
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    match = _TOKEN_CHARS.match(header, pos)
    if match is None:
        return "", pos
    return match.group(), match.end()


def token_lifetime(body: Mapping[str, object], *, now: float) -> float:
    """Seconds a token from this token-endpoint answer stays valid, counted from ``now`` (epoch).

    ``expires_in`` counts from ``issued_at`` (RFC 3339). The issuer's clock may differ from ours,
    so issued_at is trusted only to shorten the lifetime by at most half: a skewed clock then
    costs an early refresh, never a refresh loop.
    """
    raw = body.get("expires_in")
    lifetime = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0 \
        else DEFAULT_TOKEN_LIFETIME
    issued = _parse_rfc3339(body.get("issued_at"))
    if issued is not None:
        age = now - issued
        if age > 0:
            lifetime -= min(age, lifetime / 2)
    return lifetime


def _parse_rfc3339(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    # Go prints up to 9 fraction digits; datetime takes 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


class TokenCache:
    """Bearer tokens keyed by (registry, scope set), each with its own expiry. Thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, Scopes], tuple[str, float]] = {}

    def get(self, registry: str, scopes: Scopes) -> str | None:
        with self._lock:
            entry = self._tokens.get((registry, scopes))
            if entry is None:
                return None
            token, expires = entry
            if self._clock() >= expires:
                del self._tokens[(registry, scopes)]
                return None
            return token

    def put(self, registry: str, scopes: Scopes, token: str, lifetime: float) -> None:
        early = min(_EARLY_REFRESH_MAX, lifetime * _EARLY_REFRESH_FRACTION)
        with self._lock:
            self._tokens[(registry, scopes)] = (token, self._clock() + lifetime - early)

    def discard(self, registry: str, scopes: Scopes, token: str) -> None:
        """Forget ``token`` — but not a newer one another thread stored meanwhile."""
        with self._lock:
            entry = self._tokens.get((registry, scopes))
            if entry is not None and entry[0] == token:
                del self._tokens[(registry, scopes)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)

    def __repr__(self) -> str:
        return f"TokenCache(entries={len(self)})"


class Authenticator:
    """Chooses the Authorization header for registry requests and handles 401 challenges.

    Shared by all threads of a RegistryClient. ``plain_http_allowed(host)`` says whether a realm
    host may be contacted without TLS, ``registry_plain_http(registry)`` whether the registry
    itself is (a realm never downgrades an HTTPS registry to plain HTTP), and ``in_clear(host)``
    is told whenever credentials go to ``host`` without TLS.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        credentials: CredentialProvider | None,
        retry: RetryPolicy,
        plain_http_allowed: Callable[[str], bool],
        registry_plain_http: Callable[[str], bool] = lambda registry: False,
        in_clear: Callable[[str], None] = lambda host: None,
        cache: TokenCache | None = None,
        wall_clock: Callable[[], float] = time.time,
        total: float = 300.0,
    ) -> None:
        self._http = http
        self._provider = credentials
        self._retry = retry
        self._plain_http_allowed = plain_http_allowed
        self._registry_plain_http = registry_plain_http
        self._in_clear = in_clear
        self.cache = cache if cache is not None else TokenCache()
        self._wall_clock = wall_clock
        self._total = total  # seconds a token answer may take to arrive in full
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._credentials: dict[str, Credentials | None] = {}
        self._fetch_locks: dict[tuple[str, Scopes], threading.Lock] = {}

    def __repr__(self) -> str:
        return f"Authenticator(registries={sorted(self._challenges)!r}, {self.cache!r})"

    def credentials_for(self, registry: str) -> Credentials | None:
        with self._lock:
            if registry in self._credentials:
                return self._credentials[registry]
        found = self._provider.lookup(registry) if self._provider is not None else None
        with self._lock:
            self._credentials[registry] = found
        return found

    def authorization(self, registry: str, scopes: Scopes) -> str | None:
        """The header to send up front: None until the registry has challenged us once."""
        with self._lock:
            challenge = self._challenges.get(registry)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials_for(registry)
            return creds.basic_authorization() if creds is not None and creds.has_password else None
        return "Bearer " + self._token(registry, challenge, scopes, rejected=None)

    def on_unauthorized(
        self, registry: str, scopes: Scopes, header: str | None, *, rejected: str | None
    ) -> tuple[str | None, str]:
        """React to a 401: returns (header to retry with, or None if hopeless; reason if hopeless)."""
        challenges = parse_www_authenticate(header or "")
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            with self._lock:
                self._challenges[registry] = bearer.for_registry()
            token = self._token(registry, bearer, scopes, rejected=_bearer_token(rejected))
            retry_with = "Bearer " + token
            if retry_with == rejected:
                return None, "the registry refused a fresh token"
            return retry_with, ""
        if basic is not None:
            with self._lock:
                self._challenges[registry] = basic
            creds = self.credentials_for(registry)
            if creds is None or not creds.has_password:
                return None, f"no user name and password for {registry}"
            retry_with = creds.basic_authorization()
            if retry_with == rejected:
                return None, f"the registry refused the credentials for {registry}"
            return retry_with, ""
        return None, "no usable WWW-Authenticate challenge"

    def _token(self, registry: str, challenge: Challenge, scopes: Scopes, *, rejected: str | None) -> str:
        """A cached token for the scopes, or a fresh one; ``rejected`` is dropped from the cache."""
        if rejected is not None:
            self.cache.discard(registry, scopes, rejected)
        with self._lock:
            fetch_lock = self._fetch_locks.setdefault((registry, scopes), threading.Lock())
        # One fetch per key at a time: parallel layer uploads to one repository share a token.
        with fetch_lock:
            token = self.cache.get(registry, scopes)
            if token is not None:
                return token
            token, lifetime = self._fetch_token(registry, challenge, scopes)
            self.cache.put(registry, scopes, token, lifetime)
            return token

    def _fetch_token(self, registry: str, challenge: Challenge, scopes: Scopes) -> tuple[str, float]:
        realm = _checked_realm(challenge.realm, registry, self._plain_http_allowed(host_port_of(challenge.realm))
                               and self._registry_plain_http(registry))
        what = f"fetching a token for {registry} from {realm.host}" + (f":{realm.port}" if realm.port else "")
        scope_list = sorted({str(s) for s in scopes} | set(challenge.scopes))
        creds = self.credentials_for(registry)

        def attempt() -> tuple[str, float]:
            if creds is not None and creds.identity_token:
                # OAuth2 refresh-token grant (token spec, oauth.md): what `docker login` stores
                # as identitytoken for registries with OAuth (e.g. Azure).
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "service": challenge.service, "client_id": _CLIENT_ID,
                        "scope": " ".join(scope_list)}
                request = self._http.build_request("POST", realm, data=form)
                if realm.scheme == "http":
                    self._in_clear(host_port(realm))
            else:
                params: list[tuple[str, str | int | float | bool | None]] = []
                if challenge.service:
                    params.append(("service", challenge.service))
                params += [("scope", s) for s in scope_list]
                headers = {}
                if creds is not None and creds.has_password:
                    params.append(("account", creds.username))
                    headers["Authorization"] = creds.basic_authorization()
                    if realm.scheme == "http":
                        self._in_clear(host_port(realm))
                request = self._http.build_request("GET", realm, params=params, headers=headers)
            try:
                response = self._http.send(request, stream=True)
                try:
                    # Only a token answer is read; an error status says enough.
                    body = read_body(response, what=what, limit=_MAX_TOKEN_RESPONSE,
                                     deadline=time.monotonic() + self._total) if response.status_code == 200 else b""
                finally:
                    response.close()
            except httpx.HTTPError as exc:
                message = f"{what}: {type(exc).__name__}: {scrub(str(exc))}"
                if is_transient(exc):
                    raise TemporaryRegistryError(message, method=request.method, url=redact_url(realm)) from exc
                raise RegistryError(message, method=request.method, url=redact_url(realm)) from exc
            return self._token_from(response, body, what, request.method, realm)

        token, lifetime = run_with_retry(attempt, policy=self._retry, what=what)
        log.debug("registry_token_fetched", registry=registry, scopes=scope_list,
                  lifetime=round(lifetime, 1), refresh_grant=bool(creds and creds.identity_token))
        return token, lifetime

    def _token_from(self, response: httpx.Response, content: bytes, what: str, method: str,
                    realm: httpx.URL) -> tuple[str, float]:
        status = response.status_code
        url = redact_url(realm)
        if status != 200:
            message = f"{what}: {status} {scrub(response.reason_phrase, 100)}"
            if status in TRANSIENT_STATUSES:
                raise TemporaryRegistryError(message, status=status, method=method, url=url,
                                             retry_after=parse_retry_after(response.headers.get("Retry-After")))
            if status in (400, 401, 403):
                raise AuthError(message + _credentials_hint(what), status=status, method=method, url=url)
            raise RegistryError(message, status=status, method=method, url=url)
        try:
            body = load_json(content)
        except ValueError:
            body = None  # not chained: the decoder's message could quote the token
        if not isinstance(body, dict):
            raise AuthError(f"{what}: the answer is not a JSON object", method=method, url=url)
        # "token" is the distribution spec's name; OAuth2 endpoints answer "access_token".
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"{what}: the answer holds no token", method=method, url=url)
        return token, token_lifetime(body, now=self._wall_clock())


def _bearer_token(header: str | None) -> str | None:
    if header is not None and header.startswith("Bearer "):
        return header[len("Bearer ") :]
    return None


def host_port_of(realm: str) -> str:
    """``host[:port]`` of a realm URL ("" if it is not one)."""
    try:
        url = httpx.URL(realm)
    except httpx.InvalidURL:
        return ""
    return host_port(url) if url.host else ""


def _checked_realm(realm: str, registry: str, plain_ok: bool) -> httpx.URL:
    """The realm as a URL, refusing ones that would send credentials in clear text: plain HTTP
    only if ``plain_ok`` (the registry itself is spoken to without TLS and the realm's host
    may be), never from an HTTPS registry."""
    what = f"authenticating to {registry}"
    try:
        url = httpx.URL(realm)
    except httpx.InvalidURL as exc:
        raise AuthError(f"{what}: the registry named an invalid token realm") from exc
    if url.scheme == "https" and url.host:
        return url
    if url.scheme == "http" and url.host and plain_ok:
        return url
    raise AuthError(f"{what}: refusing token realm {redact_url(url)}: it must be an https URL")


def _credentials_hint(what: str) -> str:
    """What to check after a token server refused us (``what`` names the registry)."""
    registry = what.removeprefix("fetching a token for ").split(" from ", 1)[0]
    return (f" (check the credentials for {registry}: `docker login {registry}`; they are read from "
            "$REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or ~/.docker/config.json)")

