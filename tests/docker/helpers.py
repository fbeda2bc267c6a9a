"""Helpers of the container tests: the host's own conversion, files a container user can read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.docker.engine import REPO


def host_convert(*args: str) -> str:
    """The tool on this machine, as a user runs it; returns the REF@DIGEST line it prints."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "converter.cli", *args, "-q"], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def readable_by_all(path: Path) -> Path:
    """Make every file below ``path`` readable and every directory enterable by anyone (the image's
    user 10001 reads bind mounts; a bind mount's source parents don't matter)."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path
