"""Finds erofs-utils programs and their version, and refuses clearly when they are too old.

Search order (issue #2): ``$EROFS_UTILS_DIR`` (a prefix or its ``bin``), the project's cached
build (``scripts/setup-system.sh`` puts it under ``~/.cache/erofs-converter/erofs-utils``),
then ``PATH``. Versions are read from ``mkfs.erofs -V`` because erofs-utils 1.5 has no
``--version``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from converter.errors import ToolError

MIN_VERSION = (1, 9, 3)
HOW_TO_GET = (
    "run `make setup` (builds erofs-utils from Debian's newer source package into "
    "~/.cache/erofs-converter/erofs-utils) or set EROFS_UTILS_DIR to a prefix holding a newer build"
)


def cache_prefix() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "erofs-converter" / "erofs-utils"


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get("EROFS_UTILS_DIR")
    if env:
        dirs += [Path(env) / "bin", Path(env)]
    dirs.append(cache_prefix() / "bin")
    return dirs


def find_program(name: str) -> Path | None:
    """The first ``name`` (mkfs.erofs, fsck.erofs, dump.erofs) in the search order, or None."""
    for d in _candidate_dirs():
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    found = shutil.which(name)
    return Path(found) if found else None


@dataclass(frozen=True, slots=True)
class ErofsUtils:
    """Resolved erofs-utils programs and the version of mkfs.erofs."""

    mkfs: Path
    fsck: Path | None
    dump: Path | None
    version: tuple[int, ...]

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))


def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


@lru_cache(maxsize=8)
def _probe(mkfs: Path) -> tuple[int, ...]:
    try:
        out = subprocess.run([str(mkfs), "-V"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise ToolError(f"running {mkfs} -V: {exc}") from exc
    version = parse_version(out.stdout + out.stderr)
    if version is None:
        raise ToolError(f"reading the version of {mkfs}: unexpected output {out.stdout.strip()!r}")
    return version


def erofs_utils(*, need: tuple[int, ...] = MIN_VERSION, feature: str = "this conversion") -> ErofsUtils:
    """Locate erofs-utils and check that mkfs.erofs is at least ``need``."""
    mkfs = find_program("mkfs.erofs")
    want = ".".join(map(str, need))
    if mkfs is None:
        raise ToolError(f"{feature} needs mkfs.erofs >= {want}, but none was found; {HOW_TO_GET}")
    version = _probe(mkfs)
    if version < need:
        have = ".".join(map(str, version))
        raise ToolError(f"{feature} needs mkfs.erofs >= {want}, but {mkfs} is {have}; {HOW_TO_GET}")
    return ErofsUtils(mkfs=mkfs, fsck=_sibling(mkfs, "fsck.erofs"), dump=_sibling(mkfs, "dump.erofs"),
                      version=version)


def _sibling(mkfs: Path, name: str) -> Path | None:
    p = mkfs.parent / name
    if p.is_file():
        return p
    return find_program(name)
