"""Credentials from Docker/Podman config files and credential helpers; secrets stay hidden."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from converter.errors import AuthError
from converter.registry.credentials import (
    Credentials,
    DockerConfigCredentials,
    StaticCredentials,
    default_config_paths,
)
from tests.registry.helpers import assert_no_secrets

SECRET = "s3cret-Pa55"


def write(path: Path, config: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def provider(path: Path, **env: str) -> DockerConfigCredentials:
    return DockerConfigCredentials(paths=[path], env={"PATH": os.environ["PATH"], **env})


@pytest.mark.parametrize(
    ("key", "asked"),
    [
        ("reg.example", "reg.example"),
        ("https://reg.example", "reg.example"),
        ("http://reg.example/", "reg.example"),
        ("https://reg.example/v1/", "reg.example"),
        ("https://reg.example/v2/", "reg.example"),
        ("REG.example:5000", "reg.example:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://index.docker.io/v1/", "registry-1.docker.io"),
        ("docker.io", "index.docker.io"),
    ],
)
def test_auth_keys_with_and_without_scheme(tmp_path: Path, key: str, asked: str) -> None:
    config = write(tmp_path / "config.json", {"auths": {key: {"auth": b64(f"bob:{SECRET}")}}})
    assert provider(config).lookup(asked) == Credentials("bob", SECRET)


def test_namespaced_keys_do_not_apply_to_the_whole_registry(tmp_path: Path) -> None:
    config = write(tmp_path / "auth.json", {"auths": {"quay.io/org": {"auth": b64(f"bob:{SECRET}")}}})
    assert provider(config).lookup("quay.io") is None


def test_entry_styles(tmp_path: Path) -> None:
    config = write(tmp_path / "config.json", {"auths": {
        "a.example": {"auth": b64(f"alice:{SECRET}:with:colons")},
        "b.example": {"username": "bob", "password": SECRET},
        "c.example": {"identitytoken": SECRET},
        "d.example": {},
        "e.example": {"auth": ""},
    }})
    creds = provider(config)
    assert creds.lookup("a.example") == Credentials("alice", f"{SECRET}:with:colons")
    assert creds.lookup("b.example") == Credentials("bob", SECRET)
    assert creds.lookup("c.example") == Credentials(identity_token=SECRET)
    assert creds.lookup("d.example") is None
    assert creds.lookup("e.example") is None
    assert creds.lookup("unknown.example") is None


@pytest.mark.parametrize("bad", ["%%%not-base64", b64("no-colon"), b64(":nouser")])
def test_malformed_auth_is_reported_without_the_secret(tmp_path: Path, bad: str) -> None:
    config = write(tmp_path / "config.json", {"auths": {"a.example": {"auth": bad}}})
    with pytest.raises(AuthError, match="is not base64 of user:password") as info:
        provider(config).lookup("a.example")
    assert_no_secrets([info.value], [bad])


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": {"a": {"auth": "' + SECRET)
    with pytest.raises(AuthError, match="invalid JSON") as info:
        provider(path).lookup("a")
    assert_no_secrets([info.value, repr(info.value.__cause__)], [SECRET])


def test_search_order(tmp_path: Path) -> None:
    home, docker_config, auth_file = tmp_path / "home", tmp_path / "docker", tmp_path / "auth.json"
    assert default_config_paths({"HOME": str(home)}) == [home / ".docker" / "config.json"]
    assert default_config_paths({"HOME": str(home), "DOCKER_CONFIG": str(docker_config)}) == [
        docker_config / "config.json"]
    env = {"HOME": str(home), "DOCKER_CONFIG": str(docker_config), "REGISTRY_AUTH_FILE": str(auth_file)}
    assert default_config_paths(env) == [auth_file, docker_config / "config.json"]

    write(auth_file, {"auths": {"both.example": {"username": "podman", "password": "p"}}})
    write(docker_config / "config.json", {"auths": {
        "both.example": {"username": "docker", "password": "d"},
        "docker-only.example": {"username": "docker", "password": "d"},
    }})
    creds = DockerConfigCredentials(env=env)
    assert creds.lookup("both.example") == Credentials("podman", "p")  # REGISTRY_AUTH_FILE first
    assert creds.lookup("docker-only.example") == Credentials("docker", "d")  # then Docker's
    assert DockerConfigCredentials(env={"HOME": str(tmp_path / "nobody")}).lookup("both.example") is None


def helper_script(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_cred_helpers_and_creds_store(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    log = tmp_path / "asked"
    helper_script(bin_dir, "one", f'read server; echo "one $server" >> {log}\n'
                  f'echo \'{{"ServerURL":"x","Username":"u1","Secret":"{SECRET}"}}\'\n')
    helper_script(bin_dir, "store", f'read server; echo "store $server" >> {log}\n'
                  'case "$server" in\n'
                  f'  https://index.docker.io/v1/) echo \'{{"Username":"<token>","Secret":"{SECRET}"}}\';;\n'
                  '  *) echo "credentials not found in native keychain"; exit 1;;\nesac\n')
    config = write(tmp_path / "config.json", {
        "credHelpers": {"helped.example": "one"},
        "credsStore": "store",
        "auths": {"fallback.example": {"username": "f", "password": "p"}},
    })
    creds = DockerConfigCredentials(paths=[config], env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert creds.lookup("helped.example") == Credentials("u1", SECRET)
    # Docker Hub is asked for by Docker's key; "<token>" means an identity token.
    assert creds.lookup("docker.io") == Credentials(identity_token=SECRET)
    # The store has nothing for this one: the auths entry is used.
    assert creds.lookup("fallback.example") == Credentials("f", "p")
    assert creds.lookup("nowhere.example") is None
    assert creds.lookup("helped.example") == Credentials("u1", SECRET)  # cached: helper not run again
    assert log.read_text().splitlines() == [
        "one helped.example", "store https://index.docker.io/v1/", "store fallback.example",
        "store nowhere.example"]


def test_helper_failures(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    helper_script(bin_dir, "broken", f'echo "{SECRET}"; echo "keychain locked" >&2; exit 3\n')
    helper_script(bin_dir, "garbage", f'echo "not json {SECRET}"\n')
    config = write(tmp_path / "config.json", {"credHelpers": {
        "broken.example": "broken", "garbage.example": "garbage", "missing.example": "missing"}})
    creds = DockerConfigCredentials(paths=[config], env={"PATH": str(bin_dir)})
    with pytest.raises(AuthError) as broken:
        creds.lookup("broken.example")
    assert str(broken.value) == ("getting credentials for broken.example from docker-credential-broken: "
                                 "exit 3: keychain locked")
    with pytest.raises(AuthError, match="not a JSON object") as garbage:
        creds.lookup("garbage.example")
    with pytest.raises(AuthError, match="docker-credential-missing not found on PATH"):
        creds.lookup("missing.example")
    assert_no_secrets([broken.value, garbage.value, garbage.value.__context__], [SECRET])


def test_reprs_hide_secrets(tmp_path: Path) -> None:
    both = Credentials("alice", SECRET, identity_token=SECRET + "-token")
    assert repr(both) == "Credentials(username='alice', password=<redacted>, identity_token=<redacted>)"
    assert str(both) == repr(both)
    assert repr(Credentials("bob")) == "Credentials(username='bob')"
    static = StaticCredentials({"a.example": both})
    config = write(tmp_path / "config.json", {"auths": {"a.example": {"auth": b64(f"alice:{SECRET}")}}})
    docker = provider(config)
    docker.lookup("a.example")
    assert_no_secrets([repr(static), repr(docker), both, f"{both}", [both]], [SECRET, b64(f"alice:{SECRET}")])


def test_basic_authorization() -> None:
    assert Credentials("a", "b").basic_authorization() == "Basic " + b64("a:b")
    assert Credentials("a", "b").has_password
    assert not Credentials(identity_token="t").has_password


def test_static_credentials_normalise_docker_hub() -> None:
    static = StaticCredentials({"index.docker.io": Credentials("a", "b")})
    assert static.lookup("registry-1.docker.io") == Credentials("a", "b")
    assert static.lookup("DOCKER.IO") == Credentials("a", "b")
