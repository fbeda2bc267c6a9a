"""The converted image is a function of the source *content* and the options: the same source
read through the registry, a proxy on another port, by digest, from OCI layouts at two paths and
by ``convert mirror`` gives one manifest digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from converter.cli import main
from converter.testing.sample import sample_layers, write_oci_layout
from tests.reliability.proxy import FaultProxy
from tests.support.registry import RegistryServer
from tests.test_image_e2e import TAG, push_sample, skopeo


def convert(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = main([*args, "--log-format", "json", "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    (line,) = out.splitlines()
    return line.rsplit("@", 1)[1]


def test_one_digest_from_every_route(registry_open: RegistryServer, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    reg = registry_open.host
    repo = "prov/route"
    layout = push_sample(tmp_path, registry_open, repo)
    source_digest = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{reg}/{repo}:{TAG}"))["Digest"]
    digests: dict[str, str] = {}
    digests["direct"] = convert(capsys, f"{reg}/{repo}:{TAG}", "--dest", f"{reg}/prov/out:direct")
    with FaultProxy(reg) as proxy:
        digests["proxy"] = convert(capsys, f"{proxy.host}/{repo}:{TAG}", "--dest", f"{reg}/prov/out:proxy")
    digests["by digest"] = convert(capsys, f"{reg}/{repo}@{source_digest}", "--dest", f"{reg}/prov/out:digest")
    for name in ("a", "deeper/b"):
        copy = tmp_path / "layouts" / name
        shutil.copytree(layout, copy)
        digests[f"oci:{name}"] = convert(capsys, f"oci:{copy}:{TAG}", "--dest", f"oci:{tmp_path / 'out' / name}")
    job = tmp_path / "job.yaml"
    job.write_text(f"defaults:\n  to: erofs\n  dest: \"{reg}/prov/mirrored/{{repository}}:{{tag}}\"\n"
                   f"images:\n  - source: {reg}/{repo}:{TAG}\n")
    assert main(["mirror", str(job), "--log-format", "json", "-q"]) == 0
    capsys.readouterr()
    mirrored = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                                 f"docker://{reg}/prov/mirrored/{repo}:{TAG}"))
    digests["mirror"] = json.loads(skopeo("inspect", "--tls-verify=false",
                                          f"docker://{reg}/prov/mirrored/{repo}:{TAG}"))["Digest"]
    assert len(set(digests.values())) == 1, digests
    assert not any("source.ref" in k for k in mirrored["annotations"]), mirrored["annotations"]


def test_same_source_bytes_in_another_layout_same_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two separately written layouts of the same image (same bytes, other tags and paths)."""
    one = write_oci_layout(tmp_path / "one", sample_layers(), tag="x")
    two = write_oci_layout(tmp_path / "two" / "nested", sample_layers(), tag="y")
    assert one.manifest_digest == two.manifest_digest
    a = convert(capsys, f"oci:{one.path}:x", "--dest", f"oci:{tmp_path / 'o1'}:x")
    b = convert(capsys, f"oci:{two.path}:y", "--dest", f"oci:{tmp_path / 'o2'}:z")
    assert a == b
