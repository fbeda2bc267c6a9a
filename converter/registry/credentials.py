"""Registry credentials from Docker/Podman config files and credential helpers, never printed.

Where Docker and containers/image look, in order: ``$REGISTRY_AUTH_FILE`` (Podman/skopeo's
auth.json, same ``auths`` format), then ``$DOCKER_CONFIG/config.json`` or, without
``$DOCKER_CONFIG``, ``~/.docker/config.json``. The first file that knows the registry wins.
Within one file Docker's order applies: a ``credHelpers`` entry for the registry, else the
``credsStore`` helper, else the ``auths`` entry (base64 ``auth``, ``username``/``password``, or an
``identitytoken`` for OAuth2 refresh). Keys may carry a scheme and a path
(``https://index.docker.io/v1/`` is Docker Hub); keys naming a namespace inside a registry
(``quay.io/org``) are Podman's per-repository credentials and are not used for a whole registry.

Secrets never reach logs, reprs or exception messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from converter.errors import AuthError

log = structlog.get_logger()

# The key Docker uses for Docker Hub in config.json and the URL it hands to credential helpers.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# A helper answering with this user name returns an identity (OAuth2 refresh) token as Secret.
_HELPER_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A user name with a password, or an identity token; the repr hides the secrets."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}"]
        if self.password:
            parts.append("password=<redacted>")
        if self.identity_token:
            parts.append("identity_token=<redacted>")
        return f"Credentials({', '.join(parts)})"

    __str__ = __repr__

    @property
    def has_password(self) -> bool:
        return bool(self.username and self.password)

    def basic_authorization(self) -> str:
        """The ``Authorization`` header value for HTTP Basic auth."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


class CredentialProvider(Protocol):
    """Finds credentials for a registry host (``host[:port]``); None means anonymous."""

    def lookup(self, registry: str) -> Credentials | None: ...


class StaticCredentials:
    """Credentials given directly (flags, tests), keyed by registry host."""

    def __init__(self, by_registry: Mapping[str, Credentials]) -> None:
        self._by_registry = {normalise_registry(k): v for k, v in by_registry.items()}

    def lookup(self, registry: str) -> Credentials | None:
        return self._by_registry.get(normalise_registry(registry))

    def __repr__(self) -> str:
        return f"StaticCredentials(registries={sorted(self._by_registry)!r})"


def normalise_registry(name: str) -> str:
    """``host[:port]`` in lower case; all Docker Hub spellings become ``docker.io``."""
    host = name.lower()
    return "docker.io" if host in _DOCKER_HUB_NAMES else host


def _key_host(key: str) -> str | None:
    """The registry a config key names, or None if it names a namespace within a registry."""
    text = key.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    host, slash, path = text.partition("/")
    # Docker writes "https://index.docker.io/v1/"; old configs also carry "/v2/" style paths.
    if slash and path.rstrip("/") not in ("", "v1", "v2"):
        return None
    return normalise_registry(host) if host else None


def default_config_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """The config files to consult, in order of precedence."""
    env = os.environ if env is None else env
    paths: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    else:
        home = env.get("HOME") or str(Path.home())
        paths.append(Path(home) / ".docker" / "config.json")
    return paths


class DockerConfigCredentials:
    """Credentials from Docker/Podman config files and ``docker-credential-*`` helpers.

    Files are read on first use; answers (including "no credentials") are cached per registry,
    because helpers may be slow or prompt a keychain. Safe to share between threads.
    """

    def __init__(
        self,
        *,
        paths: Sequence[Path] | None = None,
        env: Mapping[str, str] | None = None,
        helper_timeout: float = _HELPER_TIMEOUT,
    ) -> None:
        self._env = dict(os.environ if env is None else env)
        self._paths = list(paths) if paths is not None else default_config_paths(self._env)
        self._helper_timeout = helper_timeout
        self._lock = threading.Lock()
        self._configs: list[tuple[Path, dict[str, Any]]] | None = None
        self._cache: dict[str, Credentials | None] = {}
        # Set but missing is a mistake worth an error, not a silent fallback to anonymous access.
        self._auth_file = self._env.get("REGISTRY_AUTH_FILE") if paths is None else None

    def __repr__(self) -> str:
        return f"DockerConfigCredentials(paths={[str(p) for p in self._paths]!r})"

    def lookup(self, registry: str) -> Credentials | None:
        host = normalise_registry(registry)
        with self._lock:
            if host in self._cache:
                return self._cache[host]
            if self._configs is None:
                if self._auth_file and not Path(self._auth_file).is_file():
                    raise AuthError(f"REGISTRY_AUTH_FILE names {self._auth_file}, which does not exist")
                self._configs = [(p, c) for p in self._paths if (c := _load_config(p)) is not None]
            found = None
            for path, config in self._configs:
                found = self._from_config(path, config, host)
                if found is not None:
                    break
            self._cache[host] = found
        log.debug("registry_credentials", registry=host, found=found is not None,
                  kind=_describe_kind(found))
        return found

    def _from_config(self, path: Path, config: dict[str, Any], host: str) -> Credentials | None:
        helpers = config.get("credHelpers") or {}
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if isinstance(helper, str) and helper and _key_host(key) == host:
                    return self._run_helper(helper, host)
        store = config.get("credsStore")
        if isinstance(store, str) and store:
            found = self._run_helper(store, host)
            if found is not None:
                return found
        return _from_auths(path, config.get("auths"), host)

    def _run_helper(self, helper: str, host: str) -> Credentials | None:
        """Ask ``docker-credential-HELPER get``; the server URL goes on stdin (Docker's protocol)."""
        program = f"docker-credential-{helper}"
        server = DOCKER_HUB_CONFIG_KEY if host == "docker.io" else host
        what = f"getting credentials for {host} from {program}"
        try:
            proc = subprocess.run(
                [program, "get"],
                input=server,
                capture_output=True,
                text=True,
                timeout=self._helper_timeout,
                env=self._env,
                check=False,
            )
        except FileNotFoundError as exc:
            raise AuthError(f"{what}: {program} not found on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise AuthError(f"{what}: timed out after {self._helper_timeout:g} s") from exc
        if proc.returncode != 0:
            # Helpers report a missing entry on stdout with a non-zero exit (docker-credential-helpers'
            # "credentials not found in native keychain"); that simply means anonymous.
            if "credentials not found" in (proc.stdout + proc.stderr).lower():
                return None
            # Only stderr is shown, shortened: stdout of a helper may carry a secret.
            reason = (proc.stderr.strip().splitlines() or ["no error message"])[0][:200]
            raise AuthError(f"{what}: exit {proc.returncode}: {reason}")
        try:
            answer = json.loads(proc.stdout)
        except ValueError:
            answer = None  # the decoder's exception is not chained: it may quote the secret
        if not isinstance(answer, dict):
            raise AuthError(f"{what}: the helper's answer is not a JSON object")
        username = str(answer.get("Username") or "")
        secret = str(answer.get("Secret") or "")
        if not secret:
            return None
        if username == _HELPER_TOKEN_USER:
            return Credentials(identity_token=secret)
        return Credentials(username=username, password=secret)


def _load_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthError(f"reading credentials from {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        # The decoder's message gives a position only, never the file's content.
        raise AuthError(f"reading credentials from {path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AuthError(f"reading credentials from {path}: not a JSON object")
    return data


def _from_auths(path: Path, auths: object, host: str) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if not isinstance(entry, dict) or _key_host(key) != host:
            continue
        where = f"reading credentials for {host} from {path}"
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            return Credentials(username=str(entry.get("username") or ""), identity_token=token)
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError(f"{where}: 'auth' of {key!r} is not base64 of user:password") from None
            username, colon, password = decoded.partition(":")
            if not colon or not username:
                raise AuthError(f"{where}: 'auth' of {key!r} is not base64 of user:password")
            return Credentials(username=username, password=password)
        user, secret = entry.get("username"), entry.get("password")
        if isinstance(user, str) and isinstance(secret, str) and user and secret:
            return Credentials(username=user, password=secret)
        # An empty entry ({}), as Docker writes next to a credsStore: nothing here.
    return None


def _describe_kind(found: Credentials | None) -> str:
    if found is None:
        return "anonymous"
    return "identity_token" if found.identity_token else "password"
