"""Real registries for tests: Debian's docker-registry (distribution 2.8) on loopback, three ways.

* open: no authentication;
* tls: no authentication, HTTPS with a self-signed certificate for 127.0.0.1 (``.ca_cert``);
* basic: htpasswd (bcrypt) users;
* token: bearer tokens from ``TokenIssuer``, a tiny token service on a loopback thread that signs
  real RS256 JWTs with a self-signed certificate the registry trusts (``auth.token`` with
  ``rootcertbundle``; the JWT header carries the certificate in ``x5c``).

The session-scoped fixtures ``registry_open``, ``registry_tls``, ``registry_basic`` and
``registry_token`` are defined here; a test package uses them by importing them into its conftest.py. If the registry
cannot start, the fixture skips with the reason (CI turns skips into failures).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from converter.testing.localregistry import free_port, stop_process

PROGRAM = "docker-registry"
TOKEN_SERVICE = "erofs-test-registry"
TOKEN_ISSUER = "erofs-test-issuer"
# distribution accepts a token up to 60 s after its "exp" (and before its "nbf"): its Leeway.
REGISTRY_TOKEN_LEEWAY = 60
_START_TIMEOUT = 20.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class TokenRequest:
    """What the issuer was asked for (for assertions): who, which scopes, which grant."""

    user: str  # "" for anonymous
    scopes: tuple[str, ...]
    grant: str  # "basic", "refresh_token" or "anonymous"


@dataclass
class TokenPolicy:
    """How the issuer answers; tests change it with ``TokenIssuer.policy_override``.

    ``lifetime`` is how long the registry accepts a token; ``advertised_expires_in`` what the
    issuer tells the client (None: the truth). Advertising more than the real lifetime makes
    the registry refuse a token the client still thinks valid — an expiry "mid-job".
    """

    lifetime: int = 300
    advertised_expires_in: int | None = None
    anonymous_pull_prefix: str = "public/"  # anonymous users may pull repositories under this


class TokenIssuer:
    """A distribution token service (docs/spec/auth/token.md) on a loopback thread.

    Users with the right password (Basic) or identity token (OAuth2 refresh-token grant) get
    every action they ask for; anonymous users get ``pull`` on repositories under
    ``policy.anonymous_pull_prefix`` and nothing else; wrong credentials get 401.
    """

    def __init__(self, directory: Path, users: dict[str, str], identity_tokens: dict[str, str]) -> None:
        self.users = users
        self.identity_tokens = identity_tokens
        self.policy = TokenPolicy()
        self.requests: list[TokenRequest] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert_path = directory / "token-issuer.pem"
        self._cert = self._make_certificate()
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-issuer", daemon=True)

    @property
    def realm(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/token"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @contextlib.contextmanager
    def policy_override(self, **changes: object) -> Iterator[TokenPolicy]:
        """Temporarily change the policy (the fixture is shared by the whole session)."""
        saved = self.policy
        self.policy = TokenPolicy(**{**saved.__dict__, **changes})
        try:
            yield self.policy
        finally:
            self.policy = saved

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _make_certificate(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "erofs-converter test token issuer")])
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def sign(self, claims: dict[str, object]) -> str:
        """An RS256 JWT whose header carries our certificate (x5c: standard base64 DER, RFC 7515)."""
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode("ascii")],
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def _grant(self, user: str, scopes: list[str]) -> list[dict[str, object]]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            resource_type, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if not user:
                allowed = name.startswith(self.policy.anonymous_pull_prefix)
                wanted = [a for a in wanted if a == "pull"] if allowed else []
            if wanted:
                access.append({"type": resource_type, "name": name, "actions": wanted})
        return access

    def issue(self, user: str, scopes: list[str], grant: str) -> dict[str, object]:
        """The token endpoint's JSON answer for an authenticated (or anonymous) request."""
        policy = self.policy
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": TOKEN_SERVICE,
            # The registry adds its Leeway to "exp": subtract it so tokens die on time.
            "exp": now + policy.lifetime - REGISTRY_TOKEN_LEEWAY,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self._grant(user, scopes),
        }
        token = self.sign(claims)
        with self._lock:
            self.requests.append(TokenRequest(user, tuple(scopes), grant))
            self.issued.append(token)
        expires_in = policy.advertised_expires_in or policy.lifetime
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued_at}

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean (and free of query strings)

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path != "/token" or query.get("service") != [TOKEN_SERVICE]:
                    self._answer(400, {"error": "unknown service"})
                    return
                user = ""
                grant = "anonymous"
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if issuer.users.get(name) != password:
                        self._answer(401, {"error": "invalid credentials"})
                        return
                    user, grant = name, "basic"
                self._answer(200, issuer.issue(user, query.get("scope", []), grant))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                if form.get("grant_type") != ["refresh_token"] or form.get("service") != [TOKEN_SERVICE]:
                    self._answer(400, {"error": "unsupported_grant_type"})
                    return
                presented = (form.get("refresh_token") or [""])[0]
                user = next((u for u, t in issuer.identity_tokens.items() if t == presented), None)
                if user is None:
                    self._answer(401, {"error": "invalid_grant"})
                    return
                scopes = " ".join(form.get("scope", [])).split()
                self._answer(200, issuer.issue(user, scopes, "refresh_token"))

        return Handler


@dataclass
class RegistryServer:
    """A running docker-registry: ``host`` is "127.0.0.1:PORT"; credentials if it has any."""

    host: str
    kind: str  # "open", "basic" or "token"
    root: Path
    username: str | None = None
    # Kept out of the repr: pytest prints fixture values in failure reports.
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    issuer: TokenIssuer | None = None
    ca_cert: Path | None = None  # the certificate to trust for a TLS registry
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_cert else 'http'}://{self.host}"

    def secrets(self) -> list[str]:
        """Every secret a test must never see in output: passwords, identity and bearer tokens."""
        found = [s for s in (self.password, self.identity_token) if s]
        if self.password and self.username:
            found.append(base64.b64encode(f"{self.username}:{self.password}".encode()).decode())
        if self.issuer is not None:
            found.extend(self.issuer.issued)
        return found

    def write_docker_config(self, directory: Path, *, style: str = "auth") -> Path:
        """Write ``directory/config.json`` with this registry's credentials; returns its path.

        ``style``: "auth" (base64 user:password), "userpass" (username/password fields) or
        "identitytoken" (OAuth2 refresh token, token registries only).
        """
        directory.mkdir(parents=True, exist_ok=True)
        entry: dict[str, str] = {}
        if style == "auth" and self.username and self.password:
            entry["auth"] = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        elif style == "userpass" and self.username and self.password:
            entry = {"username": self.username, "password": self.password}
        elif style == "identitytoken" and self.identity_token:
            entry = {"identitytoken": self.identity_token}
        elif style not in ("auth", "userpass", "identitytoken"):
            raise ValueError(f"unknown docker config style {style!r}")
        path = directory / "config.json"
        path.write_text(json.dumps({"auths": {self.host: entry}}, indent=2))
        return path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "registry.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""


def _config_yaml(root: Path, port: int, auth_yaml: str, tls: tuple[Path, Path] | None) -> str:
    tls_yaml = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n{tls_yaml}"
        f"{auth_yaml}"
    )


def _self_signed_loopback_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "erofs-converter test registry")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "registry-cert.pem", directory / "registry-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _htpasswd(path: Path, username: str, password: str) -> None:
    exe = shutil.which("htpasswd")
    if exe is None:
        pytest.skip("htpasswd (apache2-utils) is not installed: cannot test basic auth")
    # -C 4: the cheapest bcrypt cost; the registry checks it on every request.
    result = subprocess.run([exe, "-B", "-C", "4", "-b", "-n", username, password],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"htpasswd failed (exit {result.returncode}): {result.stderr.strip()}")
    path.write_text(result.stdout)


def _wait_ready(server: RegistryServer, process: subprocess.Popen[bytes]) -> str | None:
    """None once /v2/ answers 200 or 401, else why it never did."""
    deadline = time.monotonic() + _START_TIMEOUT
    verify = ssl.create_default_context(cafile=str(server.ca_cert)) if server.ca_cert else True
    with httpx.Client(timeout=1.0, verify=verify) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return f"{PROGRAM} exited with {process.returncode}:\n{server.log_tail()}"
            try:
                if client.get(f"{server.url}/v2/").status_code in (200, 401):
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    return f"{PROGRAM} did not answer on {server.url}/v2/ within {_START_TIMEOUT:g} s:\n{server.log_tail()}"


@contextlib.contextmanager
def run_registry(root: Path, kind: str = "open") -> Iterator[RegistryServer]:
    """Start docker-registry of ``kind`` ("open", "tls", "basic", "token") with storage under ``root``.

    Skips the calling test (loudly) if the registry cannot run here. Always stops what it started.
    """
    exe = shutil.which(PROGRAM)
    if exe is None:
        pytest.skip(f"{PROGRAM} is not installed (Debian package docker-registry): registry tests cannot run")
    root.mkdir(parents=True, exist_ok=True)
    username = password = identity_token = None
    issuer: TokenIssuer | None = None
    auth_yaml = ""
    tls = _self_signed_loopback_cert(root) if kind == "tls" else None
    if kind == "basic":
        username, password = "tester", "pw-" + secrets.token_urlsafe(12)
        _htpasswd(root / "htpasswd", username, password)
        auth_yaml = f"auth:\n  htpasswd:\n    realm: erofs-test\n    path: {root / 'htpasswd'}\n"
    elif kind == "token":
        username, password = "tester", "pw-" + secrets.token_urlsafe(12)
        identity_token = "idt-" + secrets.token_urlsafe(16)
        issuer = TokenIssuer(root, {username: password}, {username: identity_token})
        issuer.start()
        auth_yaml = (
            f"auth:\n  token:\n    realm: {issuer.realm}\n    service: {TOKEN_SERVICE}\n"
            f"    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {issuer.cert_path}\n"
        )
    elif kind not in ("open", "tls"):
        raise ValueError(f"unknown registry kind {kind!r}")

    process: subprocess.Popen[bytes] | None = None
    try:
        failure = ""
        for _ in range(3):  # the free port may be taken between probing and binding
            port = free_port()
            config = root / "config.yml"
            config.write_text(_config_yaml(root, port, auth_yaml, tls))
            server = RegistryServer(f"127.0.0.1:{port}", kind, root, username, password, identity_token, issuer,
                                    ca_cert=tls[0] if tls else None)
            with open(root / "registry.log", "wb") as log:
                process = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
            server.process = process
            reason = _wait_ready(server, process)
            if reason is None:
                break
            failure = reason
            stop_process(process)
            process = None
        else:
            pytest.skip(f"cannot start {PROGRAM} ({kind}): {failure}")
        yield server
    finally:
        if process is not None:
            stop_process(process)
        if issuer is not None:
            issuer.stop()


@pytest.fixture(scope="session")
def registry_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry without authentication."""
    with run_registry(tmp_path_factory.mktemp("registry-open"), "open") as server:
        yield server


@pytest.fixture(scope="session")
def registry_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry without authentication behind HTTPS; trust ``.ca_cert`` to talk to it."""
    with run_registry(tmp_path_factory.mktemp("registry-tls"), "tls") as server:
        yield server


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with htpasswd basic auth; ``.username``/``.password`` may push and pull."""
    with run_registry(tmp_path_factory.mktemp("registry-basic"), "basic") as server:
        yield server


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with bearer-token auth from ``.issuer``; ``.username``/``.password`` may do anything."""
    with run_registry(tmp_path_factory.mktemp("registry-token"), "token") as server:
        yield server
