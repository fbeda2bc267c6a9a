"""Client binaries that scripts/setup-system.sh unpacks from Debian sid into the cache (oras, crane)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def sid_tool(package: str, program: str | None = None) -> str:
    """The path of ``program`` (default: ``package``) unpacked from sid's ``package``; skips (a
    failure in CI) when setup has not run."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "erofs-converter" / "sid-tools"
    path = cache / package / "usr" / "bin" / (program or package)
    if not path.is_file():
        pytest.skip(f"{path} is missing: run `bash scripts/setup-system.sh` (make setup)")
    return str(path)
