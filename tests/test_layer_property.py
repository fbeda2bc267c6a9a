"""Property test of the whole layer engine: random trees in random tar dialects → EROFS → equal.

Archives are written by Python's tarfile (trusted data, in three formats) and converted by our
engine; our reader then has to show exactly what tarfile put in. fsck.erofs checks a sample.
"""

from __future__ import annotations

import io
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converter.convert.layer import LayerOptions, convert_layer
from converter.erofs.reader import ErofsImage
from converter.erofs.target import TargetFormat
from tests.support.kernel import fsck

NAMES = st.text(alphabet="abcXY-._09é", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..") and not s.startswith(".wh."))
SIZES = st.one_of(st.sampled_from([0, 1, 4095, 4096, 4097, 8192, 12289]), st.integers(0, 20000))


@dataclass(frozen=True)
class Spec:
    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    nsec: int
    size: int = 0
    target: str = ""
    xattr: bytes | None = None


@st.composite
def trees(draw: st.DrawFn) -> tuple[str, list[Spec]]:
    fmt = draw(st.sampled_from(["gnu", "pax", "ustar"]))
    dirs = [""]
    specs: list[Spec] = []
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 25))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        path = f"{parent}/{name}" if parent else name
        if path in used or any(path.startswith(u + "/") for u in used if u not in dirs):
            continue
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "fifo", "hardlink"]))
        files = [s for s in specs if s.kind == "file"]
        if kind == "hardlink" and not files:
            kind = "file"
        big_ids = fmt != "ustar" and draw(st.booleans())
        uid = draw(st.integers(0, 70000 if not big_ids else 2**31 - 1) if fmt != "ustar" else st.integers(0, 65535))
        gid = draw(st.integers(0, 65535))
        mtime = draw(st.integers(0, 2**33 - 1))
        nsec = draw(st.integers(0, 999_999_999)) if fmt == "pax" else 0
        mode = draw(st.integers(0, 0o7777))
        xattr = draw(st.none() | st.binary(max_size=40)) if fmt == "pax" and kind in ("file", "dir") else None
        used.add(path)
        if kind == "dir":
            dirs.append(path)
            specs.append(Spec(path, "dir", mode, uid, gid, mtime, nsec, xattr=xattr))
        elif kind == "file":
            specs.append(Spec(path, "file", mode, uid, gid, mtime, nsec, size=draw(SIZES), xattr=xattr))
        elif kind == "symlink":
            specs.append(Spec(path, "symlink", 0o777, uid, gid, mtime, nsec, target=draw(NAMES)))
        elif kind == "fifo":
            specs.append(Spec(path, "fifo", mode, uid, gid, mtime, nsec))
        else:
            target = draw(st.sampled_from(files))
            specs.append(Spec(path, "hardlink", target.mode, target.uid, target.gid, target.mtime, target.nsec,
                              target=target.path))
    return fmt, specs


def content(spec: Spec) -> bytes:
    seed = sum(spec.path.encode()) % 251
    return bytes((seed + i * 7) % 256 for i in range(spec.size))


def make_tar(fmt: str, specs: list[Spec]) -> bytes:
    buf = io.BytesIO()
    fmts = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
    with tarfile.open(fileobj=buf, mode="w", format=fmts[fmt], encoding="utf-8") as tf:
        for s in specs:
            ti = tarfile.TarInfo(s.path)
            ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = s.mode, s.uid, s.gid, "", ""
            ti.mtime = s.mtime
            if fmt == "pax":
                ti.pax_headers = {"mtime": f"{s.mtime}.{s.nsec:09d}".rstrip("0").rstrip(".")}
                if s.xattr is not None:
                    ti.pax_headers["SCHILY.xattr.user.prop"] = s.xattr.decode("utf-8", "surrogateescape")
            ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                       "fifo": tarfile.FIFOTYPE, "hardlink": tarfile.LNKTYPE}[s.kind]
            ti.linkname = s.target
            ti.size = s.size if s.kind == "file" else 0
            tf.addfile(ti, io.BytesIO(content(s)) if s.kind == "file" else None)
    return buf.getvalue()


def check(fmt: str, specs: list[Spec], *, builder: str = "python", run_fsck: bool = False) -> None:
    data = make_tar(fmt, specs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "l.erofs"
        convert_layer(io.BytesIO(data), out, options=LayerOptions(fmt=TargetFormat(), builder=builder, bottom=True),
                      layer="random.tar", workdir=Path(tmp))
        if run_fsck:
            fsck(out)
        with ErofsImage.open(out) as img:
            seen = {p for p, _ in img.walk()}
            for s in specs:
                st_ = img.stat("/" + s.path)
                kind = {"file": stat.S_IFREG, "hardlink": stat.S_IFREG, "dir": stat.S_IFDIR,
                        "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO}[s.kind]
                assert stat.S_IFMT(st_.st_mode) == kind, s
                if s.kind == "hardlink":
                    target = img.stat("/" + s.target)
                    assert st_.nid == target.nid and st_.nlink >= 2, s
                    continue
                perms = 0o777 if s.kind == "symlink" else s.mode
                assert stat.S_IMODE(st_.st_mode) == perms, s
                assert (st_.uid, st_.gid, st_.mtime_sec, st_.mtime_nsec) == (s.uid, s.gid, s.mtime, s.nsec), s
                if s.kind == "file":
                    assert img.read_bytes("/" + s.path) == content(s), s
                if s.kind == "symlink":
                    assert img.readlink("/" + s.path) == s.target.encode(), s
                if s.xattr is not None:
                    assert img.xattrs("/" + s.path).get("user.prop") == s.xattr, s
            expected = {b"/"} | {("/" + s.path).encode() for s in specs}
            for s in specs:  # implicit parents
                parts = s.path.split("/")
                expected |= {("/" + "/".join(parts[:i])).encode() for i in range(1, len(parts))}
            assert seen == expected


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
@example(("pax", [Spec("a", "file", 0o4755, 100000, 5, 1700000000, 1, size=4096),
                  Spec("b", "hardlink", 0o4755, 100000, 5, 1700000000, 1, target="a")]))
def test_random_tars_round_trip(tree: tuple[str, list[Spec]]) -> None:
    check(*tree)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
# mkfs.erofs keeps a compact inode (dropping the nanoseconds) when the seconds equal the build time.
@example(("pax", [Spec("0", "file", 0, 0, 0, 0, 1)]))
def test_random_tars_round_trip_through_mkfs(tree: tuple[str, list[Spec]]) -> None:
    check(*tree, builder="mkfs", run_fsck=True)
