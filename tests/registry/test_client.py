"""RegistryClient against a real registry (Debian's docker-registry, distribution 2.8) on loopback."""

from __future__ import annotations

import io
import json
import os
import ssl
import time
from pathlib import Path

import httpx
import pytest
from structlog.testing import LogCapture

from converter.errors import AuthError, ImageError, InvalidReference, NotFound, RegistryError
from converter.oci.mediatypes import MediaType
from converter.reference import Digest, parse_reference
from converter.registry.client import BlobPush, RegistryClient
from converter.registry.credentials import Credentials, DockerConfigCredentials, StaticCredentials
from tests.registry.helpers import (
    Recorder,
    Sleeps,
    assert_no_secrets,
    blob,
    client_for,
    fast_retry,
    push_image,
    random_blob,
)
from tests.support.registry import RegistryServer


def ssl_context(ca_cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_cert))

# --- open registry: the API itself ------------------------------------------------------------


def test_ping(registry_open: RegistryServer) -> None:
    with client_for() as client:
        client.ping(registry_open.host)


def test_push_and_pull_blob_monolithic_from_path(registry_open: RegistryServer, tmp_path: Path) -> None:
    data, digest = random_blob(300_001)
    path = tmp_path / "layer"
    path.write_bytes(data)
    recorder = Recorder()
    with client_for(recorder) as client:
        outcome = client.push_blob(registry_open.host, "blobs/mono", digest, len(data), path)
        assert outcome is BlobPush.UPLOADED
        # HEAD (absent), POST (session), one streamed PUT with the digest: nothing chunked.
        assert recorder.methods("/blobs/") == ["HEAD", "POST", "PUT"]
        put = recorder.seen[-1]
        assert put.url.params["digest"] == str(digest)
        assert put.headers["Content-Length"] == str(len(data))
        assert "Transfer-Encoding" not in put.headers

        assert client.blob_exists(registry_open.host, "blobs/mono", digest) == len(data)
        with client.open_blob(registry_open.host, "blobs/mono", digest, size=len(data)) as reader:
            assert reader.size == len(data)
            assert reader.read(10) == data[:10]
            assert reader.read() == data[10:]
            assert reader.verified
        assert client.get_blob_bytes(registry_open.host, "blobs/mono", digest, max_size=len(data)) == data


def test_existing_blob_is_not_uploaded_again(registry_open: RegistryServer) -> None:
    data, digest = random_blob(10_000)
    recorder = Recorder()
    with client_for(recorder) as client:
        assert client.push_blob(registry_open.host, "blobs/again", digest, len(data), io.BytesIO(data)) \
            is BlobPush.UPLOADED
        recorder.clear()
        assert client.push_blob(registry_open.host, "blobs/again", digest, len(data), io.BytesIO(data)) \
            is BlobPush.EXISTS
        assert recorder.methods() == ["HEAD"]


def test_chunked_upload(registry_open: RegistryServer) -> None:
    data, digest = random_blob(200_000)
    recorder = Recorder()
    with client_for(recorder) as client:
        stream = io.BytesIO(b"prefix" + data)
        stream.seek(6)  # a file object is read from its current position
        outcome = client.push_blob(registry_open.host, "blobs/chunked", digest, len(data), stream,
                                   chunk_size=64 * 1024)
        assert outcome is BlobPush.UPLOADED
        assert recorder.methods("/blobs/") == ["HEAD", "POST", "PATCH", "PATCH", "PATCH", "PATCH", "PUT"]
        ranges = [s.headers["Content-Range"] for s in recorder.seen if s.method == "PATCH"]
        assert ranges == ["0-65535", "65536-131071", "131072-196607", "196608-199999"]
        assert client.get_blob_bytes(registry_open.host, "blobs/chunked", digest) == data


def test_empty_blob(registry_open: RegistryServer) -> None:
    digest = Digest.from_bytes(b"")
    with client_for() as client:
        assert client.push_blob(registry_open.host, "blobs/empty", digest, 0, io.BytesIO(b"")) \
            is BlobPush.UPLOADED
        assert client.get_blob_bytes(registry_open.host, "blobs/empty", digest) == b""


def test_wrong_digest_is_refused_by_the_registry(registry_open: RegistryServer) -> None:
    data, _ = random_blob(1000)
    _, other = random_blob(10)
    with client_for() as client, pytest.raises(RegistryError) as info:
        client.push_blob(registry_open.host, "blobs/wrong", other, len(data), io.BytesIO(data))
    error = info.value
    assert error.status == 400 and error.code == "DIGEST_INVALID"
    assert str(error).startswith(f"pushing blob {other} to {registry_open.host}/blobs/wrong: 400 DIGEST_INVALID")
    assert not error.temporary


def test_source_shorter_than_size(registry_open: RegistryServer, tmp_path: Path) -> None:
    data, digest = random_blob(100)
    with client_for() as client:
        with pytest.raises(ImageError, match="ended 10 bytes early"):
            client.push_blob(registry_open.host, "blobs/short", digest, 110, io.BytesIO(data))
        path = tmp_path / "blob"
        path.write_bytes(data)
        with pytest.raises(ImageError, match="has 100 bytes, expected 110"):
            client.push_blob(registry_open.host, "blobs/short", digest, 110, path)


def test_missing_blob_and_manifest(registry_open: RegistryServer) -> None:
    _, digest = random_blob(10)
    host = registry_open.host
    with client_for() as client:
        assert client.blob_exists(host, "nothing/here", digest) is None
        with pytest.raises(NotFound) as info:
            client.open_blob(host, "nothing/here", digest)
        assert info.value.status == 404
        with pytest.raises(NotFound) as manifest_info:
            client.get_manifest(host, "nothing/here", "v1")
        error = manifest_info.value
        assert error.code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
        assert str(error).startswith(f"fetching manifest {host}/nothing/here:v1: 404 {error.code}: ")
        assert error.method == "GET" and error.url == f"http://{host}/v2/nothing/here/manifests/v1"


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker-schema2"])
def test_manifest_roundtrip(registry_open: RegistryServer, docker: bool) -> None:
    host = registry_open.host
    repository = "images/docker" if docker else "images/oci"
    with client_for() as client:
        pushed = push_image(client, host, repository, "v1", docker=docker)
        by_tag = client.get_manifest(host, repository, "v1")
        assert isinstance(by_tag.media_type, MediaType)
        assert by_tag == (pushed.manifest, pushed.media_type, pushed.digest)
        data, media_type, digest = client.get_manifest(host, repository, pushed.digest)
        assert (data, media_type, digest) == (pushed.manifest, pushed.media_type, pushed.digest)
        # A digest written as a string is a digest, not a tag.
        assert client.get_manifest(host, repository, str(pushed.digest)).digest == pushed.digest
        # A parsed reference works too, pinned or not.
        ref = parse_reference(f"{host}/{repository}:v1")
        assert client.get_manifest(ref).digest == pushed.digest
        assert client.get_manifest(ref.with_digest(pushed.digest)).data == pushed.manifest
        config = client.get_blob_bytes(host, repository, pushed.config_digest)
        assert json.loads(config)["os"] == "linux"


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-manifest-list"])
def test_index_roundtrip(registry_open: RegistryServer, docker: bool) -> None:
    host = registry_open.host
    repository = "images/multi-docker" if docker else "images/multi-oci"
    with client_for() as client:
        amd64 = push_image(client, host, repository, "amd64", docker=docker, seed=1)
        arm64 = push_image(client, host, repository, "arm64", docker=docker, seed=2)
        media_type = MediaType.DOCKER_MANIFEST_LIST if docker else MediaType.OCI_INDEX
        index = json.dumps({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {"mediaType": image.media_type, "digest": str(image.digest), "size": len(image.manifest),
                 "platform": {"architecture": arch, "os": "linux"}}
                for image, arch in ((amd64, "amd64"), (arm64, "arm64"))
            ],
        }).encode()
        # Push by digest first (as a copy does before tagging), then tag it.
        digest = client.put_manifest(host, repository, Digest.from_bytes(index), index, media_type)
        assert client.put_manifest(host, repository, "latest", index, media_type) == digest
        fetched = client.get_manifest(host, repository, "latest")
        assert fetched == (index, media_type, digest)


def test_put_manifest_by_wrong_digest_is_refused_locally(registry_open: RegistryServer) -> None:
    with client_for() as client, pytest.raises(ImageError, match="the manifest's digest is"):
        client.put_manifest(registry_open.host, "images/x", Digest.from_bytes(b"other"), b"{}",
                            MediaType.OCI_MANIFEST)


def test_invalid_names_are_refused_before_any_request(registry_open: RegistryServer) -> None:
    recorder = Recorder()
    with client_for(recorder) as client:
        with pytest.raises(InvalidReference):
            client.get_manifest(registry_open.host, "Upper/Case", "v1")
        with pytest.raises(InvalidReference):
            client.get_manifest(registry_open.host, "../../etc", "v1")
        with pytest.raises(InvalidReference):
            client.put_manifest(registry_open.host, "a/b", "bad tag", b"{}", MediaType.OCI_MANIFEST)
    assert recorder.seen == []


def test_cross_repository_mount(registry_open: RegistryServer) -> None:
    host = registry_open.host
    data, digest = random_blob(5000)
    recorder = Recorder()
    with client_for(recorder) as client:
        client.push_blob(host, "mount/source", digest, len(data), io.BytesIO(data))
        recorder.clear()
        assert client.mount_blob(host, "mount/target", digest, "mount/source") is True
        post = recorder.seen[0]
        assert post.method == "POST" and post.url.params["mount"] == str(digest)
        assert post.url.params["from"] == "mount/source" and post.status == 201
        assert client.blob_exists(host, "mount/target", digest) == len(data)

        # A blob the source does not have: 202, and the session we did not want is cancelled.
        _, absent = random_blob(10)
        recorder.clear()
        assert client.mount_blob(host, "mount/target", absent, "mount/source") is False
        assert [(s.method, s.status) for s in recorder.seen] == [("POST", 202), ("DELETE", 204)]

        # push_blob with mount_from mounts instead of uploading.
        other, other_digest = random_blob(6000)
        client.push_blob(host, "mount/source", other_digest, len(other), io.BytesIO(other))
        recorder.clear()
        assert client.push_blob(host, "mount/third", other_digest, len(other), io.BytesIO(other),
                                mount_from="mount/source") is BlobPush.MOUNTED
        assert recorder.methods() == ["HEAD", "POST"]


def test_list_tags(registry_open: RegistryServer) -> None:
    host = registry_open.host
    with client_for() as client:
        image = push_image(client, host, "tags/many", "t0")
        for tag in ("t1", "t2", "t3", "t4"):
            client.put_manifest(host, "tags/many", tag, image.manifest, image.media_type)
        # distribution 2.8 ignores n= for tag lists (it pages only the catalog), so this checks
        # that asking for pages still yields everything; Link pagination is in test_client_faults.
        assert sorted(client.list_tags(host, "tags/many", page_size=2)) == ["t0", "t1", "t2", "t3", "t4"]
        assert sorted(client.list_tags(host, "tags/many")) == ["t0", "t1", "t2", "t3", "t4"]
        with pytest.raises(NotFound):
            client.list_tags(host, "tags/none")


def test_parallel_pushes_share_one_client(registry_open: RegistryServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    blobs = [random_blob(20_000 + i) for i in range(8)]
    with client_for() as client, ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(
            lambda item: client.push_blob(registry_open.host, "parallel/x", item[1], len(item[0]),
                                          io.BytesIO(item[0])), blobs))
        assert outcomes == [BlobPush.UPLOADED] * len(blobs)
        for data, digest in blobs:
            assert client.get_blob_bytes(registry_open.host, "parallel/x", digest) == data


# --- basic auth -------------------------------------------------------------------------------


def _static(server: RegistryServer, password: str | None = None) -> StaticCredentials:
    assert server.username and server.password
    return StaticCredentials({server.host: Credentials(server.username, password or server.password)})


def test_basic_auth_push_and_pull(registry_basic: RegistryServer, log_capture: LogCapture) -> None:
    host = registry_basic.host
    recorder = Recorder()
    with client_for(recorder, credentials=_static(registry_basic)) as client:
        client.ping(host)
        image = push_image(client, host, "basic/app", "v1")
        assert client.get_manifest(host, "basic/app", "v1").digest == image.digest
    # One 401 (the first request learns the Basic challenge); afterwards credentials go up front.
    assert recorder.statuses(host).count(401) == 1
    assert_no_secrets([repr(client), *log_capture.entries], registry_basic.secrets())


def test_basic_auth_failures_keep_the_password_secret(registry_basic: RegistryServer) -> None:
    host = registry_basic.host
    with client_for(credentials=_static(registry_basic, "wrong-password-123")) as client, \
            pytest.raises(AuthError) as wrong:
        client.get_manifest(host, "basic/app", "v1")
    assert wrong.value.status == 401 and wrong.value.code == "UNAUTHORIZED"
    assert "refused" in str(wrong.value)
    with client_for() as client, pytest.raises(AuthError) as anonymous:
        client.get_manifest(host, "basic/app", "v1")
    assert "no user name and password" in str(anonymous.value)
    assert_no_secrets([wrong.value, repr(wrong.value), anonymous.value],
                      [*registry_basic.secrets(), "wrong-password-123"])


def test_credentials_from_docker_config(registry_basic: RegistryServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for style in ("auth", "userpass"):
        directory = tmp_path / style
        registry_basic.write_docker_config(directory, style=style)
        monkeypatch.setenv("DOCKER_CONFIG", str(directory))
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        with client_for(credentials=DockerConfigCredentials()) as client:
            client.ping(registry_basic.host)


def test_credential_helper(registry_basic: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                           ) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    helper = bin_dir / "docker-credential-test"
    answer = json.dumps({"ServerURL": registry_basic.host, "Username": registry_basic.username,
                         "Secret": registry_basic.password})
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        f"cat > {asked}\n"
        f"if [ \"$(cat {asked})\" = '{registry_basic.host}' ]; then\n"
        f"  echo '{answer}'\n"
        "else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
    )
    helper.chmod(0o755)
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"credHelpers": {registry_basic.host: "test"}}))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    provider = DockerConfigCredentials()
    with client_for(credentials=provider) as client:
        push_image(client, registry_basic.host, "helper/app", "v1")
    assert asked.read_text() == registry_basic.host  # the helper got the server on stdin
    assert_no_secrets([repr(provider), repr(provider.lookup(registry_basic.host))], registry_basic.secrets())


# --- bearer tokens ----------------------------------------------------------------------------


def test_pull_from_one_repository_then_push_to_another(registry_token: RegistryServer,
                                                        log_capture: LogCapture) -> None:
    """The oras-py bug: a token for repository A reused for B. Tokens must be per scope."""
    host = registry_token.host
    issuer = registry_token.issuer
    assert issuer is not None
    with client_for(credentials=_static(registry_token)) as setup:
        source = push_image(setup, host, "token/source", "v1")
    issuer.clear_log()
    with client_for(credentials=_static(registry_token)) as client:
        manifest = client.get_manifest(host, "token/source", "v1")
        layer = client.get_blob_bytes(host, "token/source", source.layer_digest)
        config = client.get_blob_bytes(host, "token/source", source.config_digest)
        client.push_blob(host, "token/dest", source.layer_digest, len(layer), io.BytesIO(layer))
        client.push_blob(host, "token/dest", source.config_digest, len(config), io.BytesIO(config))
        assert client.put_manifest(host, "token/dest", "v1", manifest.data, manifest.media_type) == source.digest
        # Back to the first repository: its token is still cached.
        assert client.get_manifest(host, "token/source", "v1").digest == source.digest
    asked = [r.scopes for r in issuer.requests]
    assert asked == [("repository:token/source:pull",), ("repository:token/dest:pull,push",)]
    assert_no_secrets([repr(client), *log_capture.entries], registry_token.secrets())


def test_mount_asks_for_both_repositories(registry_token: RegistryServer) -> None:
    host = registry_token.host
    assert registry_token.issuer is not None
    data, digest = random_blob(4000)
    with client_for(credentials=_static(registry_token)) as client:
        client.push_blob(host, "token/mount-from", digest, len(data), io.BytesIO(data))
        registry_token.issuer.clear_log()
        assert client.mount_blob(host, "token/mount-to", digest, "token/mount-from")
    assert registry_token.issuer.requests[0].scopes == (
        "repository:token/mount-from:pull", "repository:token/mount-to:pull,push")


def test_anonymous_token_access(registry_token: RegistryServer) -> None:
    host = registry_token.host
    with client_for(credentials=_static(registry_token)) as client:
        public = push_image(client, host, "public/app", "v1")
        push_image(client, host, "private/app", "v1")
    with client_for() as anonymous:
        assert anonymous.get_manifest(host, "public/app", "v1").digest == public.digest
        with pytest.raises(AuthError) as info:
            anonymous.get_manifest(host, "private/app", "v1")
        assert info.value.status == 401
        assert str(info.value).endswith(f"(anonymous access was refused: no credentials for {host})")
        # Pull access is enough to see that a blob exists, not to upload one.
        assert anonymous.push_blob(host, "public/app", public.layer_digest, 1, io.BytesIO(b"x")) \
            is BlobPush.EXISTS
        data, digest = random_blob(100)
        with pytest.raises(AuthError) as push_info:
            anonymous.push_blob(host, "public/app", digest, len(data), io.BytesIO(data))
        assert str(push_info.value).startswith(f"pushing blob {digest} to {host}/public/app: 401 UNAUTHORIZED")


def test_wrong_password_for_token_service(registry_token: RegistryServer) -> None:
    with client_for(credentials=_static(registry_token, "not-the-password-42")) as client, \
            pytest.raises(AuthError) as info:
        client.get_manifest(registry_token.host, "public/app", "v1")
    assert "fetching a token for" in str(info.value) and "401" in str(info.value)
    assert_no_secrets([info.value, repr(info.value)], [*registry_token.secrets(), "not-the-password-42"])


def test_identity_token_from_docker_config(registry_token: RegistryServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert registry_token.issuer is not None
    registry_token.write_docker_config(tmp_path, style="identitytoken")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    registry_token.issuer.clear_log()
    with client_for(credentials=DockerConfigCredentials()) as client:
        push_image(client, registry_token.host, "token/refresh", "v1")
    grants = {r.grant for r in registry_token.issuer.requests}
    assert grants == {"refresh_token"}


def test_token_expired_mid_job_is_renewed(registry_token: RegistryServer) -> None:
    """The issuer claims 300 s but the registry refuses the token after ~2 s: a 401 mid-job."""
    issuer = registry_token.issuer
    assert issuer is not None
    host = registry_token.host
    recorder = Recorder()
    with client_for(credentials=_static(registry_token)) as setup:
        image = push_image(setup, host, "token/expiry", "v1")
    with issuer.policy_override(lifetime=2, advertised_expires_in=300), \
            client_for(recorder, credentials=_static(registry_token)) as client:
        issuer.clear_log()
        client.get_manifest(host, "token/expiry", "v1")
        time.sleep(2.2)
        recorder.clear()
        assert client.get_manifest(host, "token/expiry", image.digest).digest == image.digest
    assert recorder.statuses(host) == [401, 200]  # refused once, then a fresh token
    assert len(issuer.requests) == 2


def test_token_expiry_is_respected_without_a_401(registry_token: RegistryServer) -> None:
    issuer = registry_token.issuer
    assert issuer is not None
    host = registry_token.host
    with client_for(credentials=_static(registry_token)) as setup:
        image = push_image(setup, host, "token/expiry2", "v1")
    recorder = Recorder()
    with issuer.policy_override(lifetime=2), client_for(recorder, credentials=_static(registry_token)) as client:
        client.get_manifest(host, "token/expiry2", "v1")
        issuer.clear_log()
        time.sleep(2.1)
        recorder.clear()
        assert client.get_manifest(host, "token/expiry2", "v1").digest == image.digest
    assert recorder.statuses(host) == [200]  # the cache knew the token had expired
    assert len(issuer.requests) == 1


def test_registry_client_is_one_per_process_not_per_repository(registry_token: RegistryServer) -> None:
    """Many repositories, one client, interleaved: every call has a token for its own scope."""
    host = registry_token.host
    with client_for(credentials=_static(registry_token)) as client:
        images = {f"token/many-{i}": push_image(client, host, f"token/many-{i}", "v1", seed=i) for i in range(3)}
        for _ in range(2):
            for repository, image in images.items():
                assert client.get_manifest(host, repository, "v1").digest == image.digest
                assert client.blob_exists(host, repository, image.layer_digest) is not None


def test_open_registry_needs_no_credentials_and_sends_none(registry_open: RegistryServer) -> None:
    recorder = Recorder()
    data, digest = blob(100)
    with client_for(recorder, credentials=StaticCredentials({registry_open.host: Credentials("u", "p")})) as client:
        client.push_blob(registry_open.host, "open/x", digest, len(data), io.BytesIO(data))
    # Credentials are only sent after a challenge asked for them.
    assert all("Authorization" not in s.headers for s in recorder.seen)


def test_client_repr_has_no_secrets(registry_basic: RegistryServer) -> None:
    client = RegistryClient(credentials=_static(registry_basic))
    try:
        client.ping(registry_basic.host)
        assert_no_secrets([repr(client), repr(client._transport)], registry_basic.secrets())
    finally:
        client.close()


def test_printed_output_has_no_secrets(registry_token: RegistryServer, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    """Whatever the process prints (structlog's default output included) stays free of secrets."""
    host = registry_token.host
    with client_for(credentials=_static(registry_token)) as client:
        push_image(client, host, "token/printed", "v1")
        client.get_manifest(host, "token/printed", "v1")
    with client_for(credentials=_static(registry_token, "wrong-pass-987")) as client, \
            pytest.raises(AuthError) as info:
        client.get_manifest(host, "token/printed", "v1")
    print(info.value, repr(info.value), registry_token)
    captured = capsys.readouterr()
    assert host in captured.out  # the check below looks at real output
    assert_no_secrets([captured.out, captured.err], [*registry_token.secrets(), "wrong-pass-987"])


# --- TLS --------------------------------------------------------------------------------------


def test_tls_with_a_private_ca(registry_tls: RegistryServer) -> None:
    assert registry_tls.ca_cert is not None
    recorder = Recorder(httpx.HTTPTransport(verify=ssl_context(registry_tls.ca_cert)))
    with client_for(recorder, loopback_plain_http=False) as client:
        image = push_image(client, registry_tls.host, "tls/app", "v1")
        assert client.get_manifest(registry_tls.host, "tls/app", "v1").digest == image.digest
    assert {s.url.scheme for s in recorder.seen} == {"https"}
    # The real transport (no test wrapper): the CA bundle option itself.
    with RegistryClient(loopback_plain_http=False, ca_bundle=registry_tls.ca_cert) as client:
        assert client.get_manifest(registry_tls.host, "tls/app", "v1").digest == image.digest


def test_tls_verification_failure_is_permanent(registry_tls: RegistryServer) -> None:
    sleeps = Sleeps()
    with RegistryClient(loopback_plain_http=False, retry=fast_retry(sleeps)) as client, \
            pytest.raises(RegistryError) as info:
        client.ping(registry_tls.host)
    assert str(info.value).startswith(f"checking registry {registry_tls.host}: TLS certificate verification failed")
    assert not info.value.temporary and sleeps.delays == []


def test_tls_verification_can_be_disabled(registry_tls: RegistryServer, log_capture: LogCapture) -> None:
    with RegistryClient(loopback_plain_http=False, verify_tls=False) as client:
        client.ping(registry_tls.host)
    assert any(e["event"] == "registry_tls_verification_disabled" for e in log_capture.entries)
