"""The layer engine end to end: tar in, EROFS out, checked by fsck.erofs and the Linux kernel.

Expected trees come from tools we did not write: GNU tar extracts each source layer (whiteout
files then mapped to their overlayfs form), and `umoci raw unpack` flattens whole images that
we compare against an overlayfs mount of the converted layers.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from converter.cli import main
from converter.convert.layer import LayerOptions, convert_layer
from converter.erofs.target import parse_format
from converter.layers.normalise import MergedDirs
from converter.testing.sample import sample_layers, write_oci_layout
from tests.support.compare import Entry, diff, snapshot
from tests.support.fixtures import debian_rootfs_tar, gzip_file
from tests.support.kernel import fsck, mounted, overlay, require_mount

BUILDS = [
    pytest.param(["--to", "erofs"], id="python-raw"),
    pytest.param(["--to", "erofs", "--builder", "mkfs"], id="mkfs-raw"),
    pytest.param(["--to", "erofs+lz4"], id="mkfs-lz4"),
    pytest.param(["--to", "erofs+lz4", "--builder", "python"], id="python-lz4"),
    pytest.param(["--to", "erofs+lz4hc,level=12", "--builder", "python"], id="python-lz4hc"),
]


def convert(src: Path, out: Path, *args: str) -> Path:
    rc = main(["layer", str(src), "-o", str(out), *args])
    assert rc == 0, f"convert layer {src} failed"
    return out


def tar_members(tar: Path) -> set[str]:
    names = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, text=True, check=True).stdout
    out = set()
    for n in names.splitlines():
        n = n.strip().lstrip("./").rstrip("/") if n not in ("./", ".") else ""
        out.add("/" + n if n else "/")
    return out


def expected_layer(tar: Path, workdir: Path, *, bottom: bool) -> tuple[dict[str, Entry], set[str]]:
    """GNU tar's extraction of ``tar``, with whiteouts in overlayfs form; also the implicit dirs."""
    dest = workdir / "extract"
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tar),
                    "-C", str(dest)], check=True)
    snap = snapshot(dest)
    members = tar_members(tar)
    implicit = {p for p, e in snap.items() if stat.S_ISDIR(e.mode) and p not in members}
    for p in implicit:  # our default for parents without an entry (no lower layers given)
        e = snap[p]
        e.mode, e.uid, e.gid, e.mtime_ns = stat.S_IFDIR | 0o755, 0, 0, 0
    for path in sorted(snap, key=len, reverse=True):
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        if name == ".wh..wh..opq":
            del snap[path]
            if not bottom:
                snap[parent].xattrs["trusted.overlay.opaque"] = b"y"
        elif name.startswith(".wh."):
            wh = snap.pop(path)
            real = f"{parent.rstrip('/')}/{name[4:]}"
            if not bottom and real not in snap:  # a real entry of the same name wins
                snap[real] = Entry(mode=stat.S_IFCHR, uid=wh.uid, gid=wh.gid, mtime_ns=wh.mtime_ns, size=0)
                snap[parent].xattrs["trusted.overlay.origin"] = b""
    return snap, implicit


def assert_matches_gnu_tar(img: Path, tar: Path, work: Path, *, bottom: bool) -> None:
    """fsck.erofs passes and the kernel's mount of ``img`` equals GNU tar's extraction of ``tar``."""
    fsck(img)
    work.mkdir()
    expected, _ = expected_layer(tar, work, bottom=bottom)
    with mounted(img) as mnt:
        actual = snapshot(mnt)
    assert diff(expected, actual) == [], f"{img.name} differs from {tar.name}"


def sample_tar_files(tmp_path: Path) -> list[Path]:
    paths = []
    for i, data in enumerate(sample_layers()):
        p = tmp_path / f"layer{i}.tar"
        p.write_bytes(data)
        paths.append(p)
    return paths


@pytest.mark.parametrize("build", BUILDS)
def test_each_sample_layer_matches_gnu_tar(tmp_path: Path, build: list[str]) -> None:
    require_mount()
    for i, tar in enumerate(sample_tar_files(tmp_path)):
        bottom = i == 0
        img = convert(tar, tmp_path / f"l{i}.erofs", *build, *(["--bottom"] if bottom else []))
        assert_matches_gnu_tar(img, tar, tmp_path / f"x{i}", bottom=bottom)


@pytest.mark.parametrize("build", BUILDS)
def test_overlay_of_sample_image_matches_umoci(tmp_path: Path, build: list[str]) -> None:
    require_mount()
    tars = sample_tar_files(tmp_path)
    layout = write_oci_layout(tmp_path / "layout", [t.read_bytes() for t in tars])
    rootfs = tmp_path / "umoci"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout.path}:{layout.tag}", str(rootfs)],
                   check=True, capture_output=True)
    expected = snapshot(rootfs)
    images = []
    merged = MergedDirs()  # implicit parents in upper layers inherit what the lowers say
    for i, tar in enumerate(tars):
        gz = tmp_path / f"layer{i}.tar.gz"
        gz.write_bytes(subprocess.run(["gzip", "-n", "-c", str(tar)], capture_output=True, check=True).stdout)
        opts = LayerOptions(fmt=parse_format(build[1]), builder=build[3] if len(build) > 2 else "auto",
                            bottom=i == 0)
        with open(gz, "rb") as src:
            result = convert_layer(src, tmp_path / f"l{i}.erofs", options=opts, lower=merged,
                                   layer=gz.name, workdir=tmp_path)
        merged.apply(result.root)
        fsck(result.path)
        images.append(result.path)
    with overlay(images) as mnt:
        actual = snapshot(mnt)
    # umoci stamps "now" on directories it had to create or modify without an entry of their own;
    # overlayfs shows the metadata the layers carry. Those mtimes are not comparable.
    touched = {p for p, e in expected.items() if stat.S_ISDIR(e.mode) and e.mtime_ns > (time.time() - 3600) * 10**9}
    problems = diff(expected, actual, skip_dir_mtime=touched)
    assert problems == []


@pytest.mark.parametrize("build", BUILDS)
def test_builds_are_byte_identical(tmp_path: Path, build: list[str]) -> None:
    tar = sample_tar_files(tmp_path)[1]
    a = convert(tar, tmp_path / "a.erofs", *build)
    b = convert(tar, tmp_path / "b.erofs", *build)
    assert _sha(a) == _sha(b)


@pytest.mark.slow
def test_debian_rootfs_layer(tmp_path: Path) -> None:
    """A real ~200 MB debootstrap rootfs, gzipped, through the default builder."""
    require_mount()
    tar = debian_rootfs_tar()
    gz = gzip_file(tar)
    img = convert(gz, tmp_path / "debian.erofs", "--bottom")
    assert_matches_gnu_tar(img, tar, tmp_path / "x", bottom=True)
    again = convert(gz, tmp_path / "again.erofs", "--bottom")
    assert _sha(img) == _sha(again)


@pytest.mark.slow
def test_debian_rootfs_layer_lz4(tmp_path: Path) -> None:
    require_mount()
    tar = debian_rootfs_tar()
    img = convert(tar, tmp_path / "debian-lz4.erofs", "--bottom", "--to", "erofs+lz4")
    assert_matches_gnu_tar(img, tar, tmp_path / "x", bottom=True)


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_console_script_reads_stdin_and_lists(tmp_path: Path) -> None:
    tar = sample_tar_files(tmp_path)[0]
    exe = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "erofs-convert"
    if not exe.exists():
        exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "erofs-convert"
    out = tmp_path / "stdin.erofs"
    with open(tar, "rb") as f:
        res = subprocess.run([str(exe), "layer", "-", "-o", str(out), "--bottom"], stdin=f,
                             capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    ls = subprocess.run([str(exe), "ls", str(out)], capture_output=True, text=True, check=True).stdout
    assert "-rwsr-xr-x 0/0" in ls and "usr/bin/sudo" in ls
    assert "bin/sh -> busybox" in ls
    cat = subprocess.run([str(exe), "cat", str(out), "etc/hostname"], capture_output=True, check=True).stdout
    assert cat == b"sample\n"


def test_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage" * 100)
    out = tmp_path / "bad.erofs"
    rc = main(["layer", str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "bad.tar.gz" in err and "Traceback" not in err
    assert not out.exists()


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layer", "x", "-o", str(tmp_path / "o"), "--to", "erofs+snappy"]) == 2
    assert "snappy" in capsys.readouterr().err
    assert main(["layer"]) == 2
