"""`convert SOURCE` end to end against a real registry, read back by tools we did not write.

The source image is pushed with skopeo; the converted image is inspected and copied by skopeo,
every layer is checked by fsck.erofs and mounted by the kernel, and the overlay of all
converted layers is compared entry by entry with `umoci raw unpack` of the source.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from converter.cli import main
from converter.testing.sample import sample_layers, write_oci_layout
from tests.support.compare import diff, snapshot
from tests.support.kernel import fsck, overlay, require_mount
from tests.support.registry import RegistryServer

TAG = "1.0"


def skopeo(*args: str) -> str:
    res = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"skopeo {' '.join(args)}: {res.stderr}"
    return res.stdout


def creds(reg: RegistryServer, flag: str) -> list[str]:
    return [f"--{flag}-creds", f"{reg.username}:{reg.password}"] if reg.username else []


def push_sample(tmp: Path, reg: RegistryServer, repo: str, *, docker: bool = False, compress: bool | str = True,
                platforms: tuple[str, ...] = ()) -> Path:
    layout = write_oci_layout(tmp / f"src-{repo.replace('/', '_')}", sample_layers(), tag=TAG, compress=compress,
                              platforms=platforms)
    args = ["copy", "--dest-tls-verify=false", *creds(reg, "dest")]
    if docker:
        args += ["--format", "v2s2"]
    if platforms:
        args += ["--all"]
    skopeo(*args, f"oci:{layout.path}:{TAG}", f"docker://{reg.host}/{repo}:{TAG}")
    return layout.path


def run_convert(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = main([*args, "--log-format", "json", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    return lines[0]


def inspect_raw(reg: RegistryServer, ref: str, *extra: str) -> Any:
    return json.loads(skopeo("inspect", "--raw", "--tls-verify=false", *creds(reg, ""), *extra, f"docker://{ref}")
                      if not reg.username else
                      skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"{reg.username}:{reg.password}",
                             *extra, f"docker://{ref}"))


def check_layers_against_umoci(tmp: Path, reg: RegistryServer, ref: str, src_layout: Path, *, arch: str = "") -> dict:
    """skopeo copies the result to an OCI layout; every layer passes fsck; the overlay equals umoci."""
    require_mount()
    out = tmp / f"copy-{time.monotonic_ns()}"
    cred = ["--src-creds", f"{reg.username}:{reg.password}"] if reg.username else []
    extra = ["--override-arch", arch] if arch else []
    skopeo(*extra, "copy", "--src-tls-verify=false", *cred, f"docker://{ref}", f"oci:{out}:x")
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    layers = [out / "blobs/sha256" / layer["digest"].split(":")[1] for layer in manifest["layers"]]
    for layer in layers:
        fsck(layer)
    rootfs = tmp / f"umoci-{time.monotonic_ns()}"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{src_layout}:{TAG}", str(rootfs)], check=True,
                   capture_output=True)
    expected = snapshot(rootfs)
    with overlay(layers) as mnt:
        actual = snapshot(mnt)
    touched = {p for p, e in expected.items() if stat.S_ISDIR(e.mode) and e.mtime_ns > (time.time() - 3600) * 1e9}
    assert diff(expected, actual, skip_dir_mtime=touched) == []
    return manifest


@pytest.mark.parametrize("fmt", ["erofs", "erofs+lz4", "erofs+zstd,level=3"])
def test_registry_to_registry(tmp_path: Path, registry_open: RegistryServer, capsys: pytest.CaptureFixture[str],
                              fmt: str) -> None:
    repo = "e2e/single"
    src_layout = push_sample(tmp_path, registry_open, repo)
    source = f"{registry_open.host}/{repo}:{TAG}"
    line = run_convert(capsys, source, "--to", fmt)
    suffix = fmt.replace("+", "-").replace(",", "-").replace("=", "-")
    assert line.startswith(f"{source}-{suffix}@sha256:")
    ref = line.split("@")[0]
    manifest = inspect_raw(registry_open, ref)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [la["mediaType"] for la in manifest["layers"]] == ["application/vnd.erofs"] * 3
    roles = [la.get("annotations", {}).get("org.erofs.role") for la in manifest["layers"]]
    assert roles == ["overlay-lower", "overlay-lower", None]
    config = inspect_raw(registry_open, ref, "--config")
    assert "erofs" in config["os.features"]
    assert config["rootfs"]["diff_ids"] == [la["digest"] for la in manifest["layers"]]
    assert config["config"]["Labels"] == {"org.example.sample": "true"}
    assert len(config["history"]) == 3
    check_layers_against_umoci(tmp_path, registry_open, ref, src_layout)
    # The same source converted again gives the same manifest digest.
    again = run_convert(capsys, source, "--to", fmt)
    assert again == line


def test_docker_media_types_and_zstd_layers(tmp_path: Path, registry_open: RegistryServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = push_sample(tmp_path, registry_open, "e2e/docker", docker=True)
    assert inspect_raw(registry_open, f"{registry_open.host}/e2e/docker:{TAG}")["mediaType"] == \
        "application/vnd.docker.distribution.manifest.v2+json"
    line = run_convert(capsys, f"{registry_open.host}/e2e/docker:{TAG}")
    ref = line.split("@")[0]
    assert inspect_raw(registry_open, ref)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    check_layers_against_umoci(tmp_path, registry_open, ref, src)

    push_sample(tmp_path, registry_open, "e2e/zstd", compress="zstd")
    line = run_convert(capsys, f"{registry_open.host}/e2e/zstd:{TAG}", "--to", "erofs+lz4")
    # umoci 0.4.7 cannot read zstd layers: it flattens the same tars, gzipped, instead.
    check_layers_against_umoci(tmp_path, registry_open, line.split("@")[0], src)


def test_index_platforms_and_merge(tmp_path: Path, registry_open: RegistryServer,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = push_sample(tmp_path, registry_open, "e2e/multi", platforms=("amd64", "arm64"))
    source = f"{registry_open.host}/e2e/multi:{TAG}"
    line = run_convert(capsys, source)
    index = inspect_raw(registry_open, line.split("@")[0])
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [(m["platform"]["architecture"], m["platform"]["os.features"]) for m in index["manifests"]] == \
        [("amd64", ["erofs"]), ("arm64", ["erofs"])]
    # umoci cannot unpack through a nested index: it flattens a single-manifest twin of the same layers.
    del src
    twin = write_oci_layout(tmp_path / "twin", sample_layers(), tag=TAG).path
    check_layers_against_umoci(tmp_path, registry_open, line.split("@")[0], twin, arch="arm64")

    only = run_convert(capsys, source, "--platform", "linux/arm64", "--dest", f"{registry_open.host}/e2e/multi:arm")
    index = inspect_raw(registry_open, only.split("@")[0])
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["arm64"]

    merged = run_convert(capsys, source, "--merge-index", "--dest", f"{registry_open.host}/e2e/multi:merged")
    index = inspect_raw(registry_open, merged.split("@")[0])
    kinds = [(m["platform"]["architecture"], "erofs" in m["platform"].get("os.features", []))
             for m in index["manifests"]]
    assert kinds == [("amd64", False), ("amd64", True), ("arm64", False), ("arm64", True)]


@pytest.mark.parametrize(("profile", "media_type", "roles"), [
    ("spec", "application/vnd.erofs", True),
    ("containerd-2.1", "application/vnd.oci.image.layer.v1.erofs", False),
    ("containerd-2.3", "application/vnd.erofs.layer.v1", False),
])
def test_profiles(tmp_path: Path, registry_open: RegistryServer, capsys: pytest.CaptureFixture[str],
                  profile: str, media_type: str, roles: bool) -> None:
    push_sample(tmp_path, registry_open, "e2e/profiles")
    line = run_convert(capsys, f"{registry_open.host}/e2e/profiles:{TAG}", "--media-type-profile", profile,
                       "--dest", f"{registry_open.host}/e2e/profiles:{profile}")
    manifest = inspect_raw(registry_open, line.split("@")[0])
    assert {la["mediaType"] for la in manifest["layers"]} == {media_type}
    has_roles = any("org.erofs.role" in la.get("annotations", {}) for la in manifest["layers"])
    assert has_roles is roles


def test_oci_layout_in_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_oci_layout(tmp_path / "in", sample_layers(), tag=TAG)
    line = run_convert(capsys, f"oci:{src.path}:{TAG}", "--dest", f"oci:{tmp_path / 'out'}:conv")
    assert line.startswith(f"oci:{tmp_path / 'out'}:conv@sha256:")
    out = json.loads(skopeo("inspect", "--raw", f"oci:{tmp_path / 'out'}:conv"))
    assert [la["mediaType"] for la in out["layers"]] == ["application/vnd.erofs"] * 3


@pytest.mark.parametrize("which", ["registry_basic", "registry_token"])
def test_authenticated_registries(tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    reg: RegistryServer = request.getfixturevalue(which)
    src = push_sample(tmp_path, reg, "e2e/auth")
    cfg = reg.write_docker_config(tmp_path / "docker")
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg.parent))
    rc = main([f"{reg.host}/e2e/auth:{TAG}", "--to", "erofs+lz4", "--dest", f"{reg.host}/e2e/converted:lz4", "-v",
               "--log-format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for secret in reg.secrets():
        assert secret not in out and secret not in err
    assert "Authorization" not in err
    check_layers_against_umoci(tmp_path, reg, out.strip().split("@")[0], src)


def test_missing_source_is_one_line_error(registry_open: RegistryServer, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([f"{registry_open.host}/e2e/nothing:here", "--log-format", "json", "-q"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "e2e/nothing" in err
