"""Go's archive/tar as a reference: builds tests/gotar/main.go and reads its view of a tar.

The program applies a tar with containerd's rules (see its doc comment); this module turns its
JSON into the same ``Entry`` snapshots a kernel mount of our image gives, so the two compare
with ``tests.support.compare.diff``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.compare import Entry

GO = Path("/usr/lib/go-1.19/bin/go")  # Debian's golang-1.19-go (scripts/setup-system.sh)
GO_TESTDATA = Path("/usr/lib/go-1.19/src/archive/tar/testdata")  # Debian's golang-1.19-src
SOURCE = Path(__file__).resolve().parent.parent / "gotar" / "main.go"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "erofs-converter" / "gotar"

_TYPES = {"dir": stat.S_IFDIR, "reg": stat.S_IFREG, "symlink": stat.S_IFLNK, "chr": stat.S_IFCHR,
          "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}


def gotar_binary() -> Path:
    """The built program (cached by the hash of its source); a skip (a CI failure) without Go."""
    if not GO.exists():
        pytest.skip(f"Go is not installed ({GO}); run `make setup`")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    binary = CACHE / digest / "gotar"
    if binary.exists():
        return binary
    work = CACHE / digest
    work.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "GOCACHE": str(work / "gocache"),
           "GOPATH": str(work / "gopath"), "GOPROXY": "off", "GO111MODULE": "off", "GOFLAGS": "",
           "CGO_ENABLED": "0"}
    partial = work / f"gotar.{os.getpid()}.partial"
    subprocess.run([str(GO), "build", "-o", str(partial), str(SOURCE)], env=env, check=True, capture_output=True)
    partial.replace(binary)
    return binary


@dataclass(frozen=True)
class GoView:
    """What Go + containerd make of a tar: the tree, or the error that stopped the apply."""

    tree: dict[str, Entry] | None
    error: str | None
    implicit: frozenset[str]  # directories containerd invented (their mtime is the time of extraction)
    whiteouts: frozenset[str]  # overlay-mode whiteout devices (same: their mtime is "now")


def go_apply(tar: Path, *, overlay: bool = False) -> GoView:
    """Run ``gotar apply`` on ``tar``."""
    res = subprocess.run([str(gotar_binary()), "apply", "-mode", "overlay" if overlay else "naive", str(tar)],
                         capture_output=True, check=True)
    doc = json.loads(res.stdout)
    if "error" in doc:
        return GoView(None, doc["error"], frozenset(), frozenset())
    tree: dict[str, Entry] = {}
    inos: dict[int, list[str]] = {}
    implicit, whiteouts = set(), set()
    for item in doc["tree"]:
        path = os.fsdecode(bytes.fromhex(item["path"]))
        mode = _TYPES[item["type"]] | item["mode"]
        e = Entry(mode=mode, uid=item["uid"], gid=item["gid"], mtime_ns=item["mtime_ns"], size=item["size"])
        if item["type"] == "reg":
            e.sha256 = item.get("sha256", hashlib.sha256(b"").hexdigest())
            inos.setdefault(item["ino"], []).append(path)
        elif item["type"] == "symlink":
            e.target = os.fsdecode(bytes.fromhex(item["target"]))
            inos.setdefault(item["ino"], []).append(path)
        elif item["type"] in ("chr", "blk"):
            e.rdev = (item["major"], item["minor"])
        e.xattrs = {os.fsdecode(bytes.fromhex(k)): bytes.fromhex(v) for k, v in item["xattrs"].items()}
        if item["implicit"]:
            implicit.add(path)
        if item["mtime_ns"] == -1:
            whiteouts.add(path)
        tree[path] = e
    for members in inos.values():
        if len(members) > 1:
            for p in members:
                if stat.S_ISREG(tree[p].mode):
                    tree[p].link_group = hash(min(members))
    return GoView(tree, None, frozenset(implicit), frozenset(whiteouts))


def go_write(specs: list[dict[str, object]], out: Path) -> None:
    """Write ``specs`` (see ``writeSpec`` in main.go; ``content`` as base64) with Go's tar writer."""
    with open(out, "wb") as f:
        subprocess.run([str(gotar_binary()), "write"], input=json.dumps(specs).encode(), stdout=f, check=True)
