"""Benchmark inputs: a realistic four-layer image, built once and cached, plus an optional big layer.

Everything lives under ``~/.cache/erofs-converter/bench/`` (``$XDG_CACHE_HOME`` honoured) and
needs no network but the Debian mirror:

1. ``01-rootfs``: ``debootstrap --variant=minbase bookworm`` (~200 MB of tar);
2. ``02-packages``: the rootfs extracted again, ``apt-get install --no-install-recommends`` of a
   Python development toolchain in a chroot (``/proc`` mounted only while apt runs), and a tar
   of just the new or changed paths (path + mtime + size + ctime against a snapshot taken before
   apt ran, parents included as containerd's differ does) plus ``.wh.NAME`` whiteouts for
   deleted paths;
3. ``03-smallfiles``: 50,000 generated small files shaped like ``node_modules`` and
   ``site-packages`` trees (deterministic random sizes, mostly < 8 KiB, nested dirs, symlinks);
4. ``04-deletions``: whiteouts of directories and files of the lower layers, one opaque
   directory with new contents, a couple of new files.

Tars are deterministic (sorted names, numeric owners, ``--format=posix`` without atime/ctime)
and gzipped with ``pigz -n``. Only the ``.tar.gz`` and a JSON sidecar with both digests are
kept. Layers 1 and 2 come from the live mirror, so their bytes differ between machines;
``bench/results.json`` pins the digests that were measured.

``write_layout`` makes an OCI image layout of the cached blobs (hard links, nothing is held in
memory), and ``push_image`` copies it with skopeo into a registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CACHE_VERSION = 1
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# A "python dev" image layer: ~230 MB of tar on top of minbase.
PACKAGES = ("python3", "python3-pip", "python3-venv", "python3-dev", "git", "ca-certificates")
SMALL_FILES = 50_000
SEED = 20240601
FIXED_MTIME = 1_700_000_000
IMAGE_REPO = "bench/image"
IMAGE_TAG = "tar"
GZIP_LEVEL = "-6"
TAR_DETERMINISM = ["--numeric-owner", "--format=posix",
                   "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"]
TAR_XATTRS = ["--xattrs", "--xattrs-include=*"]
_CHUNK = 1 << 20

Log = Callable[[str], None]


class InputError(RuntimeError):
    """Building a benchmark input failed (a tool is missing or exited non-zero)."""


def _print(msg: str) -> None:
    print(f"[inputs] {msg}", flush=True)


def cache_root() -> Path:
    """``~/.cache/erofs-converter/bench`` (or under ``$XDG_CACHE_HOME``), created on demand."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base) / "erofs-converter" / "bench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _layers_dir() -> Path:
    d = cache_root() / "layers"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run(argv: list[str], *, what: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure raise InputError with the tail of its output."""
    try:
        res: subprocess.CompletedProcess[bytes] = subprocess.run(
            argv, capture_output=kwargs.pop("capture_output", True), check=False, **kwargs)
    except OSError as exc:
        raise InputError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if res.returncode != 0:
        tail = ((res.stdout or b"")[-1500:] + (res.stderr or b"")[-1500:]).decode("utf-8", "replace")
        raise InputError(f"{what}: {' '.join(argv[:3])}… exited {res.returncode}:\n{tail}")
    return res


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise InputError(f"missing programs: {', '.join(missing)} (make setup installs them)")


def sha256_file(path: Path) -> tuple[str, int]:
    """``("sha256:HEX", size)`` of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(4 * _CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return "sha256:" + h.hexdigest(), size


# --- the cached layer record -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerInput:
    """One cached layer: its ``.tar.gz`` and the digests/sizes of the tar and of the gzip blob."""

    name: str
    description: str
    gz: Path
    tar_digest: str
    tar_size: int
    gz_digest: str
    gz_size: int
    entries: int
    bottom: bool = False
    recipe: str = ""  # what the layer was made from; a different recipe invalidates the cache

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "file": str(self.gz),
                "diff_id": self.tar_digest, "tar_size": self.tar_size, "blob_digest": self.gz_digest,
                "blob_size": self.gz_size, "entries": self.entries, "bottom": self.bottom,
                "recipe": self.recipe}

    @classmethod
    def load(cls, sidecar: Path) -> LayerInput | None:
        """The record in ``sidecar`` if it is current and its blob still exists, else None."""
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return None
        gz = Path(data.get("file", ""))
        if data.get("cache_version") != CACHE_VERSION or not gz.is_file() or gz.stat().st_size != data["blob_size"]:
            return None
        return cls(name=data["name"], description=data["description"], gz=gz, tar_digest=data["diff_id"],
                   tar_size=data["tar_size"], gz_digest=data["blob_digest"], gz_size=data["blob_size"],
                   entries=data["entries"], bottom=data.get("bottom", False), recipe=data.get("recipe", ""))

    def save(self, sidecar: Path) -> None:
        tmp = sidecar.with_name(sidecar.name + ".partial")
        tmp.write_text(json.dumps({"cache_version": CACHE_VERSION, **self.as_json()}, indent=1) + "\n")
        tmp.rename(sidecar)


def _count_entries(tar: Path) -> int:
    res = _run(["tar", "-tf", str(tar)], what=f"listing {tar.name}")
    return res.stdout.count(b"\n")


def _finish_layer(name: str, description: str, tar: Path, *, recipe: str, bottom: bool = False) -> LayerInput:
    """Hash ``tar``, gzip it with ``pigz -n``, hash the blob, write the sidecar, drop the tar."""
    tar_digest, tar_size = sha256_file(tar)
    entries = _count_entries(tar)
    gz = _layers_dir() / f"{name}.tar.gz"
    partial = gz.with_name(gz.name + ".partial")
    with open(partial, "wb") as out:
        _run(["pigz", "-n", GZIP_LEVEL, "-c", str(tar)], what=f"compressing {name}", stdout=out,
             capture_output=False, stderr=subprocess.PIPE)
    partial.rename(gz)
    gz_digest, gz_size = sha256_file(gz)
    layer = LayerInput(name=name, description=description, gz=gz, tar_digest=tar_digest, tar_size=tar_size,
                       gz_digest=gz_digest, gz_size=gz_size, entries=entries, bottom=bottom,
                       recipe=recipe)
    layer.save(_layers_dir() / f"{name}.json")
    tar.unlink()
    return layer


def _cached(name: str, recipe: str) -> LayerInput | None:
    layer = LayerInput.load(_layers_dir() / f"{name}.json")
    return layer if layer is not None and layer.recipe == recipe else None


@contextlib.contextmanager
def _workdir(tag: str) -> Iterator[Path]:
    """A scratch directory under the cache (same filesystem as the results), removed afterwards."""
    parent = cache_root() / "work"
    parent.mkdir(exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=parent))
    try:
        yield d
    finally:
        mounted = [p for p in d.glob("*/proc") if os.path.ismount(p)]
        if mounted:  # never recurse into a live /proc; say where it is instead
            raise InputError(f"not removing {d}: {mounted[0]} is still mounted")
        shutil.rmtree(d, ignore_errors=True)


# --- layer 1: debootstrap ----------------------------------------------------------------------


def _tar_tree(root: Path, out: Path) -> None:
    _run(["tar", *TAR_DETERMINISM, *TAR_XATTRS, "--sort=name", "-C", str(root), "-cf", str(out), "."],
         what=f"archiving {root}")


def rootfs_layer(log: Log = _print) -> LayerInput:
    """Layer 1: ``debootstrap --variant=minbase bookworm`` as a tar (~200 MB)."""
    name = "01-rootfs"
    recipe = f"debootstrap --variant=minbase {SUITE} {MIRROR}"
    if (cached := _cached(name, recipe)) is not None:
        return cached
    _need("debootstrap", "tar", "pigz")
    if os.geteuid() != 0:
        raise InputError("debootstrap needs root")
    log(f"{name}: debootstrap --variant=minbase {SUITE} from {MIRROR} (a few minutes)…")
    started = time.monotonic()
    with _workdir(name) as work:
        rootfs = work / "rootfs"
        _run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR], what="debootstrap")
        tar = work / f"{name}.tar"
        _tar_tree(rootfs, tar)
        layer = _finish_layer(name, f"debootstrap --variant=minbase {SUITE}", tar, recipe=recipe, bottom=True)
    log(f"{name}: {layer.tar_size / 1e6:.0f} MB tar, {layer.entries} entries in {time.monotonic() - started:.0f}s")
    return layer


# --- layer 2: apt-get install in a chroot, diffed against a snapshot ----------------------------

_StatKey = tuple[int, int, int, int]


def _snapshot(root: Path) -> dict[bytes, _StatKey]:
    """Every path under ``root`` (as ``b"./a/b"``) → (mode, mtime_ns, size, ctime_ns), symlinks not followed."""
    base = os.fsencode(root)
    st = os.lstat(base)
    out: dict[bytes, _StatKey] = {b".": (st.st_mode, st.st_mtime_ns, st.st_size, st.st_ctime_ns)}
    stack = [b"."]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(base, rel)) as it:
            for entry in it:
                path = rel + b"/" + entry.name
                est = entry.stat(follow_symlinks=False)
                out[path] = (est.st_mode, est.st_mtime_ns, est.st_size, est.st_ctime_ns)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(path)
    return out


def _parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0]


def _sort_key(path: bytes) -> list[bytes]:
    """Name order per directory (as ``tar --sort=name``), parents before children."""
    return path.split(b"/")


@dataclass(frozen=True, slots=True)
class TreeDiff:
    """What changed between two snapshots: entries to archive, and topmost deleted paths."""

    changed: list[bytes]
    deleted: list[bytes]


def diff_snapshots(before: dict[bytes, _StatKey], after: dict[bytes, _StatKey]) -> TreeDiff:
    """New/changed paths (by mode, mtime, size, ctime) plus their parent directories, and the
    deleted paths whose parent still exists (a whiteout for a directory covers its contents)."""
    changed = {p for p, key in after.items() if before.get(p) != key}
    for path in list(changed):
        parent = _parent(path)
        while path != b"." and parent != b"." and parent not in changed:
            changed.add(parent)
            path, parent = parent, _parent(parent)
    deleted = [p for p in before if p not in after and _parent(p) in after]
    return TreeDiff(changed=sorted(changed, key=_sort_key), deleted=sorted(deleted, key=_sort_key))


def _add_whiteouts(root: Path, diff: TreeDiff) -> list[bytes]:
    """Create empty ``.wh.NAME`` files for deleted paths (parent times restored); return all entries."""
    base = os.fsencode(root)
    parents = {_parent(p) for p in diff.deleted}
    times = {p: os.lstat(os.path.join(base, p)) for p in parents}
    entries = set(diff.changed)
    for path in diff.deleted:
        parent, name = path.rsplit(b"/", 1)
        wh = parent + b"/.wh." + name
        full = os.path.join(base, wh)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.chown(full, 0, 0)
        mtime = times[parent].st_mtime_ns
        os.utime(full, ns=(mtime, mtime))
        entries.add(wh)
        entries.add(parent)
    for parent, st in times.items():
        os.utime(os.path.join(base, parent), ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return sorted(entries, key=_sort_key)


@contextlib.contextmanager
def _chroot_ready(rootfs: Path) -> Iterator[None]:
    """/proc mounted, a resolv.conf and a policy-rc.d that stops services starting; all undone after."""
    proc = rootfs / "proc"
    resolv = rootfs / "etc" / "resolv.conf"
    policy = rootfs / "usr" / "sbin" / "policy-rc.d"
    made_resolv = not resolv.exists() and not resolv.is_symlink()
    if made_resolv:
        shutil.copyfile("/etc/resolv.conf", resolv)
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _run(["mount", "-t", "proc", "proc", str(proc)], what="mounting /proc in the chroot")
    try:
        yield
    finally:
        res = subprocess.run(["umount", str(proc)], capture_output=True, check=False)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", str(proc)], capture_output=True, check=False)
        policy.unlink(missing_ok=True)
        if made_resolv:
            resolv.unlink(missing_ok=True)


def packages_layer(log: Log = _print) -> LayerInput:
    """Layer 2: ``apt-get install -y --no-install-recommends PACKAGES`` on top of layer 1 (~230 MB)."""
    name = "02-packages"
    base = rootfs_layer(log)
    recipe = f"{base.gz_digest} + apt-get install --no-install-recommends {' '.join(PACKAGES)}"
    if (cached := _cached(name, recipe)) is not None:
        return cached
    _need("tar", "pigz", "chroot", "mount", "umount")
    log(f"{name}: apt-get install {' '.join(PACKAGES)} in a chroot…")
    started = time.monotonic()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    with _workdir(name) as work:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        _run(["tar", "--numeric-owner", *TAR_XATTRS, "-xpzf", str(base.gz), "-C", str(rootfs)],
             what="extracting layer 1")
        before = _snapshot(rootfs)
        with _chroot_ready(rootfs):
            for cmd in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
                        ["apt-get", "clean"],
                        ["sh", "-c", "rm -rf /var/lib/apt/lists/* /var/log/apt/*.log /tmp/*"]):
                _run(["chroot", str(rootfs), *cmd], what=f"chroot {' '.join(cmd[:2])}", env=env)
        diff = diff_snapshots(before, _snapshot(rootfs))
        entries = _add_whiteouts(rootfs, diff)
        listing = work / "entries.lst"
        listing.write_bytes(b"".join(e + b"\0" for e in entries))
        tar = work / f"{name}.tar"
        _run(["tar", *TAR_DETERMINISM, *TAR_XATTRS, "--no-recursion", "-C", str(rootfs), "-cf", str(tar),
              "--null", "--verbatim-files-from", "-T", str(listing)], what="archiving the changed paths")
        layer = _finish_layer(name, f"apt-get install --no-install-recommends {' '.join(PACKAGES)}", tar,
                              recipe=recipe)
    log(f"{name}: {layer.tar_size / 1e6:.0f} MB tar, {layer.entries} entries ({len(diff.deleted)} whiteouts) "
        f"in {time.monotonic() - started:.0f}s")
    return layer


# --- layer 3: 50,000 generated small files -------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    kind: str  # "dir", "file", "symlink"
    size: int = 0
    offset: int = 0
    mode: int = 0o644
    target: str = ""
    random_data: bool = False
    mtime: int = FIXED_MTIME


_SYLLABLES = ("ab", "ac", "al", "am", "an", "ar", "as", "at", "be", "bo", "ca", "ce", "ch", "co", "da", "de",
              "di", "do", "el", "en", "er", "es", "ex", "fi", "fo", "ge", "ha", "he", "in", "is", "it", "ja",
              "ke", "la", "le", "li", "lo", "ma", "me", "mi", "mo", "na", "ne", "no", "nu", "ob", "on", "or",
              "pa", "pe", "pi", "po", "qu", "ra", "re", "ri", "ro", "sa", "se", "si", "so", "st", "ta", "te",
              "ti", "to", "tr", "un", "ur", "va", "ve", "vi", "wa", "xe", "yo", "za", "ze")


def _word(rng: random.Random, lo: int = 2, hi: int = 4) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(lo, hi)))


def text_pool(rng: random.Random, size: int = 4 << 20) -> bytes:
    """Code-like text (identifiers, punctuation, indentation): compresses about as well as JS/Python."""
    idents = [_word(rng, 1, 4) for _ in range(3000)]
    keywords = ["function", "return", "const", "let", "if", "else", "import", "from", "export", "def", "self",
                "class", "None", "true", "false", "await", "async", "for", "in", "of", "new", "this"]
    punct = ["(", ")", "{", "}", "[", "]", ";", ",", ".", " = ", " => ", ": ", " + ", " === ", "'", '"']
    parts: list[str] = []
    total = 0
    while total < size:
        indent = "  " * rng.randint(0, 4)
        line = [indent]
        for _ in range(rng.randint(2, 12)):
            r = rng.random()
            line.append(rng.choice(keywords) if r < 0.2 else rng.choice(punct) if r < 0.55 else rng.choice(idents))
            line.append(" " if rng.random() < 0.4 else "")
        s = "".join(line) + "\n"
        parts.append(s)
        total += len(s)
    return "".join(parts).encode()[:size]


def _small_size(rng: random.Random) -> int:
    """Log-normal around 1.3 KiB: ~94% below 8 KiB, a long tail up to 1 MiB, some empty files."""
    if rng.random() < 0.03:
        return 0
    return min(1 << 20, max(1, int(rng.lognormvariate(math.log(1300), 1.05))))


class _TreeBuilder:
    """Collects entries by path; parents are added implicitly as 0755 directories."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.files = 0

    def add(self, path: str, entry: _Entry) -> bool:
        if path in self.entries:
            return False
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            existing = self.entries.get(parent)
            if existing is None:
                self.entries[parent] = _Entry("dir", mode=0o755)
            elif existing.kind != "dir":
                return False
        self.entries[path] = entry
        if entry.kind == "file":
            self.files += 1
        return True


_JS_DIRS = ("", "lib", "dist", "src", "lib/utils", "dist/esm", "dist/cjs", "types", "lib/internal", "es",
            "build/src", "lib/core/helpers")
_JS_EXT = (".js", ".js", ".js", ".d.ts", ".js.map", ".mjs", ".cjs", ".json", ".ts")


def _node_package(tree: _TreeBuilder, rng: random.Random, root: str, pool_len: int, depth: int) -> None:
    scope = f"@{_word(rng, 1, 2)}/" if rng.random() < 0.12 else ""
    pkg = f"{root}/{scope}{_word(rng)}{'-' + _word(rng, 1, 2) if rng.random() < 0.4 else ''}"
    if pkg in tree.entries:
        return

    def file(path: str, size: int | None = None, mode: int = 0o644) -> None:
        n = _small_size(rng) if size is None else size
        tree.add(path, _Entry("file", size=n, offset=rng.randrange(pool_len), mode=mode))

    file(f"{pkg}/package.json", rng.randint(400, 3500))
    file(f"{pkg}/README.md", rng.randint(300, 14000))
    file(f"{pkg}/LICENSE", 1075)
    count = min(400, int(rng.paretovariate(1.15) * 4))
    for _ in range(count):
        d = rng.choice(_JS_DIRS)
        file(f"{pkg}/{d + '/' if d else ''}{_word(rng, 1, 3)}{rng.choice(_JS_EXT)}")
    if rng.random() < 0.1:
        file(f"{pkg}/bin/cli.js", mode=0o755)
        tool = pkg.rsplit("/", 1)[1]
        tree.add(f"{root}/.bin/{tool}", _Entry("symlink", mode=0o777, target=f"../{pkg[len(root) + 1:]}/bin/cli.js"))
    if depth == 0 and rng.random() < 0.08:
        for _ in range(rng.randint(1, 3)):
            _node_package(tree, rng, f"{pkg}/node_modules", pool_len, depth + 1)


def _python_package(tree: _TreeBuilder, rng: random.Random, root: str, pool_len: int) -> None:
    name = _word(rng)
    if f"{root}/{name}" in tree.entries:
        return
    version = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"

    def file(path: str, size: int | None = None, *, random_data: bool = False) -> None:
        n = _small_size(rng) if size is None else size
        tree.add(path, _Entry("file", size=n, offset=rng.randrange(pool_len), random_data=random_data))

    info = f"{root}/{name}-{version}.dist-info"
    for meta, size in (("METADATA", rng.randint(800, 20000)), ("RECORD", rng.randint(300, 9000)),
                       ("WHEEL", 92), ("INSTALLER", 4), ("top_level.txt", len(name) + 1)):
        file(f"{info}/{meta}", size)
    file(f"{root}/{name}/__init__.py", 0 if rng.random() < 0.4 else None)
    subs = [""] + [f"{_word(rng, 1, 2)}/" for _ in range(rng.randint(0, 4))]
    for sub in subs[1:]:
        file(f"{root}/{name}/{sub}__init__.py", 0 if rng.random() < 0.5 else None)
    for _ in range(min(300, int(rng.paretovariate(1.2) * 5))):
        file(f"{root}/{name}/{rng.choice(subs)}{_word(rng, 1, 3)}.py")
    if rng.random() < 0.08:  # a compiled extension: bigger, incompressible
        file(f"{root}/{name}/_{_word(rng, 1, 2)}.cpython-311-x86_64-linux-gnu.so", rng.randint(60_000, 900_000),
             random_data=True)
    if rng.random() < 0.3:
        file(f"{root}/{name}/py.typed", 0)


def small_files_tree(count: int = SMALL_FILES, seed: int = SEED, pool_len: int = 4 << 20) -> dict[str, _Entry]:
    """~70% node_modules, ~30% site-packages, exactly ``count`` regular files."""
    rng = random.Random(seed)
    tree = _TreeBuilder()
    node_root = "usr/lib/node_modules/app/node_modules"
    py_root = "usr/local/lib/python3.11/site-packages"
    while tree.files < count:
        if rng.random() < 0.7:
            _node_package(tree, rng, node_root, pool_len, 0)
        else:
            _python_package(tree, rng, py_root, pool_len)
    # Trim to exactly ``count`` files: drop the last files added (dicts keep insertion order).
    extra = tree.files - count
    for path in reversed(list(tree.entries)):
        if extra == 0:
            break
        if tree.entries[path].kind == "file":
            del tree.entries[path]
            extra -= 1
    return tree.entries


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def _tarinfo(path: str, entry: _Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path + ("/" if entry.kind == "dir" else ""))
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = entry.mode
    ti.mtime = entry.mtime
    if entry.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = entry.target
    else:
        ti.type = tarfile.REGTYPE
        ti.size = entry.size
    return ti


def _tree_sort_key(item: tuple[str, _Entry]) -> list[str]:
    # The opaque marker first in its directory, as Docker writes it; otherwise name order.
    return ["" if part == ".wh..wh..opq" else part for part in item[0].split("/")]


def write_tree_tar(entries: dict[str, _Entry], out: Path, pool: bytes, seed: int) -> None:
    """A deterministic PAX tar of ``entries`` (sorted) with contents sliced from ``pool``."""
    rng = random.Random(seed ^ 0x5EED)
    doubled = pool + pool
    with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, entry in sorted(entries.items(), key=_tree_sort_key):
            ti = _tarinfo(path, entry)
            if entry.kind != "file":
                tf.addfile(ti)
                continue
            if entry.random_data:
                data = rng.randbytes(entry.size)
            elif entry.size <= len(pool):
                data = doubled[entry.offset:entry.offset + entry.size]
            else:
                data = (pool * (entry.size // len(pool) + 2))[entry.offset:entry.offset + entry.size]
            tf.addfile(ti, io.BytesIO(data))


def small_files_layer(log: Log = _print) -> LayerInput:
    """Layer 3: 50,000 small files in node_modules / site-packages shaped trees."""
    name = "03-smallfiles"
    recipe = f"generated: {SMALL_FILES} files, seed {SEED}"
    if (cached := _cached(name, recipe)) is not None:
        return cached
    _need("tar", "pigz")
    log(f"{name}: generating {SMALL_FILES} small files…")
    started = time.monotonic()
    rng = random.Random(SEED)
    pool = text_pool(rng)
    entries = small_files_tree(pool_len=len(pool))
    with _workdir(name) as work:
        tar = work / f"{name}.tar"
        write_tree_tar(entries, tar, pool, SEED)
        layer = _finish_layer(name, f"{SMALL_FILES} generated small files (node_modules + site-packages shapes)",
                              tar, recipe=recipe)
    log(f"{name}: {layer.tar_size / 1e6:.0f} MB tar, {layer.entries} entries in {time.monotonic() - started:.0f}s")
    return layer


# --- layer 4: deletions --------------------------------------------------------------------------


def list_names(gz: Path) -> list[str]:
    """The entry names of a gzipped tar, without ``./`` prefix or trailing ``/``."""
    res = _run(["tar", "-tzf", str(gz)], what=f"listing {gz.name}")
    names = []
    for line in res.stdout.decode("utf-8", "surrogateescape").splitlines():
        name = line.removeprefix("./").rstrip("/")
        if name and name != ".":
            names.append(name)
    return names


def deletion_entries(lower: list[list[str]]) -> dict[str, _Entry]:
    """Whiteouts for dirs and files that exist below, an opaque dir with new contents, new files."""
    all_names = sorted({n for names in lower for n in names})
    mtime = FIXED_MTIME + 4000
    node_root = "usr/lib/node_modules/app/node_modules"
    pkgs = [n for n in all_names if n.startswith(node_root + "/") and n.count("/") == node_root.count("/") + 1
            and not n.endswith("/.bin") and not n.split("/")[-1].startswith("@")]
    targets: list[str] = []
    targets += [n for n in all_names if n.startswith("usr/share/doc/") and n.count("/") == 3][::3][:40]
    targets += [n for n in all_names if n.startswith("usr/lib/python3") and n.endswith(".pyc")][::10][:60]
    targets += pkgs[::20]
    targets += [n for n in all_names if n.startswith("usr/local/lib/python3.11/site-packages/")
                and n.endswith(".dist-info")][::15]
    targets += [n for n in all_names if n.startswith(node_root + "/") and n.endswith(".js.map")][::25]
    opaque = pkgs[1::20][0]
    # Nothing inside a directory that is itself whited out or made opaque.
    covered = {*targets, opaque}
    targets = [t for t in targets if not any(t.startswith(d + "/") for d in covered)]

    out: dict[str, _Entry] = {}
    for path in targets:
        parent, _, base = path.rpartition("/")
        out[f"{parent}/.wh.{base}" if parent else f".wh.{base}"] = _Entry("file", mtime=mtime)
    out[f"{opaque}/.wh..wh..opq"] = _Entry("file", mtime=mtime)
    out[f"{opaque}/package.json"] = _Entry("file", size=1200, offset=17, mtime=mtime)
    out[f"{opaque}/index.js"] = _Entry("file", size=5400, offset=4242, mtime=mtime)
    out["etc/bench-release"] = _Entry("file", size=180, offset=99, mtime=mtime)
    out["usr/local/bin/app"] = _Entry("file", size=3100, offset=1234, mode=0o755, mtime=mtime)
    # Explicit parent directories (0755 root, as a Dockerfile RUN layer carries them).
    for path in list(out):
        parts = path.split("/")
        for i in range(1, len(parts)):
            out.setdefault("/".join(parts[:i]), _Entry("dir", mode=0o755, mtime=mtime))
    return out


def deletions_layer(lower: list[LayerInput], log: Log = _print) -> LayerInput:
    """Layer 4: whiteouts of some dirs/files of ``lower`` and an opaque directory."""
    name = "04-deletions"
    recipe = "whiteouts v2 against " + " ".join(layer.gz_digest for layer in lower)
    if (cached := _cached(name, recipe)) is not None:
        return cached
    log(f"{name}: whiteouts against the lower layers…")
    entries = deletion_entries([list_names(layer.gz) for layer in lower])
    pool = text_pool(random.Random(SEED + 4), 1 << 16)
    with _workdir(name) as work:
        tar = work / f"{name}.tar"
        write_tree_tar(entries, tar, pool, SEED + 4)
        whiteouts = sum(1 for p in entries if "/.wh." in "/" + p)
        layer = _finish_layer(name, f"deletions: {whiteouts} whiteouts incl. one opaque dir", tar, recipe=recipe)
    log(f"{name}: {layer.entries} entries")
    return layer


# --- the image -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchImage:
    """The cached layers, bottom first, and the OCI layout that holds them."""

    layers: list[LayerInput]
    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str

    @property
    def tar_bytes(self) -> int:
        return sum(layer.tar_size for layer in self.layers)


def _put_json(blobs: Path, obj: Any) -> tuple[str, int]:
    data = json.dumps(obj, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def write_layout(path: Path, layers: list[LayerInput], *, tag: str = IMAGE_TAG) -> tuple[str, str]:
    """An OCI image layout of ``layers`` (tar+gzip); blobs are hard links to the cache. Returns
    (manifest digest, config digest)."""
    if path.exists():
        shutil.rmtree(path)
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for layer in layers:
        dest = blobs / layer.gz_digest.removeprefix("sha256:")
        try:
            os.link(layer.gz, dest)
        except OSError:
            shutil.copyfile(layer.gz, dest)
    config = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/bash"], "Labels": {"io.github.erofs-converter.bench": "true"}},
        "rootfs": {"type": "layers", "diff_ids": [layer.tar_digest for layer in layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": layer.description} for layer in layers],
    }
    config_digest, config_size = _put_json(blobs, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.gz_digest,
                    "size": layer.gz_size} for layer in layers],
    }
    manifest_digest, manifest_size = _put_json(blobs, manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                            "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (path / "index.json").write_text(json.dumps(index, separators=(",", ":")))
    return manifest_digest, config_digest


def build_image(log: Log = _print) -> BenchImage:
    """All four layers (built on first use, cached afterwards) and their OCI layout."""
    rootfs = rootfs_layer(log)
    packages = packages_layer(log)
    small = small_files_layer(log)
    deletions = deletions_layer([rootfs, packages, small], log)
    layers = [rootfs, packages, small, deletions]
    layout = cache_root() / "layout"
    manifest_digest, config_digest = write_layout(layout, layers)
    return BenchImage(layers=layers, layout=layout, tag=IMAGE_TAG, manifest_digest=manifest_digest,
                      config_digest=config_digest)


def push_image(image: BenchImage, host: str, *, repo: str = IMAGE_REPO, tag: str = IMAGE_TAG) -> str:
    """``skopeo copy oci:LAYOUT:TAG docker://HOST/REPO:TAG`` (digests preserved); returns the reference."""
    _need("skopeo")
    ref = f"{host}/{repo}:{tag}"
    _run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
          f"oci:{image.layout}:{image.tag}", f"docker://{ref}"], what=f"pushing the bench image to {ref}")
    return ref


# --- the optional big layer ----------------------------------------------------------------------


class _ChunkReader:
    """``size`` bytes made of pseudo-randomly chosen 1 MiB chunks; read() as tarfile wants it."""

    def __init__(self, chunks: list[bytes], rng: random.Random, size: int) -> None:
        self._chunks = chunks
        self._rng = rng
        self._left = size
        self._cur = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        if not self._cur:
            self._cur = memoryview(self._rng.choice(self._chunks))
        if n < 0:
            n = len(self._cur)
        take = min(n, len(self._cur), self._left)
        data = bytes(self._cur[:take])
        self._cur = self._cur[take:]
        self._left -= take
        return data


def big_layer(gb: float, log: Log = _print) -> LayerInput:
    """A layer of ``gb`` GiB: three huge files (60%) and many 1-16 MiB files; half-compressible data.

    The tar is streamed straight into ``pigz``; only the ``.tar.gz`` is kept.
    """
    name = f"big-{gb:g}g"
    recipe = f"generated: {gb:g} GiB, seed {SEED + 7}"
    if (cached := _cached(name, recipe)) is not None:
        return cached
    _need("pigz")
    total = int(gb * (1 << 30))
    log(f"{name}: generating a {gb:g} GiB layer (tar streamed into pigz)…")
    started = time.monotonic()
    rng = random.Random(SEED + 7)
    text = text_pool(random.Random(SEED + 8), 8 << 20)
    chunks = [rng.randbytes(_CHUNK // 2) + text[i * (_CHUNK // 2):(i + 1) * (_CHUNK // 2)] for i in range(16)]
    files: list[tuple[str, int]] = [(f"opt/data/blob-{i}.bin", int(total * 0.2)) for i in range(3)]
    rest = total - sum(size for _, size in files)
    i = 0
    while rest > 0:
        size = min(rest, int(math.exp(rng.uniform(math.log(1 << 20), math.log(16 << 20)))))
        files.append((f"opt/models/set-{i // 50:03d}/part-{i:05d}.bin", size))
        rest -= size
        i += 1
    entries: dict[str, _Entry] = {}
    for path, size in files:
        parts = path.split("/")
        for j in range(1, len(parts)):
            entries.setdefault("/".join(parts[:j]), _Entry("dir", mode=0o755))
        entries[path] = _Entry("file", size=size)
    gz = _layers_dir() / f"{name}.tar.gz"
    partial = gz.with_name(gz.name + ".partial")
    with open(partial, "wb") as out:
        pigz = subprocess.Popen(["pigz", "-n", GZIP_LEVEL, "-c"], stdin=subprocess.PIPE, stdout=out)
        assert pigz.stdin is not None
        writer = _HashingWriter(pigz.stdin)
        try:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                              bufsize=_CHUNK) as tf:
                for path, entry in sorted(entries.items(), key=_tree_sort_key):
                    ti = _tarinfo(path, entry)
                    tf.addfile(ti, _ChunkReader(chunks, rng, entry.size) if entry.kind == "file" else None)
        finally:
            pigz.stdin.close()
            rc = pigz.wait()
    if rc != 0:
        partial.unlink(missing_ok=True)
        raise InputError(f"pigz exited {rc} while compressing {name}")
    partial.rename(gz)
    gz_digest, gz_size = sha256_file(gz)
    layer = LayerInput(name=name, description=f"{gb:g} GiB: 3 huge files + {len(files) - 3} files of 1-16 MiB",
                       gz=gz, tar_digest="sha256:" + writer.sha.hexdigest(), tar_size=writer.size,
                       gz_digest=gz_digest, gz_size=gz_size, entries=len(entries), recipe=recipe)
    layer.save(_layers_dir() / f"{name}.json")
    log(f"{name}: {layer.tar_size / 1e9:.2f} GB tar, {layer.gz_size / 1e9:.2f} GB gzip "
        f"in {time.monotonic() - started:.0f}s")
    return layer


if __name__ == "__main__":
    img = build_image()
    for lyr in img.layers:
        print(f"{lyr.name}: {lyr.tar_size / 1e6:8.1f} MB tar  {lyr.gz_size / 1e6:8.1f} MB gz  "
              f"{lyr.entries:6d} entries  {lyr.gz_digest}")
    print(f"layout {img.layout}:{img.tag} manifest {img.manifest_digest}")
