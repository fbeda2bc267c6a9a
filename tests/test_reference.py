"""Image references in Docker's grammar, digests, and ``oci:DIR:TAG`` locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.errors import InvalidReference, UsageError
from converter.reference import Digest, OciLayoutRef, Reference, parse_location, parse_reference

HEX = "a" * 64
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "canonical"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine:latest"),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None, "docker.io/library/alpine:3.19"),
        ("library/alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine:latest"),
        ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
        ("user/team/app:v1", "docker.io", "user/team/app", "v1", None, "docker.io/user/team/app:v1"),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine:latest"),
        ("index.docker.io/x/y", "docker.io", "x/y", "latest", None, "docker.io/x/y:latest"),
        ("ghcr.io/org/app:1.0", "ghcr.io", "org/app", "1.0", None, "ghcr.io/org/app:1.0"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
        ("localhost:5000/app:v2", "localhost:5000", "app", "v2", None, "localhost:5000/app:v2"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", "latest", None, "127.0.0.1:5000/a/b:latest"),
        ("[::1]:5000/a", "[::1]:5000", "a", "latest", None, "[::1]:5000/a:latest"),
        ("host:5000/a", "host:5000", "a", "latest", None, "host:5000/a:latest"),
        (f"alpine@{DIGEST}", "docker.io", "library/alpine", None, DIGEST, f"docker.io/library/alpine@{DIGEST}"),
        (f"r.io/a:v1@{DIGEST}", "r.io", "a", "v1", DIGEST, f"r.io/a:v1@{DIGEST}"),
        ("r.io/a_b/c__d/e-f/g--h/i.j:V_1.x-y", "r.io", "a_b/c__d/e-f/g--h/i.j", "V_1.x-y", None,
         "r.io/a_b/c__d/e-f/g--h/i.j:V_1.x-y"),
    ],
)
def test_parse_reference(text: str, registry: str, repository: str, tag: str | None, digest: str | None,
                         canonical: str) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest
    assert str(ref) == canonical
    assert parse_reference(str(ref)) == ref  # the canonical form parses back to itself


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" alpine", "whitespace"),
        ("Alpine", "lowercase"),
        ("docker.io/Library/alpine", "lowercase"),
        ("ghcr.io/Org/app", "lowercase"),
        ("a/b:", "invalid tag"),
        ("a/b:-x", "invalid tag"),
        ("a/b:" + "t" * 129, "invalid tag"),
        ("a/b:v1:v2", "invalid repository"),
        ("a/b@sha256:abc", "invalid digest"),
        (f"a/b@sha256:{'A' * 64}", "invalid digest"),
        (f"a/b@md5:{HEX}", "invalid digest"),
        ("a//b", "invalid repository"),
        ("a/b/", "invalid repository"),
        ("a/-b", "invalid repository"),
        ("a/b.", "invalid repository"),
        ("host:port/a", "invalid registry"),
        ("-host.io/a", "invalid registry"),
        (":v1", "no repository"),
        ("r.io/" + "a" * 260, "longer than"),
    ],
)
def test_parse_reference_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=reason) as info:
        parse_reference(text)
    assert isinstance(info.value, UsageError)  # exit status 2


def test_reference_helpers() -> None:
    ref = parse_reference("alpine:3")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.name == "docker.io/library/alpine"
    assert ref.manifest_reference == "3"
    pinned = ref.with_digest(Digest.parse(DIGEST))
    assert str(pinned) == f"docker.io/library/alpine:3@{DIGEST}"
    assert pinned.manifest_reference == DIGEST  # a pinned reference fetches by digest
    retagged = pinned.with_tag("edge")
    assert str(retagged) == "docker.io/library/alpine:edge" and retagged.digest is None
    assert parse_reference("localhost:5000/a").api_host == "localhost:5000"
    with pytest.raises(InvalidReference):
        ref.with_tag("bad tag")
    with pytest.raises(InvalidReference):
        Reference("r.io", "a")  # neither tag nor digest


def test_digest() -> None:
    digest = Digest.parse(DIGEST)
    assert (digest.algorithm, digest.hex, str(digest)) == ("sha256", HEX, DIGEST)
    assert digest.short == "sha256:aaaaaaaaaaaa"
    assert Digest.from_bytes(b"") == Digest.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert Digest.from_bytes(b"x", "sha512").algorithm == "sha512"
    hasher = digest.hasher()
    hasher.update(b"")
    assert hasher.name == "sha256"
    assert {Digest.parse(DIGEST): 1}[Digest("sha256", HEX)] == 1  # hashable, compares by value


@pytest.mark.parametrize("text", ["sha256", f"sha256{HEX}", f"SHA256:{HEX}", f"sha256:{HEX[:-1]}",
                                  f"sha256:{HEX}0", f"sha256:{HEX[:-1]}G", f"sha1:{HEX[:40]}", f" {DIGEST}"])
def test_digest_rejects(text: str) -> None:
    with pytest.raises(InvalidReference):
        Digest.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/tmp/layout", OciLayoutRef(Path("/tmp/layout"))),
        ("oci:/tmp/layout:v1", OciLayoutRef(Path("/tmp/layout"), "v1")),
        ("oci:relative/dir:latest", OciLayoutRef(Path("relative/dir"), "latest")),
        ("oci:/a:b/c", OciLayoutRef(Path("/a:b/c"))),  # a colon inside the path, no tag
        ("oci:/a:b/c:t", OciLayoutRef(Path("/a:b/c"), "t")),
        ("docker://alpine", parse_reference("alpine")),
        ("r.io/a:v1", parse_reference("r.io/a:v1")),
    ],
)
def test_parse_location(text: str, expected: object) -> None:
    assert parse_location(text) == expected


def test_parse_location_rejects() -> None:
    with pytest.raises(InvalidReference):
        parse_location("oci:")
    with pytest.raises(InvalidReference):
        parse_location("docker://UPPER")
    assert str(OciLayoutRef(Path("/x"), "t")) == "oci:/x:t"


def test_archive_and_daemon_locations() -> None:
    from converter.reference import ArchiveKind, ArchiveRef, DaemonRef

    assert parse_location("docker-archive:/a/b.tar") == ArchiveRef(ArchiveKind.DOCKER, Path("/a/b.tar"), None)
    assert parse_location("docker-archive:b.tar:x/y:1") == ArchiveRef(ArchiveKind.DOCKER, Path("b.tar"), "x/y:1")
    assert parse_location("oci-archive:/o.tar:v1") == ArchiveRef(ArchiveKind.OCI, Path("/o.tar"), "v1")
    assert parse_location("docker-daemon:busybox:1") == DaemonRef("busybox:1")
    assert str(parse_location("oci-archive:/o.tar:v1")) == "oci-archive:/o.tar:v1"
    for bad in ("docker-archive:", "oci-archive::x", "docker-daemon:"):
        with pytest.raises(InvalidReference):
            parse_location(bad)
