"""Realistic fixtures the tests make themselves, cached between runs (no network but Debian's mirror)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    d = Path(base) / "erofs-converter" / "fixtures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def debian_rootfs_tar() -> Path:
    """A `debootstrap --variant=minbase bookworm` rootfs as an uncompressed tar (~200 MB), cached."""
    out = cache_dir() / "debian-bookworm-minbase.tar"
    if out.exists():
        return out
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (make setup installs it)")
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        res = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            pytest.fail(f"debootstrap failed: {res.stdout[-2000:]}{res.stderr[-2000:]}")
        partial = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sort=name",
                        "--format=posix", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(out)
    return out


def gzip_file(src: Path) -> Path:
    """``src`` gzipped next to it (cached)."""
    out = src.with_name(src.name + ".gz")
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        with open(tmp, "wb") as f:
            subprocess.run(["pigz" if shutil.which("pigz") else "gzip", "-n", "-6", "-c", str(src)],
                           stdout=f, check=True)
        tmp.rename(out)
    return out
