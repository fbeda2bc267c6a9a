"""TarReader: every header format, extension and failure mode, against tarfile, GNU tar and
hand-made headers."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from converter.errors import LayerError
from converter.layers.model import EntryKind, TarEntry
from converter.layers.tarstream import TarReader, _Malformed, parse_pax_records
from tests.support.tarcraft import END, T0, base256, header, member, octal, pad, pax_record

# --- archive construction helpers ------------------------------------------------------------


def pax(*records: tuple[bytes, bytes], typeflag: bytes = b"x") -> bytes:
    data = b"".join(pax_record(k, v) for k, v in records)
    return member(b"./PaxHeaders/x", data, typeflag=typeflag)


def read_all(archive: bytes, **kw: object) -> list[tuple[TarEntry, bytes | None]]:
    out = []
    for entry, data in TarReader(io.BytesIO(archive), layer="L", **kw):  # type: ignore[arg-type]
        out.append((entry, None if data is None else data.read()))
    return out


def only(archive: bytes, **kw: object) -> tuple[TarEntry, bytes | None]:
    [item] = read_all(archive, **kw)
    return item


def tarfile_archive(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = T0
    for key, value in attrs.items():
        setattr(ti, key, value)
    return ti


class ShortReads(io.RawIOBase):
    """A pipe-like stream: at most ``step`` bytes per call and no readinto of its own."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        return chunk


# --- basic formats ---------------------------------------------------------------------------

FORMATS = [
    pytest.param(tarfile.USTAR_FORMAT, id="ustar"),
    pytest.param(tarfile.GNU_FORMAT, id="gnu"),
    pytest.param(tarfile.PAX_FORMAT, id="pax"),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_member_kinds_from_tarfile(fmt: int) -> None:
    archive = tarfile_archive(
        [
            (info("d", tarfile.DIRTYPE, mode=0o755, uid=1, gid=2), b""),
            (info("d/f", mode=0o4755, size=5, uid=1000, gid=100), b"hello"),
            (info("d/empty", size=0), b""),
            (info("d/sym", tarfile.SYMTYPE, linkname="f", mode=0o777), b""),
            (info("d/hard", tarfile.LNKTYPE, linkname="d/f"), b""),
            (info("dev/c", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
            (info("dev/b", tarfile.BLKTYPE, devmajor=8, devminor=300), b""),
            (info("dev/p", tarfile.FIFOTYPE, mode=0o600), b""),
        ],
        fmt,
    )
    got = read_all(archive)
    summary = [(e.name, e.kind, e.mode, e.uid, e.gid, e.size, e.linkname, data) for e, data in got]
    assert summary == [
        (b"d/", EntryKind.DIR, 0o755, 1, 2, 0, b"", None),
        (b"d/f", EntryKind.REG, 0o4755, 1000, 100, 5, b"", b"hello"),
        (b"d/empty", EntryKind.REG, 0o644, 0, 0, 0, b"", b""),
        (b"d/sym", EntryKind.SYMLINK, 0o777, 0, 0, 0, b"f", None),
        (b"d/hard", EntryKind.HARDLINK, 0o644, 0, 0, 0, b"d/f", None),
        (b"dev/c", EntryKind.CHR, 0o666, 0, 0, 0, b"", None),
        (b"dev/b", EntryKind.BLK, 0o644, 0, 0, 0, b"", None),
        (b"dev/p", EntryKind.FIFO, 0o600, 0, 0, 0, b"", None),
    ]
    assert [(e.devmajor, e.devminor) for e, _ in got[5:7]] == [(1, 3), (8, 300)]
    assert all(e.mtime_sec == T0 and e.mtime_nsec == 0 for e, _ in got)


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_names_and_links(fmt: int) -> None:
    # 150-byte name: ustar splits it into prefix + name, GNU uses 'L', PAX uses path.
    long_name = "/".join([f"component-{i:02d}" for i in range(10)])[:150]
    members = [(info(long_name, size=3), b"abc")]
    if fmt != tarfile.USTAR_FORMAT:  # ustar cannot hold a link target over 100 bytes
        members.append((info("link", tarfile.SYMTYPE, linkname="t" * 300), b""))
    got = read_all(tarfile_archive(members, fmt))
    assert got[0][0].name == long_name.encode()
    assert got[0][1] == b"abc"
    if fmt != tarfile.USTAR_FORMAT:
        assert got[1][0].linkname == b"t" * 300


def test_ustar_prefix_is_joined_only_for_posix_magic() -> None:
    posix = only(member(b"name", b"x", prefix=b"some/dir") + END)[0]
    assert posix.name == b"some/dir/name"
    # GNU headers keep atime/ctime where ustar has its prefix: never part of the name.
    gnu = only(member(b"name", b"x", magic=b"ustar  \0", fields={345: b"12345670123\0"}) + END)[0]
    assert gnu.name == b"name"


@pytest.mark.parametrize(
    ("typeflag", "name", "kind"),
    [
        pytest.param(b"\0", b"old-file", EntryKind.REG, id="nul-is-regular"),
        pytest.param(b"\0", b"old-dir/", EntryKind.DIR, id="nul-with-slash-is-dir"),
        pytest.param(b"0", b"dir-like/", EntryKind.REG, id="slash-only-counts-for-nul"),
    ],
)
@pytest.mark.parametrize("magic", [pytest.param(b"", id="v7"), pytest.param(b"ustar\x0000", id="ustar")])
def test_old_style_typeflags(typeflag: bytes, name: bytes, kind: EntryKind, magic: bytes) -> None:
    data = b"" if kind is EntryKind.DIR else b"payload"
    archive = member(name, data, typeflag=typeflag, magic=magic) + member(b"next", b"n") + END
    got = read_all(archive)
    assert [(e.name, e.kind) for e, _ in got] == [(name, kind), (b"next", EntryKind.REG)]
    assert got[0][1] == (None if kind is EntryKind.DIR else data)


# --- header fields ---------------------------------------------------------------------------


@pytest.mark.parametrize("checksum", ["unsigned", "signed"])
def test_checksum_signed_and_unsigned(checksum: str) -> None:
    name = "é-ü".encode("latin-1")  # bytes >= 0x80 make the two sums differ
    entry, data = only(member(name, b"x", checksum=checksum) + END)
    assert entry.name == name and data == b"x"


def test_bad_checksum_is_rejected() -> None:
    with pytest.raises(LayerError, match=r"reading layer L, entry 'f': invalid header checksum"):
        read_all(member(b"f", b"x", checksum="bad") + END)


def test_garbage_is_not_a_tar() -> None:
    with pytest.raises(LayerError, match="invalid header checksum"):
        read_all(b"this is not a tar archive".ljust(2048, b"!"))


def test_base256_numbers() -> None:
    block = header(
        b"big",
        typeflag=b"3",
        fields={
            100: base256(0o640, 8),
            108: base256(2**40, 8),
            116: base256(2**33 + 5, 8),
            136: base256(-1, 12),
            329: base256(2**30, 8),
            337: base256(7, 8),
        },
    )
    entry = only(block + END)[0]
    assert (entry.mode, entry.uid, entry.gid) == (0o640, 2**40, 2**33 + 5)
    assert (entry.mtime_sec, entry.mtime_nsec) == (-1, 0)
    assert (entry.devmajor, entry.devminor) == (2**30, 7)


def test_base256_size() -> None:
    data = b"z" * 1000
    entry, got = only(header(b"f", fields={124: base256(len(data), 12)}) + pad(data) + END)
    assert entry.size == 1000 and got == data


def test_negative_mtime_from_gnu_tarfile() -> None:
    archive = tarfile_archive([(info("f", mtime=-86400 * 365), b"")], tarfile.GNU_FORMAT)
    assert only(archive)[0].mtime_sec == -86400 * 365


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({100: b"0064x\0\0\0"}, "invalid mode field", id="bad-octal"),
        pytest.param({124: base256(-5, 12)}, "negative size", id="negative-size"),
        pytest.param({108: base256(-1, 8)}, "negative uid", id="negative-uid"),
        pytest.param({100: base256(-1, 8)}, "negative mode", id="negative-mode"),
        pytest.param({124: b"00000000+12\0"}, "invalid size field", id="sign-in-octal"),
        pytest.param({124: b"0000_0000012"}, "invalid size field", id="underscore-in-octal"),
    ],
)
def test_invalid_numeric_fields(fields: dict[int, bytes], message: str) -> None:
    with pytest.raises(LayerError, match=message):
        read_all(header(b"f", fields=fields) + END)


def test_octal_fields_with_spaces_and_trailing_junk() -> None:
    # Old writers pad with spaces, some leave junk after the terminating NUL.
    block = header(b"f", fields={100: b"   644 \0", 108: b"12\0junk\0", 136: b" 1234567 \0 "})
    entry = only(block + END)[0]
    assert (entry.mode, entry.uid, entry.mtime_sec) == (0o644, 0o12, 0o1234567)


def test_header_only_types_never_consume_data() -> None:
    # Go's archive/tar (Docker, containerd) ignores the size of '1'..'6' members; so do we.
    archive = header(b"hard", typeflag=b"1", linkname=b"f", size=512) + member(b"next", b"n") + END
    assert [e.name for e, _ in read_all(archive)] == [b"hard", b"next"]


@pytest.mark.parametrize("typeflag", [b"V", b"D", b"M", b"Z", b"7"])
def test_typeflags_containerd_cannot_apply_are_refused(typeflag: bytes) -> None:
    """containerd and moby fail on them ("unhandled tar header type"), so a layer holding one
    never worked in a container runtime: refused, not skipped."""
    archive = member(b"odd", b"q" * 700, typeflag=typeflag) + member(b"f", b"after") + END
    with pytest.raises(LayerError, match=f"entry 'odd': unsupported typeflag {typeflag!r}"):
        read_all(archive)


# --- PAX -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(b"1700000000", (T0, 0), id="whole"),
        pytest.param(b"1700000000.5", (T0, 500_000_000), id="one-digit"),
        pytest.param(b"1700000000.05", (T0, 50_000_000), id="leading-zero"),
        pytest.param(b"1700000000.72605121", (T0, 726_051_210), id="gnu-tar-8-digits"),
        pytest.param(b"1700000000.123456789", (T0, 123_456_789), id="nanoseconds"),
        pytest.param(b"1700000000.1234567899", (T0, 123_456_789), id="sub-ns-truncated"),
        pytest.param(b"1700000000.", (T0, 0), id="empty-fraction"),
        pytest.param(b"0.000000001", (0, 1), id="one-ns"),
        pytest.param(b"-1", (-1, 0), id="negative-whole"),
        pytest.param(b"-1.25", (-2, 750_000_000), id="negative-fraction"),
        pytest.param(b"-0.5", (-1, 500_000_000), id="negative-half"),
        pytest.param(b"-1.0000000001", (-1, 0), id="negative-sub-ns-truncated"),
        pytest.param(b"+1.5", (1, 500_000_000), id="plus-sign"),
        pytest.param(b"0001700000000.5", (T0, 500_000_000), id="leading-zeros"),
        pytest.param(b"-0000000000000000000000001", (-1, 0), id="many-leading-zeros"),
    ],
)
def test_pax_mtime_is_exact(value: bytes, expected: tuple[int, int]) -> None:
    entry = only(pax((b"mtime", value)) + member(b"f") + END)[0]
    assert (entry.mtime_sec, entry.mtime_nsec) == expected


@pytest.mark.parametrize(
    "value",
    [b"abc", b"1.2.3", b" 1", b"1e5", b"0x10", b".5", b"1.-5", b"9" * 25, b"+", b"-", b"1.+5", b"++1"],
)
def test_pax_mtime_invalid(value: bytes) -> None:
    with pytest.raises(LayerError, match="PAX mtime"):
        read_all(pax((b"mtime", value)) + member(b"f") + END)


def test_pax_size_uid_gid_override_header() -> None:
    data = b"d" * 600
    archive = (
        pax((b"size", b"600"), (b"uid", b"4294967294"), (b"gid", b"3000000"))
        + header(b"f", size=0, uid=1, gid=2)
        + pad(data)
        + END
    )
    entry, got = only(archive)
    assert (entry.size, entry.uid, entry.gid, got) == (600, 4294967294, 3000000, data)


@pytest.mark.parametrize(
    ("key", "value"),
    [(b"uid", b"-1"), (b"uid", b"1 "), (b"gid", b"0x1"), (b"size", b"12a"), (b"size", b"9" * 21)],
)
def test_pax_invalid_numbers(key: bytes, value: bytes) -> None:
    with pytest.raises(LayerError, match=f"PAX {key.decode()}"):
        read_all(pax((key, value)) + member(b"f") + END)


def test_big_uid_gid_through_tarfile_pax() -> None:
    # Over 2**21 - 1 the ustar field overflows, so tarfile writes PAX uid/gid records.
    archive = tarfile_archive([(info("f", uid=2**21, gid=2**31 + 7), b"")], tarfile.PAX_FORMAT)
    entry = only(archive)[0]
    assert (entry.uid, entry.gid) == (2**21, 2**31 + 7)


def test_pax_path_and_linkpath() -> None:
    archive = pax((b"path", b"real/name"), (b"linkpath", b"real/target")) + header(
        b"short", typeflag=b"2", linkname=b"shorttarget"
    )
    entry = only(archive + END)[0]
    assert (entry.name, entry.linkname, entry.kind) == (b"real/name", b"real/target", EntryKind.SYMLINK)


@pytest.mark.parametrize("pax_first", [True, False])
def test_gnu_long_name_beats_pax_path(pax_first: bool) -> None:
    """Go's reader applies the PAX records first and a GNU long name after them."""
    longname = member(b"././@LongLink", b"gnu/name\0", typeflag=b"L")
    ext = pax((b"path", b"pax/name")) + longname if pax_first else longname + pax((b"path", b"pax/name"))
    entry = only(ext + member(b"hdr") + END)[0]
    assert entry.name == b"gnu/name"


def test_gnu_long_link_beats_pax_linkpath() -> None:
    longlink = member(b"././@LongLink", b"gnu/target\0", typeflag=b"K")
    entry = only(longlink + pax((b"linkpath", b"pax/target")) + header(b"l", typeflag=b"2", linkname=b"h") + END)[0]
    assert entry.linkname == b"gnu/target"


def test_gnu_long_link_for_hardlink() -> None:
    target = b"x/" * 100 + b"target"
    archive = member(b"././@LongLink", target + b"\0", typeflag=b"K") + header(
        b"h", typeflag=b"1", linkname=b"truncated"
    )
    entry = only(archive + END)[0]
    assert (entry.kind, entry.linkname) == (EntryKind.HARDLINK, target)


def test_names_are_raw_bytes() -> None:
    raw = b"caf\xe9/./../\xff\xfe"
    assert only(pax((b"path", raw)) + member(b"f") + END)[0].name == raw


@pytest.mark.parametrize("key", [b"path", b"linkpath"])
def test_nul_in_pax_path_is_rejected(key: bytes) -> None:
    with pytest.raises(LayerError, match="NUL"):
        read_all(pax((key, b"a\0b")) + header(b"f", typeflag=b"2", linkname=b"t") + END)


def test_schily_xattrs_raw_values() -> None:
    value = b"\x00\x01binary\n=\xff"
    archive = pax(
        (b"SCHILY.xattr.user.bin", value),
        (b"SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
        (b"SCHILY.xattr.user.caf\xe9", b"latin"),
        (b"SCHILY.xattr.user.empty", b""),
    ) + member(b"f")
    entry = only(archive + END)[0]
    assert entry.xattrs == {
        "user.bin": value,
        "security.capability": b"\x01\x00\x00\x02",
        "user.caf\udce9": b"latin",  # undecodable name bytes survive via surrogateescape
        "user.empty": b"",  # an empty xattr is a value, not a cancellation
    }


def test_schily_xattrs_through_tarfile() -> None:
    ti = info("f")
    ti.pax_headers = {"SCHILY.xattr.user.comment": "héllo", "SCHILY.xattr.trusted.overlay.opaque": "y"}
    entry = only(tarfile_archive([(ti, b"")], tarfile.PAX_FORMAT))[0]
    assert entry.xattrs == {"user.comment": "héllo".encode(), "trusted.overlay.opaque": b"y"}


@pytest.mark.parametrize("value", [base64.b64encode(b"\x00\xffbin\x01"), b"!!!! not base64"])
def test_libarchive_xattrs_are_ignored(value: bytes) -> None:
    """containerd applies SCHILY.xattr.* records only (bsdtar writes both kinds)."""
    archive = pax((b"LIBARCHIVE.xattr.user.a%20b%3D", value), (b"SCHILY.xattr.user.s", b"v")) + member(b"f")
    assert only(archive + END)[0].xattrs == {"user.s": b"v"}


@pytest.mark.parametrize("key", [b"SCHILY.xattr."])
def test_bad_xattr_names(key: bytes) -> None:
    with pytest.raises(LayerError, match="invalid xattr name"):
        read_all(pax((key, b"dg==")) + member(b"f") + END)


def test_global_headers_are_ignored() -> None:
    """containerd and moby skip PAX global headers: their records reach no member."""
    archive = (
        member(b"before")
        + pax((b"mtime", b"5.5"), (b"uid", b"77"), (b"path", b"renamed"), (b"SCHILY.xattr.user.g", b"1"),
              typeflag=b"g")
        + member(b"a", uid=1)
        + pax((b"uid", b"88"), (b"SCHILY.xattr.user.x", b"2"))
        + member(b"b", uid=1)
        + END
    )
    got = {e.name: (e.uid, e.mtime_sec, e.mtime_nsec, e.xattrs) for e, _ in read_all(archive)}
    assert got == {b"before": (0, T0, 0, {}), b"a": (1, T0, 0, {}), b"b": (88, T0, 0, {"user.x": b"2"})}


def test_global_headers_are_still_checked() -> None:
    with pytest.raises(LayerError, match="PAX record"):
        read_all(member(b"g", b"5 a=b", typeflag=b"g") + member(b"f") + END)


def test_only_the_last_of_several_pax_headers_counts() -> None:
    archive = pax((b"uid", b"7"), (b"path", b"first")) + pax((b"gid", b"9")) + member(b"plain", uid=1) + END
    entry = only(archive)[0]
    assert (entry.name, entry.uid, entry.gid) == (b"plain", 1, 9)


def test_empty_value_keeps_the_header_field() -> None:
    archive = pax((b"path", b""), (b"uid", b""), (b"SCHILY.xattr.user.e", b"")) + member(b"own", uid=9) + END
    entry = only(archive)[0]
    assert (entry.name, entry.uid, entry.xattrs) == (b"own", 9, {"user.e": b""})


@pytest.mark.parametrize(("value", "expected"), [(b"0001000", 1000), (b"+5", 5), (b"0" * 30 + b"7", 7)])
def test_pax_numbers_as_go_parses_them(value: bytes, expected: int) -> None:
    entry = only(pax((b"uid", value), (b"gid", value), (b"size", value)) + member(b"n", b"x" * expected) + END)[0]
    assert (entry.uid, entry.gid, entry.size) == (expected, expected, expected)


def test_unknown_pax_keywords_are_ignored() -> None:
    archive = pax((b"uname", b"root"), (b"atime", b"1.5"), (b"SCHILY.acl.access", b"x"), (b"hdrcharset", b"BINARY"))
    entry = only(archive + member(b"f") + END)[0]
    assert entry.name == b"f" and entry.xattrs == {}


def test_pax_records_parse() -> None:
    data = pax_record(b"path", b"a=b\nc") + pax_record(b"k", b"") + b"\0\0\0"
    assert parse_pax_records(data) == [(b"path", b"a=b\nc"), (b"k", b"")]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"1 a=b\n", id="length-too-small"),
        pytest.param(b"5 a=b\n", id="length-one-short"),
        pytest.param(b"8 a=b\n", id="length-past-end"),
        pytest.param(b"7 a=bc\n7 a=b\n", id="length-mismatch-next"),
        pytest.param(b"abc a=b\n", id="non-decimal-length"),
        pytest.param(b"-7 a=b\n", id="negative-length"),
        pytest.param(b" 7 a=b\n", id="leading-space"),
        pytest.param(b"6 =bc\n", id="empty-keyword"),
        pytest.param(b"6 abc\n", id="no-equals"),
        pytest.param(b"7 a=bc", id="no-newline"),
        pytest.param(b"8 a\0=bc\n", id="nul-in-keyword"),
        pytest.param(b"1" * 30 + b" a=b\n", id="huge-length"),
        pytest.param(b"0" * 100, id="digits-without-space"),
        pytest.param(b"6 a=b\n\0\0x", id="junk-after-padding"),
        pytest.param(b"3 \n", id="tiny-record"),
    ],
)
def test_bogus_pax_records(data: bytes) -> None:
    with pytest.raises(_Malformed):
        parse_pax_records(data)
    with pytest.raises(LayerError, match="PAX"):
        read_all(member(b"./PaxHeaders/x", data, typeflag=b"x") + member(b"f") + END)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"0" * 900_000, id="digit-run"),
        pytest.param(b"1 " * 450_000, id="many-tiny-lengths"),
        pytest.param(pax_record(b"k", b"v") * 120_000, id="many-valid-records"),
        pytest.param(b"9" * 20 + b" " + b"a" * 899_000 + b"=\n", id="one-huge-bogus-record"),
        pytest.param(pax_record(b"SCHILY.xattr.user." + b"n" * 400_000, b"=" * 400_000), id="huge-record"),
    ],
)
def test_cve_2024_6232_payloads_are_fast(payload: bytes) -> None:
    # tarfile's regex rescans such input quadratically; our parser is linear or fails early.
    archive = member(b"./PaxHeaders/x", payload, typeflag=b"x") + member(b"f", b"x") + END
    start = time.perf_counter()
    with contextlib.suppress(LayerError):
        read_all(archive, max_pax_size=4 << 20)
    assert time.perf_counter() - start < 1.0


def test_big_pax_header_over_the_limit_is_rejected() -> None:
    archive = pax((b"comment", b"c" * 5000)) + member(b"f") + END
    with pytest.raises(LayerError, match="exceeds the limit of 4096 bytes"):
        read_all(archive, max_pax_size=4096)
    assert only(archive, max_pax_size=8192)[0].name == b"f"


def test_global_pax_headers_are_bounded_one_by_one() -> None:
    many = b"".join(pax((b"SCHILY.xattr.user.k%d" % i, b"v" * 900), typeflag=b"g") for i in range(10))
    assert only(many + member(b"f") + END, max_pax_size=4096)[0].xattrs == {}
    with pytest.raises(LayerError, match="exceeds the limit of 4096 bytes"):
        read_all(pax((b"comment", b"c" * 5000), typeflag=b"g") + member(b"f") + END, max_pax_size=4096)


# --- GNU sparse ------------------------------------------------------------------------------


def make_sparse_file(path: Path, size: int, extents: list[tuple[int, bytes]]) -> bytes:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in extents:
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


SPARSE_LAYOUTS = {
    "one-extent": (1 << 20, [(300_000, b"hello" * 1000)]),
    "ends-in-hole": (3 << 20, [(0, b"head" * 2000), (1 << 20, b"mid" * 3000)]),
    "all-hole": (2 << 20, []),
    "many-extents": (4 << 20, [(i * 200_000, bytes([65 + i]) * 5000) for i in range(12)]),
}

GNU_TAR_SPARSE = [
    pytest.param(["--format=gnu"], b"", id="gnu-old-S"),
    pytest.param(["--format=posix", "--sparse-version=0.0"], b"GNU.sparse.offset", id="pax-0.0"),
    pytest.param(["--format=posix", "--sparse-version=0.1"], b"GNU.sparse.map", id="pax-0.1"),
    pytest.param(["--format=posix", "--sparse-version=1.0"], b"GNU.sparse.major=1", id="pax-1.0"),
]


@pytest.fixture(scope="module")
def gnu_tar() -> str:
    path = shutil.which("tar")
    if path is None or b"GNU tar" not in subprocess.run([path, "--version"], capture_output=True).stdout:
        pytest.skip("GNU tar is not installed")
    return path


@pytest.mark.parametrize("flags,marker", GNU_TAR_SPARSE)
def test_gnu_tar_sparse_formats(gnu_tar: str, tmp_path: Path, flags: list[str], marker: bytes) -> None:
    src = tmp_path / "src"
    src.mkdir()
    expected = {}
    for name, (size, extents) in SPARSE_LAYOUTS.items():
        expected[name.encode()] = make_sparse_file(src / name, size, extents)
    (src / "plain").write_bytes(b"not sparse")
    expected[b"plain"] = b"not sparse"
    names = sorted(n.decode() for n in expected)
    archive = subprocess.run(
        [gnu_tar, "-c", "--sparse", *flags, "-f", "-", "-C", str(src), *names],
        check=True,
        capture_output=True,
    ).stdout
    if marker:
        assert marker in archive
    else:
        assert b"S" in {archive[i + 156 : i + 157] for i in range(0, len(archive), 512)}
    got = read_all(archive)
    assert {e.name: d for e, d in got} == expected
    assert {e.name: e.size for e, _ in got} == {k: len(v) for k, v in expected.items()}
    assert all(e.kind is EntryKind.REG for e, _ in got)


def test_gnu_tar_sparse_chunks_and_partial_reads(gnu_tar: str, tmp_path: Path) -> None:
    size, extents = SPARSE_LAYOUTS["many-extents"]
    content = make_sparse_file(tmp_path / "s", size, extents)
    (tmp_path / "t").write_bytes(b"tail")
    archive = subprocess.run(
        [gnu_tar, "-c", "--sparse", "--format=posix", "-f", "-", "-C", str(tmp_path), "s", "t"],
        check=True,
        capture_output=True,
    ).stdout
    reader = iter(TarReader(io.BytesIO(archive), layer="L"))
    _, data = next(reader)
    assert data is not None
    pieces = list(data.chunks(65536))
    assert all(0 < len(p) <= 65536 for p in pieces) and b"".join(pieces) == content
    # Now read only part of the sparse file: the rest is skipped when the reader advances.
    reader = iter(TarReader(io.BytesIO(archive), layer="L"))
    _, data = next(reader)
    assert data is not None and data.read(250_000) == content[:250_000]
    after, tail = next(reader)
    assert after.name == b"t" and tail is not None and tail.read() == b"tail"


def old_sparse_header(name: bytes, segments: list[tuple[int, int]], realsize: int, stored: int) -> bytes:
    fields = {483: octal(realsize, 12)}
    for i, (offset, length) in enumerate(segments[:4]):
        fields[386 + 24 * i] = octal(offset, 12)
        fields[398 + 24 * i] = octal(length, 12)
    rest = segments[4:]
    if rest:
        fields[482] = b"\x01"
    out = header(name, typeflag=b"S", size=stored, magic=b"ustar  \0", fields=fields)
    while rest:
        ext = bytearray(512)
        for i, (offset, length) in enumerate(rest[:21]):
            ext[24 * i : 24 * i + 24] = octal(offset, 12) + octal(length, 12)
        rest = rest[21:]
        ext[504] = 1 if rest else 0
        out += bytes(ext)
    return out


def test_old_gnu_sparse_with_extension_blocks() -> None:
    segments = [(i * 1000, 10) for i in range(30)]  # 4 in the header, 21 + 5 in two extensions
    stored = b"".join(bytes([48 + i % 10]) * 10 for i in range(30))
    archive = old_sparse_header(b"s", segments, 40_000, len(stored)) + pad(stored) + END
    entry, data = only(archive)
    expected = bytearray(40_000)
    for i, (offset, length) in enumerate(segments):
        expected[offset : offset + length] = stored[10 * i : 10 * i + 10]
    assert entry.size == 40_000 and data == bytes(expected)


@pytest.mark.parametrize(
    ("segments", "realsize", "stored", "message"),
    [
        pytest.param([(0, 10), (5, 10)], 100, 20, "overlapping", id="overlap"),
        pytest.param([(50, 10), (0, 10)], 100, 20, "out of order", id="unsorted"),
        pytest.param([(95, 10)], 100, 10, "reaches byte 105", id="past-end"),
        pytest.param([(0, 10)], 100, 20, "does not match", id="stored-mismatch"),
    ],
)
def test_bad_sparse_maps(segments: list[tuple[int, int]], realsize: int, stored: int, message: str) -> None:
    archive = old_sparse_header(b"s", segments, realsize, stored) + pad(b"x" * stored) + END
    with pytest.raises(LayerError, match=message):
        read_all(archive)


def test_pax_sparse_10_hand_made() -> None:
    sparse_map = pad(b"2\n10\n3\n20\n2\n")
    archive = (
        pax(
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", b"real/name"),
            (b"GNU.sparse.realsize", b"30"),
        )
        + header(b"./GNUSparseFile.1/name", size=len(sparse_map) + 5)
        + pad(sparse_map + b"abcde")
        + END
    )
    entry, data = only(archive)
    assert (entry.name, entry.size) == (b"real/name", 30)
    assert data == bytes(10) + b"abc" + bytes(7) + b"de" + bytes(8)


def test_unknown_pax_sparse_version_is_a_plain_file() -> None:
    """Go's reader: a GNU.sparse.major/minor it does not know means no sparse file at all."""
    archive = pax((b"GNU.sparse.major", b"2"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.size", b"99"))
    entry, data = only(archive + member(b"f", b"x" * 5) + END)
    assert (entry.size, data) == (5, b"x" * 5)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        pytest.param(
            [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")], "without GNU.sparse.size", id="no-size"
        ),
        pytest.param([(b"GNU.sparse.size", b"10"), (b"GNU.sparse.map", b"0,5")], "without GNU.sparse.numblocks",
                     id="no-numblocks"),
        pytest.param([(b"GNU.sparse.map", b"0,5")], "without GNU.sparse.size", id="map-no-size"),
        pytest.param([(b"GNU.sparse.size", b"10"), (b"GNU.sparse.map", b"0,5,7")], "odd number", id="odd-map"),
        pytest.param([(b"GNU.sparse.size", b"10"), (b"GNU.sparse.map", b"0,x")], "invalid number", id="bad-map"),
        pytest.param(
            [(b"GNU.sparse.size", b"10"), (b"GNU.sparse.numblocks", b"2"), (b"GNU.sparse.map", b"0,5")],
            "numblocks",
            id="numblocks-mismatch",
        ),
        pytest.param(
            [(b"GNU.sparse.size", b"10"), (b"GNU.sparse.offset", b"0"), (b"GNU.sparse.offset", b"5")],
            "do not alternate",
            id="pairs-00",
        ),
    ],
)
def test_bad_pax_sparse(records: list[tuple[bytes, bytes]], message: str) -> None:
    archive = pax(*records) + member(b"f", b"x" * 5) + END
    with pytest.raises(LayerError, match=message):
        read_all(archive)


def test_pax_sparse_10_map_too_large() -> None:
    archive = (
        pax((b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"9"))
        + member(b"f", b"1" * 4096)  # no newline anywhere: the map never ends
        + END
    )
    with pytest.raises(LayerError, match="map is too large"):
        read_all(archive, max_pax_size=2048)


# --- end of archive and truncation -----------------------------------------------------------


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param(END, id="two-zero-blocks"),
        pytest.param(END + bytes(8192), id="record-padding"),
        pytest.param(END + b"trailing junk", id="junk-after-end"),
        pytest.param(b"", id="eof-at-header"),
        pytest.param(bytes(512), id="one-zero-block-then-eof"),
    ],
)
def test_accepted_endings(ending: bytes) -> None:
    archive = member(b"a", b"1") + member(b"b", b"22") + ending
    reader = TarReader(io.BytesIO(archive), layer="L")
    assert [(e.name, d.read() if d else None) for e, d in reader] == [(b"a", b"1"), (b"b", b"22")]
    assert reader.bytes_consumed == len(archive)  # drained to the end


def test_empty_stream_is_an_empty_archive() -> None:
    assert read_all(b"") == []


def test_lone_zero_block_followed_by_headers_is_an_error() -> None:
    archive = member(b"a", b"1") + bytes(512) + member(b"hidden", b"2") + END
    with pytest.raises(LayerError, match="lone zero block"):
        read_all(archive)


def truncation_cases() -> list[object]:
    body = b"0123456789" * 100  # 1000 bytes: two data blocks, the second padded
    archive = member(b"first", b"ok") + pax((b"path", b"long/name")) + member(b"short", body)
    first = len(member(b"first", b"ok"))
    pax_len = len(pax((b"path", b"long/name")))
    return [
        pytest.param(archive[:cut], entry, id=label)
        for label, cut, entry in [
            ("inside-first-header", 100, ""),
            ("inside-pax-header-block", first + 200, ""),
            ("inside-pax-data", first + 520, "./PaxHeaders/x"),
            ("inside-member-header", first + pax_len + 300, ""),
            ("inside-data", first + pax_len + 512 + 700, "long/name"),
            ("inside-padding", first + pax_len + 512 + 1010, "long/name"),
        ]
    ]


@pytest.mark.parametrize(("archive", "entry"), truncation_cases())
def test_truncated_archives(archive: bytes, entry: str) -> None:
    with pytest.raises(LayerError, match="unexpected end of archive") as err:
        read_all(archive)
    assert err.value.layer == "L"
    if entry:
        assert err.value.entry == entry


def test_truncated_data_read_through_chunks_names_the_entry() -> None:
    archive = member(b"big", b"x" * 5000)[:3000]
    _, data = next(iter(TarReader(io.BytesIO(archive), layer="sha256:abc")))
    assert data is not None
    with pytest.raises(LayerError, match=r"reading layer sha256:abc, entry 'big': unexpected end of archive"):
        for _ in data.chunks():
            pass


# --- FileData behaviour, limits, streams -----------------------------------------------------


def test_unread_data_is_skipped_and_old_data_is_closed() -> None:
    archive = member(b"a", b"A" * 3000) + member(b"b", b"B" * 10) + END
    reader = iter(TarReader(io.BytesIO(archive)))
    _, a = next(reader)
    assert a is not None and a.read(5) == b"AAAAA"
    _, b = next(reader)
    assert b is not None and b.read() == b"B" * 10
    with pytest.raises(ValueError, match="read after the tar reader advanced"):
        a.read()


def test_chunk_generator_fails_after_the_reader_advanced() -> None:
    sparse_map = pad(b"1\n100\n2\n")
    archive = (
        pax((b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"1000"))
        + member(b"s", sparse_map + b"ab")
        + member(b"next", b"n")
        + END
    )
    reader = iter(TarReader(io.BytesIO(archive)))
    _, data = next(reader)
    assert data is not None
    pieces = data.chunks(10)
    assert next(pieces) == bytes(10)
    next(reader)
    with pytest.raises(ValueError, match="read after the tar reader advanced"):
        next(pieces)


def test_read_sizes_and_chunks() -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    archive = member(b"big", content) + END
    _, data = next(iter(TarReader(io.BytesIO(archive))))
    assert data is not None
    assert data.read(0) == b""
    assert data.read(10) == content[:10]
    pieces = list(data.chunks(1 << 20))
    assert all(0 < len(p) <= 1 << 20 for p in pieces)
    assert b"".join(pieces) == content[10:]
    assert data.read() == b"" and data.read(5) == b""


@pytest.mark.parametrize("step", [1, 7, 511, 513, 65537])
def test_short_reads_from_a_pipe_like_stream(step: int) -> None:
    members = [(info(f"f{i}", size=i * 300), bytes([i]) * (i * 300)) for i in range(6)]
    archive = tarfile_archive(members, tarfile.PAX_FORMAT)
    reader = TarReader(ShortReads(archive, step))
    assert [(e.name, d.read() if d else None) for e, d in reader] == [(ti.name.encode(), data) for ti, data in members]


def test_real_pipe(tmp_path: Path) -> None:
    archive = tarfile_archive([(info("f", size=100_000), b"p" * 100_000)], tarfile.GNU_FORMAT)
    (tmp_path / "a.tar").write_bytes(archive)
    with subprocess.Popen(["cat", str(tmp_path / "a.tar")], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        got = [(e.name, d.read() if d else None) for e, d in TarReader(proc.stdout)]
    assert got == [(b"f", b"p" * 100_000)]


def test_max_entries() -> None:
    archive = member(b"a") + member(b"b") + member(b"c") + END
    assert len(read_all(archive, max_entries=3)) == 3
    with pytest.raises(LayerError, match="too many entries"):
        read_all(archive, max_entries=2)


def test_bytes_consumed_without_drain_stops_at_the_end_marker() -> None:
    reader = TarReader(io.BytesIO(member(b"a", b"1") + END + b"x" * 5000), drain=False)
    assert [e.name for e, _ in reader] == [b"a"]
    assert reader.bytes_consumed == 2048


def test_reader_iterates_once() -> None:
    reader = TarReader(io.BytesIO(END))
    list(reader)
    with pytest.raises(RuntimeError):
        iter(reader)


# --- GNU tar and tarfile agreement -----------------------------------------------------------


def test_gnu_tar_posix_xattrs_and_subsecond_mtime(gnu_tar: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "f"
    f.write_bytes(b"data")
    os.utime(f, ns=(T0 * 10**9 + 123_456_789, T0 * 10**9 + 120_000_000))
    try:
        os.setxattr(f, "user.comment", b"hi\x00there")
    except OSError as exc:
        pytest.skip(f"user xattrs unsupported on {tmp_path}: {exc}")
    archive = subprocess.run(
        [gnu_tar, "-c", "--format=posix", "--xattrs", "--xattrs-include=*", "-f", "-", "-C", str(src), "f"],
        check=True,
        capture_output=True,
    ).stdout
    entry, data = only(archive)
    assert data == b"data"
    assert (entry.mtime_sec, entry.mtime_nsec) == (T0, 120_000_000)
    assert entry.xattrs == {"user.comment": b"hi\x00there"}


KINDS = {
    tarfile.REGTYPE: EntryKind.REG,
    tarfile.AREGTYPE: EntryKind.REG,
    tarfile.DIRTYPE: EntryKind.DIR,
    tarfile.SYMTYPE: EntryKind.SYMLINK,
    tarfile.LNKTYPE: EntryKind.HARDLINK,
    tarfile.CHRTYPE: EntryKind.CHR,
    tarfile.BLKTYPE: EntryKind.BLK,
    tarfile.FIFOTYPE: EntryKind.FIFO,
}

names = st.text(alphabet="abcXYZ019._-/éü日", min_size=1, max_size=180).filter(
    # No trailing slash: an old-style ('\0') member named "d/" is a directory to every reader,
    # yet tarfile's writer stores data for it, and tarfile strips the slash from PAX paths.
    lambda s: s.strip("/") and "//" not in s and not s.startswith("/") and not s.endswith("/")
)


@st.composite
def archives(draw: st.DrawFn) -> tuple[int, list[tuple[tarfile.TarInfo, bytes]]]:
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    small = fmt == tarfile.USTAR_FORMAT
    ids = st.integers(0, 8**7 - 1 if small else 2**32 - 1)
    mtimes = st.integers(0, 8**11 - 1) if small else st.integers(-(2**40), 2**40)
    members = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(sorted(KINDS)))
        ti = info(f"{i}/{draw(names)}", kind, mode=draw(st.integers(0, 0o7777)))
        ti.uid, ti.gid, ti.mtime = draw(ids), draw(ids), draw(mtimes)
        data = b""
        if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
            data = draw(st.binary(max_size=3000))
            ti.size = len(data)
        elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            ti.linkname = draw(names)
        elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            ti.devmajor, ti.devminor = draw(st.integers(0, 4095)), draw(st.integers(0, 4095))
        members.append((ti, data))
    return fmt, members


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archives())
@example((tarfile.GNU_FORMAT, [(info("a" * 200, size=512), b"x" * 512)]))
@example((tarfile.PAX_FORMAT, [(info("é" * 99, tarfile.SYMTYPE, linkname="日" * 60), b"")]))
def test_agrees_with_tarfile(case: tuple[int, list[tuple[tarfile.TarInfo, bytes]]]) -> None:
    fmt, members = case
    try:
        archive = tarfile_archive(members, fmt)
    except ValueError:
        assume(False)  # tarfile cannot express this member in this format (e.g. ustar name)
    expected = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tf:
        for ti in tf:
            content = tf.extractfile(ti).read() if ti.isreg() else None  # type: ignore[union-attr]
            expected.append(
                (
                    ti.name,
                    KINDS[ti.type],
                    ti.mode,
                    ti.uid,
                    ti.gid,
                    int(ti.mtime),
                    ti.linkname,
                    ti.size if ti.isreg() else 0,
                )
                + ((ti.devmajor, ti.devminor) if ti.ischr() or ti.isblk() else (0, 0))
                + (content,)
            )
    got = [
        (
            # tarfile strips the trailing slash it writes on directories; we keep names raw.
            e.name.decode("utf-8", "surrogateescape").rstrip("/") if e.kind is EntryKind.DIR else e.name.decode(),
            e.kind,
            e.mode,
            e.uid,
            e.gid,
            e.mtime_sec,
            e.linkname.decode(),
            e.size,
            e.devmajor,
            e.devminor,
            data,
        )
        for e, data in read_all(archive)
    ]
    assert got == expected


# --- input that would read as an empty layer --------------------------------------------------


def test_an_erofs_image_is_not_an_empty_tar(tmp_path: Path) -> None:
    """An EROFS image starts with 1024 zero bytes, a tar end-of-archive marker: refused, not empty."""
    from converter.convert.layer import LayerOptions, convert_layer
    from converter.erofs.target import parse_format

    image = tmp_path / "layer.erofs"
    archive = member(b"etc/hostname", b"box\n") + END
    convert_layer(io.BytesIO(archive), image, options=LayerOptions(fmt=parse_format("erofs")), layer="l")
    data = image.read_bytes()
    assert data[:1024] == bytes(1024)
    with pytest.raises(LayerError, match="not a tar archive: this is an EROFS image"):
        read_all(data)


@pytest.mark.parametrize("archive", [bytes(1024) + b"\x01", bytes(1024) + bytes(4096) + b"junk" + bytes(508)],
                         ids=["data-after-marker", "data-after-padding"])
def test_input_that_is_no_tar_is_refused(archive: bytes) -> None:
    with pytest.raises(LayerError, match="not a tar archive"):
        read_all(archive)


@pytest.mark.parametrize("size", [1024, 10240], ids=["marker", "padded-record"])
def test_an_empty_tar_is_empty(size: int) -> None:
    assert read_all(bytes(size)) == []
