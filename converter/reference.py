"""Image names: parse ``registry/repository:tag@digest`` (Docker's grammar), digests and ``oci:DIR:TAG``.

The grammar follows the distribution reference format (as documented by distribution's
``reference`` package and the OCI distribution spec), written out here as regular expressions:

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component ( "/" path-component )*
    domain     := host [ ":" port ]          host: DNS labels, or an IPv6 literal in brackets
    path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex

Docker's normalisation rules apply: a first component is a registry only if it contains ``.``
or ``:`` or is ``localhost`` (``x/y`` is Docker Hub's ``x/y``); Docker Hub names with a single
component get the ``library/`` namespace; a reference with neither tag nor digest means
``:latest``.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from converter.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# Docker Hub's registry name and the host that actually serves its /v2/ API differ.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
# Names that Docker tooling treats as Docker Hub; all normalise to DEFAULT_REGISTRY.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

# Registered algorithms (OCI image-spec descriptor.md) and the length of their hex encodings.
_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# The general digest grammar (image-spec descriptor.md); known algorithms are checked further.
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_MAX_NAME_LENGTH = 255  # registry/repository, as Docker limits it


@dataclass(frozen=True, slots=True)
class Digest:
    """A content digest such as ``sha256:<64 lowercase hex>``; only registered algorithms."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        length = _ALGORITHMS.get(self.algorithm)
        if length is None:
            raise InvalidReference(f"parsing digest {self.algorithm}:{self.hex}: unsupported algorithm")
        if len(self.hex) != length or not all(c in "0123456789abcdef" for c in self.hex):
            raise InvalidReference(
                f"parsing digest {self.algorithm}:{self.hex}: "
                f"want {length} lowercase hex digits after '{self.algorithm}:'"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:hex``; raise InvalidReference if malformed or unsupported."""
        if not _DIGEST_RE.fullmatch(text):
            raise InvalidReference(f"parsing digest {text!r}: not of the form algorithm:hex")
        algorithm, _, hex_ = text.partition(":")
        return cls(algorithm, hex_)

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object for this digest's algorithm, to verify streamed content."""
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """``sha256:0123456789ab``, for log lines."""
        return f"{self.algorithm}:{self.hex[:12]}"


@dataclass(frozen=True, slots=True)
class Reference:
    """A registry image reference; ``tag`` and ``digest`` may both be set (a pinned tag)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if not _DOMAIN_RE.fullmatch(self.registry):
            raise InvalidReference(f"parsing reference: invalid registry {self.registry!r}")
        if not _PATH_RE.fullmatch(self.repository):
            raise InvalidReference(f"parsing reference: invalid repository {self.repository!r}")
        if self.tag is not None and not _TAG_RE.fullmatch(self.tag):
            raise InvalidReference(f"parsing reference: invalid tag {self.tag!r}")
        if self.tag is None and self.digest is None:
            raise InvalidReference(f"parsing reference {self.name}: neither tag nor digest")

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host[:port] serving this registry's /v2/ API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        assert self.tag is not None  # __post_init__ guarantees one of them
        return self.tag

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag`` (any digest is dropped: it would contradict the tag)."""
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> Reference:
        """The same repository pinned to ``digest``; the tag is kept for display."""
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True, slots=True)
class OciLayoutRef:
    """An image in an OCI image layout directory; ``tag`` is its ``org.opencontainers.image.ref.name``."""

    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


class ArchiveKind(enum.Enum):
    """The two tar formats of a whole image (containers-transports(5) names)."""

    DOCKER = "docker-archive"  # `docker save` output: manifest.json, configs, layer tars
    OCI = "oci-archive"  # a tar of an OCI image layout


@dataclass(frozen=True, slots=True)
class ArchiveRef:
    """An image in a tar archive; ``ref`` picks one image (a RepoTags name for docker-archive,
    a ``org.opencontainers.image.ref.name`` for oci-archive), None: the only one."""

    kind: ArchiveKind
    path: Path
    ref: str | None = None

    @property
    def tag(self) -> str | None:
        return None  # no default destination next to an archive: --dest is required

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.path}" + (f":{self.ref}" if self.ref else "")


@dataclass(frozen=True, slots=True)
class DaemonRef:
    """An image in the local Docker engine, named as ``docker`` names it (``name:tag``, an ID)."""

    name: str

    @property
    def tag(self) -> str | None:
        return None

    def __str__(self) -> str:
        return f"docker-daemon:{self.name}"


Location = Reference | OciLayoutRef | ArchiveRef | DaemonRef


def _split_domain(name: str) -> tuple[str, str]:
    """Split ``name`` into (registry, repository) with Docker's normalisation."""
    first, sep, rest = name.partition("/")
    # Docker's rule: the first component is a registry only if it looks like a host — it has a
    # dot or a port, is "localhost", or has uppercase letters (which a repository cannot have).
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry in _DOCKER_HUB_ALIASES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"  # official images live in the library namespace
    return registry, repository


def is_valid_tag(text: str) -> bool:
    """Whether ``text`` is a tag by the distribution grammar (what a registry may send is not)."""
    return _TAG_RE.fullmatch(text) is not None


def parse_reference(text: str) -> Reference:
    """Parse a Docker-style image reference; raise InvalidReference with the reason if it is bad."""
    if not text or text != text.strip():
        raise InvalidReference(f"parsing reference {text!r}: empty or surrounded by whitespace")
    remainder, at, digest_text = text.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except InvalidReference as exc:
            raise InvalidReference(f"parsing reference {text!r}: invalid digest {digest_text!r}") from exc
    # A tag's colon comes after the last slash; an earlier colon belongs to the registry's port.
    tag: str | None = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"parsing reference {text!r}: invalid tag {tag!r}")
    if not remainder:
        raise InvalidReference(f"parsing reference {text!r}: no repository")
    if len(remainder) > _MAX_NAME_LENGTH:
        raise InvalidReference(f"parsing reference {text!r}: name longer than {_MAX_NAME_LENGTH} characters")
    registry, repository = _split_domain(remainder)
    if not _DOMAIN_RE.fullmatch(registry):
        raise InvalidReference(f"parsing reference {text!r}: invalid registry {registry!r}")
    if repository != repository.lower():
        raise InvalidReference(f"parsing reference {text!r}: repository name must be lowercase")
    if not _PATH_RE.fullmatch(repository):
        raise InvalidReference(f"parsing reference {text!r}: invalid repository {repository!r}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def parse_location(text: str) -> Location:
    """Parse where an image lives: ``oci:DIR[:TAG]``, ``docker-archive:PATH[:REF]``,
    ``oci-archive:PATH[:REF]``, ``docker-daemon:REF``, ``docker://REF`` or a plain reference.

    As in containers-transports(5), an archive's PATH ends at its first colon."""
    for kind in ArchiveKind:
        if text.startswith(kind.value + ":"):
            path_text, _, ref = text[len(kind.value) + 1 :].partition(":")
            if not path_text:
                raise InvalidReference(f"parsing location {text!r}: no path after '{kind.value}:'")
            return ArchiveRef(kind, Path(path_text), ref or None)
    if text.startswith("docker-daemon:"):
        name = text[len("docker-daemon:") :]
        if not name:
            raise InvalidReference(f"parsing location {text!r}: no image after 'docker-daemon:'")
        return DaemonRef(name)
    if text.startswith("oci:"):
        body = text[len("oci:") :]
        # DIR may itself contain colons; only a trailing ":TAG" that is a valid tag is split off.
        head, sep, tail = body.rpartition(":")
        if sep and head and _TAG_RE.fullmatch(tail):
            path_text, tag = head, tail
        else:
            path_text, tag = body, None
        if not path_text:
            raise InvalidReference(f"parsing location {text!r}: no directory after 'oci:'")
        return OciLayoutRef(Path(path_text), tag)
    if text.startswith("docker://"):
        return parse_reference(text[len("docker://") :])
    return parse_reference(text)
