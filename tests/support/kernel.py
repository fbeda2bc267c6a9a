"""Real kernel checks: fsck.erofs, loop mounts of EROFS images and overlayfs, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter.erofs.tools import erofs_utils


def fsck(image: Path | str) -> None:
    """Run fsck.erofs and fail on a non-zero exit *or* any <E> line (it exits 0 on some errors)."""
    tools = erofs_utils()
    assert tools.fsck is not None, "fsck.erofs not found next to mkfs.erofs"
    res = subprocess.run([str(tools.fsck), str(image)], capture_output=True, text=True, check=False)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "<E>" in ln]
    assert res.returncode == 0 and not problems, f"fsck.erofs {image}: rc={res.returncode}\n{res.stderr}"


def can_mount() -> str | None:
    """None if loop-mounting EROFS works here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root for loop mounts"
    try:
        fs = Path("/proc/filesystems").read_text()
    except OSError:
        return "no /proc/filesystems"
    if "erofs" not in fs:
        return "kernel has no erofs"
    return None


def require_mount() -> None:
    reason = can_mount()
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def mounted(image: Path | str) -> Iterator[Path]:
    """Loop-mount an EROFS image read-only; unmounts (and frees the loop device) on exit."""
    require_mount()
    d = Path(tempfile.mkdtemp(prefix="erofs-mnt-"))
    subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", str(image), str(d)], check=True,
                   capture_output=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def overlay(images: list[Path]) -> Iterator[Path]:
    """Mount images (bottom first) as EROFS and stack them read-only with overlayfs."""
    with contextlib.ExitStack() as stack:
        lowers = [stack.enter_context(mounted(img)) for img in images]
        d = Path(tempfile.mkdtemp(prefix="ovl-mnt-"))
        # Without an upperdir overlayfs needs two lowers, so a single layer is stacked on itself.
        stack_order = lowers if len(lowers) > 1 else lowers * 2
        lowerdir = ":".join(str(p) for p in reversed(stack_order))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", str(d)],
                       check=True, capture_output=True)
        try:
            yield d
        finally:
            subprocess.run(["umount", str(d)], check=False, capture_output=True)
            with contextlib.suppress(OSError):
                d.rmdir()
