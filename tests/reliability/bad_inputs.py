"""The catalogue of hostile and malformed layers, and what ``convert layer`` must make of each.

Each ``BadInput`` is one layer: a builder making its bytes, and the expected outcome, either
``CONVERTS`` (the spec gives the input a meaning; ``check`` then verifies the image) or a
substring of the one-line error. ``entry`` is the member the error must name. The same list
drives the tests (``test_bad_layers.py``) and the troubleshooting table (``catalogue.py``),
so the documentation is always what the program really prints.

Sizes are kept small so the whole catalogue runs in seconds: the bombs are scaled down and
run with low ``--max-expanded``/``--max-entries`` values, except the sparse bomb, which
meets the default limit (it claims a terabyte of holes in 2 KiB of tar).
"""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converter.erofs.reader import ErofsImage
from converter.erofs.tools import erofs_utils
from tests.support.tarcraft import (
    END,
    archive,
    base256,
    directory,
    gz,
    hardlink,
    header,
    member,
    pad,
    pax,
    pax_record,
    simple_tree,
    symlink,
    zst,
)

CONVERTS = "converts"
LZ4 = "erofs+lz4"
RAW = "erofs"


class Image:
    """A converted layer opened for checks: metadata from our reader, contents from dump.erofs
    (which also reads lz4-compressed files, and is not our code)."""

    def __init__(self, path: Path, reader: ErofsImage) -> None:
        self.path = path
        self.reader = reader

    def names(self, directory: str = "/") -> list[bytes]:
        """Entry names of a directory, in on-disk order."""
        return [e.name for e in self.reader.listdir(directory)]

    def cat(self, path: str) -> bytes:
        """The contents of a regular file."""
        dump = erofs_utils().dump
        assert dump is not None, "dump.erofs not found next to mkfs.erofs"
        res = subprocess.run([str(dump), "--cat", f"--path={path}", str(self.path)], capture_output=True,
                             check=False)
        assert res.returncode == 0, f"dump.erofs --cat {path}: {res.stderr.decode(errors='replace')}"
        return res.stdout


Check = Callable[[Image], None]


@dataclass(frozen=True, slots=True)
class BadInput:
    """One catalogue row: a layer, how it is made, and what converting it must do."""

    name: str  # a short id, also used as the file name
    what: str  # one line for the documentation table
    build: Callable[[], bytes]
    expect: str  # an error substring, or CONVERTS
    entry: str | None = None  # the member an error must name
    args: tuple[str, ...] = ()  # extra `convert layer` flags (low limits for the bombs)
    check: Check | None = None  # for CONVERTS: what the image must hold
    mount: bool = False  # also loop-mount the image with the kernel and run ``mount_check``
    mount_check: Callable[[Path], None] | None = None
    budget: float = 5.0  # seconds the conversion may take

    @property
    def converts(self) -> bool:
        return self.expect == CONVERTS


# --- checks on converted images ----------------------------------------------------------------


def _has(*paths: str) -> Check:
    def check(img: Image) -> None:
        for p in paths:
            img.reader.stat(p)

    return check


def _concatenated(img: Image) -> None:
    assert img.cat("/etc/hostname") == b"erofs\n"
    assert img.cat("/second") == b"from the second member\n"


def _absolute(img: Image) -> None:
    assert img.names("/") == [b"etc"]
    assert img.cat("/etc/passwd") == b"root:x:0:0::/root:/bin/sh\n"


def _outside_symlink(img: Image) -> None:
    assert img.reader.readlink("/escape") == b"../../../../../../etc/shadow"
    assert img.reader.readlink("/abs") == b"/etc/shadow"


def _loops(img: Image) -> None:
    assert img.reader.readlink("/a") == b"b"
    assert img.reader.readlink("/b") == b"a"
    assert img.reader.readlink("/self") == b"self"
    assert img.reader.readlink("/d/up") == b".."


def _loops_mounted(root: Path) -> None:
    assert (root / "a").readlink() == Path("b")
    try:
        (root / "a").stat()
    except OSError as exc:
        assert exc.errno == 40, exc  # ELOOP: stored as a loop, resolved (and refused) by the kernel
    else:
        raise AssertionError("a symlink loop resolved")


def _later_deleted(img: Image) -> None:
    t, link = img.reader.stat("/t"), img.reader.stat("/link")
    assert t.nid == link.nid and t.nlink == 2
    assert img.cat("/link") == b"target\n"


def _replaced_target(img: Image) -> None:
    assert img.reader.stat("/t").is_dir
    assert img.cat("/link") == b"old file\n"


def _dup_types(img: Image) -> None:
    assert stat.S_ISLNK(img.reader.stat("/x").st_mode)
    assert img.reader.readlink("/x") == b"target"


def _dir_replaced_by_file(img: Image) -> None:
    assert stat.S_ISREG(img.reader.stat("/d").st_mode)
    assert img.cat("/d") == b"now a file\n"


def _real_beats_whiteout(img: Image) -> None:
    assert img.cat("/f") == b"kept\n"


def _unknown_pax(img: Image) -> None:
    assert img.cat("/x") == b"y"


def _negative_mtime(img: Image) -> None:
    for path in ("/old", "/older"):
        st = img.reader.stat(path)
        assert (st.mtime_sec, st.mtime_nsec) == (0, 0)


def _negative_mtime_mounted(root: Path) -> None:
    assert (root / "old").lstat().st_mtime_ns == 0
    assert (root / "older").lstat().st_mtime_ns == 0


def _far_future(img: Image) -> None:
    assert img.reader.stat("/x").mtime_sec == 0


def _max_uid(img: Image) -> None:
    st = img.reader.stat("/x")
    assert (st.uid, st.gid) == (2**32 - 2, 2**32 - 2)


def _opaque_content(img: Image) -> None:
    assert img.names("/d") == [b"kept"]
    assert img.reader.xattrs("/d").get("trusted.overlay.opaque") == b"y"
    assert img.cat("/d/kept") == b"kept\n"
    assert img.cat("/after") == b"after\n"


def _opaque_mounted(root: Path) -> None:
    assert sorted(p.name for p in (root / "d").iterdir()) == ["kept"]
    assert (root / "after").read_bytes() == b"after\n"


def _devices(img: Image) -> None:
    sda = img.reader.stat("/dev/sda")
    assert stat.S_ISBLK(sda.st_mode) and (sda.rdev_major, sda.rdev_minor) == (8, 0)
    null = img.reader.stat("/dev/null")
    assert stat.S_ISCHR(null.st_mode) and (null.rdev_major, null.rdev_minor) == (1, 3)
    big = img.reader.stat("/dev/big")
    assert (big.rdev_major, big.rdev_minor) == (4095, (1 << 20) - 1)
    assert stat.S_ISFIFO(img.reader.stat("/dev/fifo").st_mode)


def _devices_mounted(root: Path) -> None:
    import os

    st = (root / "dev/sda").lstat()
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (8, 0)
    st = (root / "dev/big").lstat()
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (4095, (1 << 20) - 1)


def _overlay_xattr_escaped(img: Image) -> None:
    x = img.reader.xattrs("/d")
    assert x.get("trusted.overlay.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in x


def _long_component(img: Image) -> None:
    assert img.names("/") == [b"n" * 255]


def _skipped_type(img: Image) -> None:
    assert img.names("/") == [b"x"]


def _erofs_image() -> bytes:
    """A real EROFS image (our writer's) of a small tree, as someone might pass it by mistake."""
    import io
    import tempfile

    from converter.convert.layer import LayerOptions, convert_layer
    from converter.erofs.target import parse_format

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "layer.erofs"
        convert_layer(io.BytesIO(archive(simple_tree())), out, options=LayerOptions(fmt=parse_format("erofs")),
                      layer="sample")
        return out.read_bytes()


def _empty(img: Image) -> None:
    assert img.names("/") == []


# --- builders ------------------------------------------------------------------------------------


def _gzip_flip_deflate() -> bytes:
    blob = bytearray(gz(archive(simple_tree())))
    blob[20:40] = b"\xff" * 20
    return bytes(blob)


def _gzip_bad_crc() -> bytes:
    blob = gz(archive(simple_tree()))
    return blob[:-8] + bytes(4) + blob[-4:]


def _zstd_corrupt() -> bytes:
    blob = bytearray(zst(archive(simple_tree())))
    blob[12:15] = b"\xff\xff\xff"
    return bytes(blob)


def _sparse_map(realsize: int, segments: list[tuple[int, int]], stored: bytes, name: bytes) -> bytes:
    """A GNU sparse 1.0 member (the map sits at the start of the member data)."""
    records = (pax_record(b"GNU.sparse.major", b"1") + pax_record(b"GNU.sparse.minor", b"0")
               + pax_record(b"GNU.sparse.realsize", b"%d" % realsize) + pax_record(b"GNU.sparse.name", name))
    numbers = [len(segments)] + [n for seg in segments for n in seg]
    body = pad(b"".join(b"%d\n" % n for n in numbers)) + stored
    return pax(records) + member(b"GNUSparseFile.0/" + name, body)


def _zero_file_layer(size: int) -> bytes:
    return archive(member(b"zeros", bytes(size)))


def _many_entries(count: int) -> bytes:
    return archive(*(member(b"f%05d" % i) for i in range(count)))


MiB = 1 << 20

CATALOGUE: tuple[BadInput, ...] = (
    # -- compression --------------------------------------------------------------------------
    BadInput("gzip-corrupt", "gzip whose deflate data is damaged", _gzip_flip_deflate,
             "corrupt gzip stream"),
    BadInput("gzip-bad-crc", "gzip whose CRC-32 trailer does not match", _gzip_bad_crc,
             "corrupt gzip stream: CRC check failed"),
    BadInput("zstd-corrupt", "zstd frame with damaged block data", _zstd_corrupt, "corrupt zstd stream"),
    BadInput("gzip-truncated", "gzip cut short (an interrupted download)",
             lambda: gz(archive(simple_tree()))[:-10], "truncated gzip stream"),
    BadInput("zstd-truncated", "zstd cut inside a frame", lambda: zst(archive(simple_tree()))[:-7],
             "truncated zstd stream"),
    BadInput("gzip-trailing-garbage", "bytes appended after the last gzip member",
             lambda: gz(archive(simple_tree())) + b"appended!" * 40, "trailing data after the last gzip member"),
    BadInput("gzip-trailing-few-bytes", "fewer than 10 stray bytes after the gzip stream (indistinguishable "
             "from a cut-off member header)", lambda: gz(archive(simple_tree())) + b"junk!", "truncated gzip stream"),
    BadInput("zstd-trailing-garbage", "bytes appended after the last zstd frame",
             lambda: zst(archive(simple_tree())) + b"appended!" * 4, "data after the last frame is not a zstd frame"),
    BadInput("gzip-concatenated", "two gzip members back to back (RFC 1952 allows it; pigz -i, appenders)",
             lambda: gz(simple_tree()) + gz(member(b"second", b"from the second member\n") + END),
             CONVERTS, check=_concatenated),
    BadInput("zstd-multi-frame", "several zstd frames and a skippable frame",
             lambda: (zst(simple_tree()) + b"\x50\x2a\x4d\x18\x04\x00\x00\x00skip"
                      + zst(member(b"second", b"from the second member\n") + END)),
             CONVERTS, check=_concatenated),
    BadInput("gzip-zero-padding", "gzip followed by NUL padding (tape-style blocking)",
             lambda: gz(archive(simple_tree())) + bytes(512), CONVERTS, check=_has("/etc/hostname")),
    BadInput("media-type-mismatch", "gzip blob declared as tar+zstd (--media-type)",
             lambda: gz(archive(simple_tree())), "promises zstd but the blob is gzip",
             args=("--media-type", "application/vnd.oci.image.layer.v1.tar+zstd")),
    BadInput("not-a-tar", "random bytes, no compression magic", lambda: bytes(range(256)) * 8,
             "invalid header checksum"),
    BadInput("empty-blob", "a zero-byte blob (an empty layer)", lambda: b"", CONVERTS, check=_empty),
    BadInput("erofs-image", "an EROFS image given as a layer (its first 1024 bytes are zeros: a tar end marker)",
             lambda: _erofs_image(), "not a tar archive: this is an EROFS image"),
    BadInput("zeros-then-data", "a tar end-of-archive marker at the very start, then data",
             lambda: END + b"not a tar\n" + bytes(502), "not a tar archive: it starts with an end-of-archive marker"),
    # -- bombs and limits ---------------------------------------------------------------------
    BadInput("bomb-gzip-stream", "gzip expanding to 64 MiB of tar padding (limit 16M)",
             lambda: gz(END + bytes(64 * MiB)), "layer expands to more than the limit of 16777216 bytes",
             args=("--max-expanded", "16M")),
    BadInput("bomb-gzip-file", "gzip holding one 64 MiB file of zeros (limit 16M)",
             lambda: gz(_zero_file_layer(64 * MiB)), "the files add up to more than the limit of 16777216 bytes",
             entry="zeros", args=("--max-expanded", "16M")),
    BadInput("bomb-zstd-file", "zstd holding one 64 MiB file of zeros (limit 16M)",
             lambda: zst(_zero_file_layer(64 * MiB)), "the files add up to more than the limit of 16777216 bytes",
             entry="zeros", args=("--max-expanded", "16M")),
    BadInput("bomb-sparse", "GNU sparse file claiming 1 PiB of holes in 2 KiB (raw erofs keeps holes as holes but "
             "caps sizes at 16 TiB; mkfs.erofs is fed zeros, so 64 GiB)",
             lambda: archive(_sparse_map(1 << 50, [((1 << 50) - 1, 1)], b"!", b"big")),
             "add up to more than the limit of", entry="big"),
    BadInput("bomb-entries", "3000 empty files (limit 1000 entries)", lambda: gz(_many_entries(3000)),
             "too many entries: the limit is 1000", entry="f01000", args=("--max-entries", "1000")),
    # -- tar structure ------------------------------------------------------------------------
    BadInput("truncated-in-data", "tar cut inside a file's data",
             lambda: archive(member(b"big", b"x" * 5000))[:2048], "unexpected end of archive", entry="big"),
    BadInput("truncated-in-header", "tar cut inside a header block", lambda: archive(simple_tree())[:600],
             "unexpected end of archive"),
    BadInput("no-end-marker", "tar without the two zero blocks at the end (Go's reader accepts it)",
             lambda: archive(simple_tree(), end=False), CONVERTS, check=_has("/etc/hostname", "/etc/link")),
    BadInput("tar-trailing-garbage", "junk after the end-of-archive marker (never parsed, as in tar and Go)",
             lambda: archive(simple_tree()) + b"junk" * 300, CONVERTS, check=_has("/etc/hostname")),
    BadInput("lone-zero-block", "one zero block, then more members (would hide the rest of the layer)",
             lambda: archive(member(b"x", b"y")) [:1024] + bytes(512) + member(b"hidden", b"z") + END,
             "a lone zero block is followed by more headers"),
    BadInput("bad-checksum", "header checksum wrong",
             lambda: (lambda b: b[:148] + b"0000000\0" + b[156:])(archive(member(b"x", b"y"))),
             "invalid header checksum", entry="x"),
    BadInput("negative-size", "base-256 size of -5", lambda: archive(member(b"x", fields={124: base256(-5, 12)})),
             "negative size -5", entry="x"),
    BadInput("unknown-typeflag", "GNU volume header 'V' (containerd cannot apply it either)",
             lambda: archive(header(b"vol", typeflag=b"V", size=10) + pad(b"0123456789"), member(b"x", b"y")),
             "unsupported typeflag b'V'", entry="vol"),
    BadInput("sparse-overlap", "GNU sparse map with overlapping segments",
             lambda: archive(_sparse_map(100, [(0, 10), (5, 10)], b"a" * 20, b"s")),
             "sparse map entries are negative, overlapping or out of order", entry="s"),
    # -- paths --------------------------------------------------------------------------------
    BadInput("traversal-dotdot", "path ../etc/passwd", lambda: archive(member(b"../etc/passwd", b"x")),
             "the path has a '..' component", entry="../etc/passwd"),
    BadInput("traversal-inner", "path a/../../b", lambda: archive(member(b"a/../../b", b"x")),
             "the path has a '..' component", entry="a/../../b"),
    BadInput("traversal-pax", "PAX path ../../x overriding a harmless ustar name",
             lambda: archive(pax(pax_record(b"path", b"../../x")), member(b"harmless", b"x")),
             "the path has a '..' component", entry="../../x"),
    BadInput("absolute-path", "path /etc/passwd (leading / stripped, as every runtime does)",
             lambda: archive(member(b"/etc/passwd", b"root:x:0:0::/root:/bin/sh\n")), CONVERTS, check=_absolute),
    BadInput("symlink-outside", "symlinks to ../../../../etc/shadow and /etc/shadow (stored, never followed)",
             lambda: archive(symlink(b"escape", b"../../../../../../etc/shadow"), symlink(b"abs", b"/etc/shadow")),
             CONVERTS, check=_outside_symlink),
    BadInput("name-nul", "PAX path with a NUL byte", lambda: archive(pax(pax_record(b"path", b"a\0b")),
                                                                       member(b"x", b"y")),
             "member name contains a NUL byte", entry="x"),
    BadInput("linkpath-nul", "PAX linkpath with a NUL byte",
             lambda: archive(pax(pax_record(b"linkpath", b"t\0x")), symlink(b"s", b"t")),
             "PAX linkpath contains a NUL byte", entry="s"),
    BadInput("component-256", "a 256-byte path component",
             lambda: archive(pax(pax_record(b"path", b"d/" + b"n" * 256)), member(b"x", b"y")),
             "a path component is 256 bytes long (the limit is 255)", entry="d/" + "n" * 256),
    BadInput("component-255", "a 255-byte path component (the largest allowed)",
             lambda: archive(pax(pax_record(b"path", b"n" * 255)), member(b"x", b"y")),
             CONVERTS, check=_long_component),
    BadInput("path-too-deep", "a 1 MiB PAX path a/a/a/... (half a million levels)",
             lambda: archive(pax(pax_record(b"path", b"a/" * 500_000 + b"f")), member(b"x", b"y")),
             "bytes long (the limit is 4095)"),
    BadInput("file-as-parent", "f is a file, then f/x", lambda: archive(member(b"f", b"1"), member(b"f/x", b"2")),
             "parent 'f' is a reg, not a directory", entry="f/x"),
    BadInput("root-not-dir", "the root entry '.' as a regular file", lambda: archive(member(b".", b"")),
             "the root entry must be a directory", entry="."),
    # -- links --------------------------------------------------------------------------------
    BadInput("hardlink-missing", "hard link to a path that is not in the layer",
             lambda: archive(hardlink(b"link", b"nothere")), "hard link target 'nothere' is not in this layer",
             entry="link"),
    BadInput("hardlink-later-deleted", "t, link->t, then .wh.t in the same layer (the real entry wins)",
             lambda: archive(member(b"t", b"target\n"), hardlink(b"link", b"t"), member(b".wh.t")),
             CONVERTS, check=_later_deleted),
    BadInput("hardlink-target-replaced", "t, link->t, then t replaced by a directory (link keeps the file)",
             lambda: archive(member(b"t", b"old file\n"), hardlink(b"link", b"t"), directory(b"t/")),
             CONVERTS, check=_replaced_target),
    BadInput("hardlink-to-dir", "hard link to a directory", lambda: archive(directory(b"d/"), hardlink(b"l", b"d")),
             "hard link target 'd' is a directory", entry="l"),
    BadInput("hardlink-to-root", "hard link to ./", lambda: archive(hardlink(b"l", b"./")),
             "hard link to a directory (the root)", entry="l"),
    BadInput("hardlink-dotdot", "hard link target ../t", lambda: archive(member(b"t", b"x"), hardlink(b"l", b"../t")),
             "hard link target: the path has a '..' component", entry="l"),
    BadInput("hardlink-cycle", "a->b and b->a, nothing real",
             lambda: archive(hardlink(b"a", b"b"), hardlink(b"b", b"a")), "is not in this layer"),
    BadInput("symlink-loops", "a->b, b->a, self->self, d/up->.. (stored, not followed)",
             lambda: archive(symlink(b"a", b"b"), symlink(b"b", b"a"), symlink(b"self", b"self"),
                             directory(b"d/"), symlink(b"d/up", b"..")),
             CONVERTS, check=_loops, mount=True, mount_check=_loops_mounted),
    BadInput("symlink-empty", "symlink with an empty target", lambda: archive(symlink(b"s", b"")),
             "symlink target must be 1..4095 bytes", entry="s"),
    BadInput("symlink-too-long", "symlink target of 5000 bytes",
             lambda: archive(pax(pax_record(b"linkpath", b"x" * 5000)), symlink(b"s", b"t")),
             "symlink target must be 1..4095 bytes", entry="s"),
    # -- duplicates ---------------------------------------------------------------------------
    BadInput("duplicate-types", "x as file, then directory with a child, then symlink (last wins)",
             lambda: archive(member(b"x", b"file"), directory(b"x/"), member(b"x/y", b"z"), symlink(b"x", b"target")),
             CONVERTS, check=_dup_types),
    BadInput("dir-then-file", "d/ with d/a, then a file d (the subtree goes)",
             lambda: archive(directory(b"d/"), member(b"d/a", b"a"), member(b"d", b"now a file\n")),
             CONVERTS, check=_dir_replaced_by_file),
    BadInput("whiteout-and-real", ".wh.f and f in one layer (the real entry wins)",
             lambda: archive(member(b".wh.f"), member(b"f", b"kept\n")), CONVERTS, check=_real_beats_whiteout),
    # -- PAX ----------------------------------------------------------------------------------
    BadInput("pax-size-not-number", "PAX size=abc",
             lambda: archive(pax(pax_record(b"size", b"abc")), member(b"x", b"y")),
             "invalid PAX size b'abc'", entry="x"),
    BadInput("pax-size-huge", "PAX size of 20 nines (beyond 64 bits)",
             lambda: archive(pax(pax_record(b"size", b"9" * 20)), member(b"x", b"y")),
             "invalid PAX size b'99999999999999999999'", entry="x"),
    BadInput("pax-size-past-end", "PAX size 1 MiB for a 1-byte member",
             lambda: archive(pax(pax_record(b"size", b"1048576")), member(b"x", b"y")),
             "unexpected end of archive", entry="x"),
    BadInput("pax-length-wrong", "PAX record whose length field is 999",
             lambda: archive(pax(b"999 path=x\n"), member(b"x", b"y")), "has invalid length 999"),
    BadInput("pax-no-keyword", "PAX record '7 =abc'", lambda: archive(pax(b"7 =abc\n"), member(b"x", b"y")),
             "has no valid keyword"),
    BadInput("pax-no-newline", "PAX record without its newline",
             lambda: archive(pax(b"11 path=abc"), member(b"x", b"y")), "does not end with a newline"),
    BadInput("pax-too-big", "a 1 MiB PAX comment (extended headers are capped at 1 MiB)",
             lambda: archive(pax(pax_record(b"comment", b"c" * MiB)), member(b"x", b"y")),
             "extended header data exceeds the limit of 1048576 bytes"),
    BadInput("pax-unknown-keys", "unknown PAX keywords (ignored)",
             lambda: archive(pax(pax_record(b"VENDOR.thing", b"1") + pax_record(b"SCHILY.fflags", b"uchg")
                                 + pax_record(b"hdrcharset", b"BINARY")), member(b"x", b"y")),
             CONVERTS, check=_unknown_pax),
    BadInput("cve-2024-6232", "CVE-2024-6232 payload: 1,000,000 digits in a PAX header (hours in CPython "
             "3.11.7's tarfile)", lambda: archive(pax(b"1" * 1_000_000), member(b"x", b"y")),
             "does not start with a decimal length", budget=1.0),
    BadInput("cve-2024-6232-global", "the same payload in a global ('g') PAX header",
             lambda: archive(pax(b"1" * 1_000_000, typeflag=b"g"), member(b"x", b"y")),
             "does not start with a decimal length", budget=1.0),
    BadInput("pax-mtime-bogus", "PAX mtime=abc", lambda: archive(pax(pax_record(b"mtime", b"abc")), member(b"x", b"y")),
             "invalid PAX mtime b'abc'", entry="x"),
    # -- numbers ------------------------------------------------------------------------------
    BadInput("uid-2^32", "PAX uid 4294967296 (mkfs.erofs would wrap it to 0: root)",
             lambda: archive(pax(pax_record(b"uid", b"4294967296")), member(b"x", b"y")),
             "uid/gid 4294967296/0 does not fit in 32 bits", entry="x"),
    BadInput("gid-huge-base256", "base-256 gid 2^40 in the ustar field",
             lambda: archive(member(b"x", b"y", fields={116: base256(1 << 40, 8)})),
             "uid/gid 0/1099511627776 does not fit in 32 bits", entry="x"),
    BadInput("uid-2^64", "PAX uid 2^64",
             lambda: archive(pax(pax_record(b"uid", b"%d" % (1 << 64))), member(b"x", b"y")),
             "invalid PAX uid b'18446744073709551616'", entry="x"),
    BadInput("uid-max-32bit", "uid/gid 4294967294 (the largest valid ids)",
             lambda: archive(pax(pax_record(b"uid", b"4294967294") + pax_record(b"gid", b"4294967294")),
                             member(b"x", b"y")), CONVERTS, check=_max_uid),
    BadInput("uid-negative", "base-256 uid -5", lambda: archive(member(b"x", fields={108: base256(-5, 8)})),
             "negative uid or gid", entry="x"),
    BadInput("mtime-negative", "mtimes before 1970: base-256 -1000 and PAX -1.5 (0 in the image, as containerd "
             "bounds them)",
             lambda: archive(member(b"old", b"y", fields={136: base256(-1000, 12)}),
                             pax(pax_record(b"mtime", b"-1.5")), member(b"older", b"z")),
             CONVERTS, check=_negative_mtime, mount=True, mount_check=_negative_mtime_mounted),
    BadInput("mtime-far-future", "PAX mtime 2^62, after 2262 (0 in the image, as containerd bounds it)",
             lambda: archive(pax(pax_record(b"mtime", b"%d" % (1 << 62))), member(b"x", b"y")),
             CONVERTS, check=_far_future),
    BadInput("mtime-huge", "base-256 mtime 2^70",
             lambda: archive(member(b"x", b"y", fields={136: base256(1 << 70, 12)})),
             "mtime field 1180591620717411303424 is out of range", entry="x"),
    # -- whiteouts ----------------------------------------------------------------------------
    BadInput("whiteout-dotdot", "whiteout of '..' (.wh...)", lambda: archive(member(b".wh...")),
             "'.wh...' is not a valid whiteout name", entry=".wh..."),
    BadInput("whiteout-dot", "whiteout of the root via '.wh..'", lambda: archive(member(b"./.wh..")),
             "'.wh..' is not a valid whiteout name", entry="./.wh.."),
    BadInput("whiteout-empty", "whiteout with an empty name (.wh.)", lambda: archive(member(b"a/.wh.")),
             "'a/.wh.' is not a valid whiteout name", entry="a/.wh."),
    BadInput("whiteout-as-dir", "a whiteout used as a directory (.wh.x/y)", lambda: archive(member(b".wh.x/y")),
             "the whiteout name '.wh.x' is used as a directory", entry=".wh.x/y"),
    BadInput("opaque-with-content", ".wh..wh..opq with 15 bytes of content (content ignored, later entries kept)",
             lambda: archive(directory(b"d/"), member(b"d/.wh..wh..opq", b"ignored content"),
                             member(b"d/kept", b"kept\n"), member(b"after", b"after\n")),
             CONVERTS, check=_opaque_content, mount=True, mount_check=_opaque_mounted),
    BadInput("overlay-xattr-in-source", "a source xattr trusted.overlay.opaque=y (escaped, cannot steer overlayfs)",
             lambda: archive(pax(pax_record(b"SCHILY.xattr.trusted.overlay.opaque", b"y")), directory(b"d/")),
             CONVERTS, check=_overlay_xattr_escaped),
    # -- xattrs and devices -------------------------------------------------------------------
    BadInput("xattrs-overflow", "17 xattrs of 60,000 bytes on one file (beyond EROFS's 256 KiB per inode)",
             lambda: archive(pax(b"".join(pax_record(b"SCHILY.xattr.user.a%d" % i, b"v" * 60000) for i in range(17))),
                             member(b"x", b"y")), "exceed the inline limit of 262148 bytes"),
    BadInput("xattr-unknown-namespace", "xattr system.foo (no EROFS namespace; mkfs.erofs would drop it silently)",
             lambda: archive(pax(pax_record(b"SCHILY.xattr.system.foo", b"bar")), member(b"x", b"y")),
             "xattr 'system.foo' has no namespace EROFS can store"),
    BadInput("device-nodes", "block 8:0, char 1:3, char 4095:1048575 and a FIFO (stored in the image only; "
             "nothing is created on the host)",
             lambda: archive(directory(b"dev/"),
                             header(b"dev/sda", typeflag=b"4", devmajor=8, devminor=0, mode=0o660),
                             header(b"dev/null", typeflag=b"3", devmajor=1, devminor=3, mode=0o666),
                             header(b"dev/big", typeflag=b"3", devmajor=4095, devminor=(1 << 20) - 1),
                             header(b"dev/fifo", typeflag=b"6")),
             CONVERTS, check=_devices, mount=True, mount_check=_devices_mounted),
    BadInput("device-number-huge", "character device 5000:2097152 (beyond 12-bit major / 20-bit minor)",
             lambda: archive(header(b"dev/x", typeflag=b"3", fields={329: base256(5000, 8), 337: base256(1 << 21, 8)})),
             "does not fit Linux's 12-bit major / 20-bit minor", entry="dev/x"),
)

_NAMES = [c.name for c in CATALOGUE]
assert len(_NAMES) == len(set(_NAMES)), "catalogue names must be unique"


def by_name(name: str) -> BadInput:
    """The catalogue entry called ``name``."""
    for case in CATALOGUE:
        if case.name == name:
            return case
    raise KeyError(name)
