"""The conversion as an OCI 1.1 referrer of its source, read back by oras, crane and skopeo.

Debian's docker-registry (distribution 2.8) has no referrers API, so these tests exercise the
distribution spec's fallback: the ``sha256-<hex>`` tag index the converter maintains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from converter.cli import main
from converter.oci.mediatypes import MediaType
from converter.oci.model import Descriptor
from converter.reference import Digest
from converter.registry.client import RegistryClient
from converter.transports.referrers import ReferrersKept, add_referrer
from tests.support.registry import RegistryServer
from tests.support.sidtools import sid_tool
from tests.test_image_e2e import TAG, push_sample, skopeo

REPO_ROOT = Path(__file__).resolve().parents[1]


def tool(*args: str) -> str:
    res = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=120)
    assert res.returncode == 0, f"{' '.join(args)}: {res.stderr}"
    return res.stdout


def discover(reg: str, repo: str, digest: str) -> list[dict[str, Any]]:
    out = json.loads(tool(sid_tool("oras"), "discover", "--plain-http", "--format", "json",
                          f"{reg}/{repo}@{digest}"))
    referrers: list[dict[str, Any]] = out["referrers"]
    return referrers


def source_digest(reg: str, repo: str) -> str:
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/{repo}:{TAG}").encode()
    return str(Digest.from_bytes(raw))


def convert_subprocess(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "converter.cli", *args, "--log-format", "json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_registry_has_no_referrers_api(registry_open: RegistryServer) -> None:
    """Why the fallback tag matters here: distribution 2.8 answers 404 (spec: unsupported)."""
    resp = httpx.get(f"http://{registry_open.host}/v2/any/referrers/sha256:{'0' * 64}")
    assert resp.status_code == 404


def test_concurrent_conversions_both_listed(registry_open: RegistryServer, tmp_path: Path) -> None:
    reg, repo = registry_open.host, "refs/concurrent"
    push_sample(tmp_path, registry_open, repo)
    src = source_digest(reg, repo)
    src_size = len(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{reg}/{repo}@{src}").encode())
    procs = [convert_subprocess(f"{reg}/{repo}:{TAG}", "--to", fmt) for fmt in ("erofs", "erofs+lz4")]
    pushed = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        pushed.append(out.strip().rsplit("@", 1)[1])
    # oras lists both conversions under the source digest, with our annotations
    referrers = discover(reg, repo, src)
    assert sorted(r["digest"] for r in referrers) == sorted(pushed)
    assert {r["annotations"]["io.github.erofs-converter.format"] for r in referrers} == {"erofs", "erofs+lz4"}
    assert {r["artifactType"] for r in referrers} == {MediaType.OCI_CONFIG.value}
    # crane reads the converted manifest (subject = the source) and the fallback tag index
    for digest in pushed:
        manifest = json.loads(tool(sid_tool("crane"), "manifest", "--insecure", f"{reg}/{repo}@{digest}"))
        assert manifest["subject"] == {"mediaType": MediaType.OCI_MANIFEST.value, "digest": src, "size": src_size}
        assert manifest["annotations"]["io.github.erofs-converter.source.digest"] == src
    fallback = json.loads(tool(sid_tool("crane"), "manifest", "--insecure", f"{reg}/{repo}:sha256-{src[7:]}"))
    assert fallback["mediaType"] == MediaType.OCI_INDEX.value
    assert sorted(m["digest"] for m in fallback["manifests"]) == sorted(pushed)
    # skopeo reads the converted images by their tags
    for fmt, digest in zip(("erofs", "erofs-lz4"), pushed, strict=True):
        info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{reg}/{repo}:{TAG}-{fmt}"))
        assert info["Digest"] == digest


def test_no_referrer_option(registry_open: RegistryServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                            ) -> None:
    reg, repo = registry_open.host, "refs/off"
    push_sample(tmp_path, registry_open, repo)
    src = source_digest(reg, repo)
    assert main([f"{reg}/{repo}:{TAG}", "--no-referrer", "--log-format", "json", "-q"]) == 0
    digest = capsys.readouterr().out.strip().rsplit("@", 1)[1]
    manifest = json.loads(tool(sid_tool("crane"), "manifest", "--insecure", f"{reg}/{repo}@{digest}"))
    assert "subject" not in manifest
    assert discover(reg, repo, src) == []
    assert f"sha256-{src[7:]}" not in tool(sid_tool("crane"), "ls", "--insecure", f"{reg}/{repo}").split()


def test_index_source_platforms_and_index_are_referrers(registry_open: RegistryServer, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    reg, repo = registry_open.host, "refs/multi"
    push_sample(tmp_path, registry_open, repo, platforms=("amd64", "arm64"))
    src = source_digest(reg, repo)
    assert main([f"{reg}/{repo}:{TAG}", "--log-format", "json", "-q"]) == 0
    digest = capsys.readouterr().out.strip().rsplit("@", 1)[1]
    assert [r["digest"] for r in discover(reg, repo, src)] == [digest]
    index = json.loads(tool(sid_tool("crane"), "manifest", "--insecure", f"{reg}/{repo}@{digest}"))
    assert index["subject"]["digest"] == src and index["subject"]["mediaType"] == MediaType.OCI_INDEX.value
    for entry in index["manifests"]:
        platform_manifest = json.loads(tool(sid_tool("crane"), "manifest", "--insecure",
                                            f"{reg}/{repo}@{entry['digest']}"))
        source_platform = platform_manifest["subject"]["digest"]
        assert platform_manifest["annotations"]["io.github.erofs-converter.source.digest"] == source_platform
        assert [r["digest"] for r in discover(reg, repo, source_platform)] == [entry["digest"]]


def test_racing_fallback_tag_writers_keep_both(registry_open: RegistryServer, client: RegistryClient,
                                               tmp_path: Path) -> None:
    """Both writers read the empty list before either writes: the one whose write is lost
    notices on re-reading and adds its entry again."""
    reg, repo = registry_open.host, "refs/race"
    push_sample(tmp_path, registry_open, repo)
    src = Digest.parse(source_digest(reg, repo))
    entries = []
    for i in range(2):  # two tiny manifests to list (content is irrelevant to the tag index)
        data = json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST.value,
                           "config": {"mediaType": MediaType.OCI_CONFIG.value, "digest": str(Digest.from_bytes(b"{}")),
                                      "size": 2},
                           "layers": [], "annotations": {"n": str(i)}}).encode()
        client.push_blob(reg, repo, Digest.from_bytes(b"{}"), 2, _file(tmp_path / f"c{i}", b"{}"))
        client.put_manifest(reg, repo, Digest.from_bytes(data), data, MediaType.OCI_MANIFEST.value)
        entries.append(Descriptor(MediaType.OCI_MANIFEST.value, Digest.from_bytes(data), len(data),
                                  artifact_type=MediaType.OCI_CONFIG.value))
    barrier = threading.Barrier(2)
    reads = [0, 0]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        def after_read() -> None:
            reads[i] += 1
            if reads[i] == 1:
                barrier.wait(timeout=30)
        try:
            assert add_referrer(client, reg, repo, src, entries[i], settle=0.3,
                                after_read=after_read) is ReferrersKept.TAG
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert max(reads) >= 2  # someone lost the first round and went again
    listed = [r["digest"] for r in discover(reg, repo, str(src))]
    assert sorted(listed) == sorted(str(e.digest) for e in entries)


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
