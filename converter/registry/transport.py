"""Request plumbing for the registry client: one ``Call`` sent with auth, manual redirects, the 401
retry, transient-failure retries and status→error mapping, answers read under bounds.

Credentials or a scoped bearer token are attached only to the registry's own origin;
redirects are followed by hand for GET/HEAD (dropping Authorization when the host changes,
refusing https→http); a 401 triggers one re-authentication; error statuses become
RegistryError/AuthError/NotFound carrying the registry's error code; transient failures are
retried by retry.py.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import httpx
import structlog

from converter.errors import AuthError, InvalidReference, NotFound, RegistryError
from converter.reference import Digest
from converter.registry._http import host_port, is_loopback, redact_url, scrub, split_host
from converter.registry.auth import Authenticator, Scopes
from converter.registry.body import decoded_chunks, load_json, read_body
from converter.registry.cancellable import make_cancellable
from converter.registry.credentials import CredentialProvider
from converter.registry.retry import (
    NO_RETRY,
    TRANSIENT_STATUSES,
    RetryPolicy,
    TemporaryRegistryError,
    is_transient,
    parse_retry_after,
    run_with_retry,
)

log = structlog.get_logger()

ERROR_BODY_LIMIT = 64 * 1024
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})



@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds a registry request may take, in its parts.

    ``connect``: to open a connection; ``stall``: a read or write that moves nothing this long
    fails (and is retried); ``pool``: to wait for a pooled connection; ``total``: a whole answer
    read into memory (a manifest, a tag page, a token, an error) must arrive within this, so a
    server dribbling bytes cannot hold a request open forever. Streamed blobs have no total.
    """

    connect: float = 10.0
    stall: float = 60.0
    pool: float = 30.0
    total: float = 300.0

    @classmethod
    def from_seconds(cls, stall: float | None = None, total: float | None = None) -> Timeouts:
        """The defaults with ``stall`` and ``total`` where given (by default total >= stall)."""
        default = cls()
        stall_s = default.stall if stall is None else stall
        return cls(stall=stall_s, total=total if total is not None else max(default.total, stall_s))

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.stall, write=self.stall, pool=self.pool)


DEFAULT_TIMEOUT = Timeouts()


@dataclass(frozen=True, slots=True)
class Call:
    """One logical request; ``Transport.open`` may send it several times (redirects, 401, retries)."""

    what: str  # "pushing blob sha256:… to host/repo": the prefix of every error message
    registry: str  # API host[:port] whose credentials apply
    scopes: Scopes
    method: str
    url: httpx.URL
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Callable[[], bytes | Iterator[bytes]] | None = None  # called once per send
    follow_redirects: bool = False
    allow: frozenset[int] = frozenset()  # error statuses handed back instead of raised


class Transport:
    """Sends ``Call``s for a RegistryClient (see RegistryClient for the parameters). Thread-safe."""

    def __init__(
        self,
        *,
        credentials: CredentialProvider | None,
        plain_http: Iterable[str],
        loopback_plain_http: bool,
        ca_bundle: str | os.PathLike[str] | None,
        verify_tls: bool,
        timeout: Timeouts,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None,
        max_connections: int,
        user_agent: str,
    ) -> None:
        self._plain_http = frozenset(h.lower() for h in plain_http)
        self._warned_in_clear: set[str] = set()
        self._warned_lock = threading.Lock()
        self._loopback_plain_http = loopback_plain_http
        self._retry = retry
        self._total = timeout.total
        self._timeouts = timeout
        verify: ssl.SSLContext | bool = False
        if verify_tls:
            # The system trust store (as skopeo and Docker use), plus a private CA if given.
            verify = ssl.create_default_context()
            if ca_bundle is not None:
                verify.load_verify_locations(cafile=os.fspath(ca_bundle))
        else:
            log.warning("registry_tls_verification_disabled")
        self._http = httpx.Client(
            transport=transport,
            verify=verify,
            timeout=timeout.for_httpx(),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,  # followed by hand: see send
            # No Content-Encoding asked for: a compressed answer could inflate far beyond the
            # size limits (a server that encodes anyway is decoded under them, see body.py).
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
        )
        if transport is None and not make_cancellable(self._http):
            log.debug("registry_cancellation_unavailable",
                      reason="httpx/httpcore internals changed: a cancelled, blocked read ends at its timeout")
        self._auth = Authenticator(
            self._http, credentials=credentials, retry=retry, plain_http_allowed=self.plain_http_allowed,
            registry_plain_http=self.uses_plain_http, in_clear=self._warn_in_clear, total=timeout.total,
        )

    def __repr__(self) -> str:
        return f"Transport(plain_http={sorted(self._plain_http)!r}, {self._auth!r})"

    def close(self) -> None:
        self._http.close()

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    def plain_http_allowed(self, registry: str) -> bool:
        """True if ``host[:port]`` may be spoken to without TLS (a loopback host or a listed one)."""
        name = registry.lower()
        return is_loopback(name) or name in self._plain_http or split_host(name) in self._plain_http

    def _warn_in_clear(self, host: str) -> None:
        """Warn (once per host) that credentials go to a non-loopback ``host`` without TLS."""
        if is_loopback(host):
            return
        with self._warned_lock:
            if host in self._warned_in_clear:
                return
            self._warned_in_clear.add(host)
        log.warning("registry_credentials_in_clear", host=host,
                    reason="plain HTTP to a non-loopback host: anyone on the network can read them")

    def uses_plain_http(self, registry: str) -> bool:
        name = registry.lower()
        if name in self._plain_http or split_host(name) in self._plain_http:
            return True
        return self._loopback_plain_http and is_loopback(name)

    def url(self, host: str, path: str, params: Mapping[str, str] | None = None) -> httpx.URL:
        scheme = "http" if self.uses_plain_http(host) else "https"
        url = httpx.URL(f"{scheme}://{host}{path}")
        return url.copy_merge_params(params) if params else url

    def fetch(self, call: Call, *, limit: int, retry: bool = True) -> tuple[httpx.Response, bytes]:
        """Send and read the whole body (at most ``limit`` bytes), retrying transient failures."""

        def attempt() -> tuple[httpx.Response, bytes]:
            deadline = self._retry.clock() + self._total
            response = self._attempt(call)
            try:
                return response, _read_limited(call, response, limit, deadline, self._retry.clock)
            finally:
                response.close()

        return run_with_retry(attempt, policy=self._retry if retry else NO_RETRY, what=call.what)

    def open(self, call: Call, *, retry: bool = True) -> httpx.Response:
        """Send and return the streaming response (the caller closes it)."""
        return run_with_retry(lambda: self._attempt(call), policy=self._retry if retry else NO_RETRY,
                              what=call.what)

    def _attempt(self, call: Call) -> httpx.Response:
        """One try: authenticate, send, answer one 401 challenge, turn error statuses into errors."""
        authorization = self._auth.authorization(call.registry, call.scopes)
        response = self.send(call, authorization)
        if response.status_code == 401 and self.is_registry_origin(call.registry, response.request.url):
            # A token may have expired mid-job, or this is the first request (no challenge known):
            # either way the Authenticator picks a fresh header for exactly these scopes.
            try:
                retry_with, reason = self._auth.on_unauthorized(
                    call.registry, call.scopes, response.headers.get("WWW-Authenticate"), rejected=authorization
                )
            except BaseException:
                response.close()
                raise
            if retry_with is None:
                raise self._status_error(call, response, hint=reason)
            response.close()
            response = self.send(call, retry_with)
            if response.status_code == 401:
                refused = ("the registry refused our credentials" if self._auth.credentials_for(call.registry)
                           else f"anonymous access was refused: no credentials for {call.registry}")
                raise self._status_error(call, response, hint=refused)
        if response.status_code >= 400 and response.status_code not in call.allow:
            raise self._status_error(call, response)
        return response

    def send(self, call: Call, authorization: str | None) -> httpx.Response:
        """Send, following GET/HEAD redirects by hand so that no credential leaves the registry."""
        url = call.url
        for _ in range(_MAX_REDIRECTS + 1):
            headers = dict(call.headers)
            # Authorization goes to the registry's own origin only: never to a storage backend
            # a blob redirects to (S3 would reject it anyway), nor to any other host.
            if authorization is not None and self.is_registry_origin(call.registry, url):
                headers["Authorization"] = authorization
                if url.scheme == "http":
                    self._warn_in_clear(host_port(url))
            content = call.body() if call.body is not None else None
            request = self._http.build_request(call.method, url, headers=headers, content=content)
            try:
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _transport_error(call, url, exc) from exc
            log.debug("registry_http", method=call.method, url=redact_url(url), status=response.status_code)
            if not (call.follow_redirects and response.status_code in _REDIRECT_STATUSES):
                return response
            response.close()
            location = response.headers.get("Location")
            if not location:
                raise RegistryError(f"{call.what}: {response.status_code} redirect without a Location",
                                    status=response.status_code, method=call.method, url=redact_url(url))
            target = url.join(location)
            self.check_scheme(call, url, target)
            url = target
        raise RegistryError(f"{call.what}: more than {_MAX_REDIRECTS} redirects", method=call.method,
                            url=redact_url(call.url))

    def check_scheme(self, call: Call, current: httpx.URL, target: httpx.URL) -> None:
        """Refuse a redirect or Location that would leave TLS (https→http) or use another scheme."""
        if target.scheme == "https":
            return
        plain_ok = current.scheme == "http" and self.plain_http_allowed(host_port(target))
        if target.scheme == "http" and plain_ok:
            return
        raise RegistryError(f"{call.what}: refusing to follow {redact_url(current)} to {redact_url(target)}: "
                            "it would leave HTTPS", method=call.method, url=redact_url(current))

    def is_registry_origin(self, registry: str, url: httpx.URL) -> bool:
        base = self.url(registry, "/")
        return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)

    def _status_error(self, call: Call, response: httpx.Response, *, hint: str = "") -> RegistryError:
        """The exception for an error status, with the registry's error code and message."""
        status = response.status_code
        deadline = self._retry.clock() + self._total
        code, message = ("", "") if call.method == "HEAD" else _error_details(response, deadline, self._retry.clock)
        response.close()
        text = f"{call.what}: {status} {code or scrub(response.reason_phrase, 100)}"
        if message:
            text += f": {message}"
        if hint:
            text += f" ({hint})"
        url = redact_url(response.request.url)
        if status in (401, 403):
            return AuthError(text, status=status, code=code, method=call.method, url=url)
        if status == 404:
            return NotFound(text, status=status, code=code, method=call.method, url=url)
        if status in TRANSIENT_STATUSES:
            return TemporaryRegistryError(text, status=status, code=code, method=call.method, url=url,
                                          retry_after=parse_retry_after(response.headers.get("Retry-After")))
        return RegistryError(text, status=status, code=code, method=call.method, url=url)

    def next_page(self, call: Call, response: httpx.Response) -> httpx.URL | None:
        """The ``rel="next"`` target of a Link header (RFC 8288), which must stay on the registry."""
        for target, params in _LINK_RE.findall(response.headers.get("Link", "")):
            if re.search(r'rel\s*=\s*"?next"?', params):
                url = response.request.url.join(target.strip())
                if not self.is_registry_origin(call.registry, url):
                    raise RegistryError(f"{call.what}: the next page is on another host", url=redact_url(url))
                return url
        return None

    def location(self, call: Call, response: httpx.Response) -> httpx.URL:
        """The upload URL from a Location header; relative ones resolve against the request."""
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{call.what}: the registry sent no Location for the upload",
                                status=response.status_code, method=call.method, url=redact_url(call.url))
        target = response.request.url.join(location)
        self.check_scheme(call, response.request.url, target)
        return target


_LINK_RE = re.compile(r"<([^>]*)>\s*((?:;[^,;]*)*)")


def _read_limited(call: Call, response: httpx.Response, limit: int, deadline: float,
                  clock: Callable[[], float]) -> bytes:
    try:
        return read_body(response, what=call.what, limit=limit, deadline=deadline, clock=clock)
    except httpx.HTTPError as exc:
        raise _transport_error(call, response.request.url, exc) from exc


def _error_details(response: httpx.Response, deadline: float, clock: Callable[[], float]) -> tuple[str, str]:
    """(code, message) from the spec's ``{"errors": [{"code", "message", "detail"}]}`` body; what
    arrived by ``deadline`` (``clock`` time) is all that is read."""
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in decoded_chunks(response, what=""):
            parts.append(chunk)
            total += len(chunk)
            if total > ERROR_BODY_LIMIT or clock() > deadline:
                break
    except (httpx.HTTPError, RegistryError):
        return "", ""
    body = b"".join(parts)[:ERROR_BODY_LIMIT]
    try:
        data = load_json(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        # Plain-text bodies (proxies, S3 XML/HTML are skipped) may still say something useful.
        return "", (scrub(text, 200) if text and not text.startswith("<") else "")
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return "", ""
    codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code")]
    messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    return scrub(",".join(codes), 100), scrub("; ".join(messages))


def _transport_error(call: Call, url: httpx.URL, exc: httpx.HTTPError) -> RegistryError:
    """Convert an httpx failure; connection and timeout problems are transient, TLS failures not."""
    detail = scrub(str(exc)) or type(exc).__name__
    kinds: dict[type[httpx.HTTPError], str] = {
        httpx.ConnectError: "cannot connect",
        httpx.ConnectTimeout: "timed out connecting",
        httpx.ReadTimeout: "timed out reading",
        httpx.WriteTimeout: "timed out writing",
        httpx.PoolTimeout: "timed out waiting for a connection",
        httpx.ReadError: "connection lost",
        httpx.WriteError: "connection lost",
        httpx.RemoteProtocolError: "connection lost",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    message = f"{call.what}: {kind}: {detail}"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return RegistryError(f"{call.what}: TLS certificate verification failed: {scrub(str(cause))}",
                                 method=call.method, url=redact_url(url))
        cause = cause.__cause__ or cause.__context__
    if is_transient(exc):
        return TemporaryRegistryError(message, method=call.method, url=redact_url(url))
    return RegistryError(message, method=call.method, url=redact_url(url))



def check_reported_digest(call: Call, response: httpx.Response, digest: Digest | None, *,
                           data: bytes | None = None) -> None:
    """Docker-Content-Digest (optional in the spec) must match what we sent or received."""
    header = response.headers.get("Docker-Content-Digest")
    if not header:
        return
    url = redact_url(response.request.url)
    try:
        claimed = Digest.parse(header.strip())
    except InvalidReference:
        raise RegistryError(f"{call.what}: malformed Docker-Content-Digest header", method=call.method,
                            url=url) from None
    if data is not None:
        actual = Digest.from_bytes(data, claimed.algorithm)
        if actual != claimed:
            raise RegistryError(f"{call.what}: Docker-Content-Digest says {claimed}, the content is {actual}",
                                method=call.method, url=url)
    elif digest is not None and claimed.algorithm == digest.algorithm and claimed != digest:
        raise RegistryError(f"{call.what}: the registry stored it as {claimed}", method=call.method, url=url)

