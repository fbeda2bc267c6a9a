"""`convert verify`: passes on our conversions (as a process without any capability), and fails,
naming the problem, on other tools' conversions and on images damaged in every way we know."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from converter.cli import main
from converter.erofs import format as fmt
from converter.erofs.reader import ErofsImage
from converter.testing.sample import sample_layers, write_oci_layout
from tests.support.registry import RegistryServer

from .layouts import Layout

TAG = "1.0"
#: Every capability dropped (bounding set too, so nothing comes back on exec): no mounts, no
#: DAC override. The uid stays 0 only because the test interpreter lives under /root.
NO_CAPS = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def _convert(src: Path, dest: str, *extra: str) -> None:
    """Convert the layout ``src`` to ``dest``. An ``oci:`` destination starts as a copy of the
    source layout: the conversion then sits beside its source, as the default destination puts
    it, which is where verify finds the source (provenance records only its digest)."""
    if dest.startswith("oci:"):
        path = Path(dest.removeprefix("oci:").rsplit(":", 1)[0])
        if not path.exists():
            shutil.copytree(src, path)
    assert main([f"oci:{src}:{TAG}", "--dest", dest, "-q", "--log-format", "json", *extra]) == 0


def _verify(*args: str, caps: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [*([] if caps else NO_CAPS), sys.executable, "-m", "converter.cli", "verify", *args, "--log-format", "json"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=600)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_oci_layout(tmp_path_factory.mktemp("vsrc") / "src", sample_layers(), tag=TAG).path


@pytest.fixture(scope="module")
def raw(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    out = tmp_path_factory.mktemp("vraw") / "out"
    _convert(source, f"oci:{out}:{TAG}")
    return Layout(out, TAG)


@pytest.mark.parametrize("fmt_", ["erofs", "erofs+lz4", "erofs+lz4hc", "erofs+zstd", "erofs+deflate", "erofs+lzma"])
def test_our_conversions_verify_without_capabilities(source: Path, tmp_path: Path, fmt_: str) -> None:
    out = tmp_path / "out"
    _convert(source, f"oci:{out}:{TAG}", "--to", fmt_)
    res = _verify(f"oci:{out}:{TAG}", "--report", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] and report["problems"] == []
    assert report["layers_checked"] == 3 and report["files_compared"] >= 15
    assert report["source"].startswith(f"oci:{out}@sha256:")  # found from the provenance: beside the image


def test_profiles_and_registry(source: Path, registry_open: RegistryServer, tmp_path: Path) -> None:
    """An image in a registry, containerd-2.3 profile, an explicit --source."""
    ref = f"{registry_open.host}/verify/app:{TAG}-c23"
    _convert(source, ref, "--media-type-profile", "containerd-2.3", "--to", "erofs+lz4")
    res = _verify(ref, "--source", f"oci:{source}:{TAG}")
    assert res.returncode == 0, res.stdout + res.stderr


def _lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    assert res.returncode == 1, res.stdout + res.stderr
    return res.stdout.splitlines()


def test_c_toolchain_conversion_fails_naming_the_0777_directories(source: Path, raw: Layout, tmp_path: Path) -> None:
    """What users script today: `gzip -dc L | mkfs.erofs --tar=f --aufs` per layer, manifest rewritten."""
    from converter.erofs.tools import erofs_utils

    bad = raw.copy(tmp_path / "ctool")
    mkfs = erofs_utils().mkfs
    for i, layer in enumerate(Layout(source, TAG).layer_paths()):
        img = tmp_path / f"c{i}.erofs"
        subprocess.run(f"gzip -dc {layer} | {mkfs} --quiet --tar=f --aufs {img}", shell=True, check=True)
        bad.replace_layer(i, img.read_bytes())
    lines = _lines(_verify(f"oci:{bad.path}:{TAG}"))
    assert any(ln.startswith("linux/amd64 layer 2/3 sha256:") and ln.endswith(": /usr: mode 0777, source says 0755")
               for ln in lines), lines
    assert any(": /opt/data: owner 0:0, source says 100000:100000" in ln for ln in lines), lines


def test_swapped_layer_blob(raw: Layout, tmp_path: Path) -> None:
    bad = raw.copy(tmp_path / "swap")
    bad.replace_layer(2, bad.layer_paths()[0].read_bytes())  # a valid EROFS image, digests consistent
    lines = _lines(_verify(f"oci:{bad.path}:{TAG}"))
    assert all(" layer 3/3 " in ln for ln in lines), lines
    assert any(ln.endswith(": /bin/busybox: entry file, source says (nothing)") for ln in lines), lines


def test_wrong_diff_id(raw: Layout, tmp_path: Path) -> None:
    bad = raw.copy(tmp_path / "diffid")
    wrong = "sha256:" + "ab" * 32

    def edit(manifest: dict, config: dict) -> None:  # type: ignore[type-arg]
        config["rootfs"]["diff_ids"][1] = wrong

    bad.rewrite(edit)
    lines = _lines(_verify(f"oci:{bad.path}:{TAG}"))
    want = str(raw.manifest()["layers"][1]["digest"])
    assert lines == [f"linux/amd64 config, layer 2/3 {want}: diff_id {wrong}, expected {want}"]


def test_config_without_os_features(raw: Layout, tmp_path: Path) -> None:
    bad = raw.copy(tmp_path / "feat")
    bad.rewrite(lambda manifest, config: config.pop("os.features"))
    lines = _lines(_verify(f"oci:{bad.path}:{TAG}"))
    assert lines == ["linux/amd64 config: os.features (none), expected [..., 'erofs']"]


def test_lower_layer_without_role(raw: Layout, tmp_path: Path) -> None:
    bad = raw.copy(tmp_path / "role")
    bad.rewrite(lambda manifest, config: manifest["layers"][1].pop("annotations"))
    lines = _lines(_verify(f"oci:{bad.path}:{TAG}"))
    assert len(lines) == 1 and "layer 2/3" in lines[0] and "org.erofs.role" in lines[0], lines
    assert lines[0].endswith("(none), expected overlay-lower")


def test_tampered_file_byte(raw: Layout, tmp_path: Path) -> None:
    """One byte inside a file's data, every digest updated: only the content check can see it."""
    bad = raw.copy(tmp_path / "tamper")
    layer0 = bad.layer_paths()[0]
    data = bytearray(layer0.read_bytes())
    with ErofsImage.open(layer0) as img:
        st = img.stat("/bin/busybox")
        raw_inode = img._inode(st.nid)
        assert st.layout == fmt.LAYOUT_FLAT_PLAIN or st.layout == fmt.LAYOUT_FLAT_INLINE
        data[raw_inode.i_u * img.block_size + 1000] ^= 0x01
    bad.replace_layer(0, bytes(data))
    lines = _lines(_verify(f"oci:{bad.path}:{TAG}"))
    assert len(lines) == 1, lines
    assert " layer 1/3 sha256:" in lines[0] and ": /bin/busybox: contents sha256:" in lines[0], lines


def test_not_erofs_layer_blob(raw: Layout, tmp_path: Path) -> None:
    bad = raw.copy(tmp_path / "junk")
    bad.replace_layer(1, b"\x00not an erofs image" * 100)
    lines = _lines(_verify(f"oci:{bad.path}:{TAG}"))
    assert any("layer 2/3" in ln and "not a readable EROFS image" in ln for ln in lines), lines


def test_hostile_manifest(raw: Layout, tmp_path: Path) -> None:
    bad = raw.copy(tmp_path / "hostile")

    def edit(manifest: dict, config: dict) -> None:  # type: ignore[type-arg]
        manifest["layers"][0]["size"] = -5

    bad.rewrite(edit)
    res = _verify(f"oci:{bad.path}:{TAG}")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = json.loads(res.stderr.strip().splitlines()[-1])  # with JSON logs the final error is JSON too
    assert last["event"] == "error" and last["error"].startswith("parsing manifest of "), res.stderr


def test_structure_only_and_usage(raw: Layout) -> None:
    res = _verify(f"oci:{raw.path}:{TAG}", "--no-source")
    assert res.returncode == 0, res.stderr
    assert _verify().returncode == 2


def test_unreadable_source_layer(source: Path, raw: Layout, tmp_path: Path) -> None:
    src = Layout(source, TAG).copy(tmp_path / "src")
    blob = src.layer_paths()[1]
    blob.write_bytes(blob.read_bytes()[:100])  # a truncated download left in place
    lines = _lines(_verify(f"oci:{raw.path}:{TAG}", "--source", f"oci:{src.path}:{TAG}"))
    assert len(lines) == 2, lines
    assert " layer 2/3 " in lines[0] and "source layer sha256:" in lines[0] and "unreadable" in lines[0]
    assert lines[1].endswith("contents not compared: source layer 2 below could not be read")
