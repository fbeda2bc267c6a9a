"""Hand-made tar bytes for hostile-input tests: headers the stdlib's tarfile refuses to write.

Every function returns plain ``bytes`` so a catalogue entry can describe its layer as one
expression. Fields are written exactly as asked (raw ``fields`` overrides win over the
defaults), and the checksum is computed last, so a header is only "wrong" where a test
means it to be.
"""

from __future__ import annotations

import gzip
import io

import zstandard

BLOCK = 512
END = bytes(2 * BLOCK)  # the end-of-archive marker: two zero blocks
T0 = 1_700_000_000  # a fixed, ordinary mtime


def octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field of ``width`` bytes."""
    return b"%0*o\0" % (width - 1, value)


def base256(value: int, width: int) -> bytes:
    """A GNU base-256 numeric field (0x80 marker for positives, two's complement for negatives)."""
    if value >= 0:
        return b"\x80" + value.to_bytes(width - 1, "big")
    return (value % (1 << (8 * width))).to_bytes(width, "big")


def header(
    name: bytes,
    *,
    typeflag: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = T0,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    fields: dict[int, bytes] | None = None,
    checksum: str = "unsigned",
) -> bytes:
    """One header block; ``fields`` overwrite raw bytes at the given offsets after the defaults.

    ``magic`` other than ustar makes an old v7 header (no device or prefix fields);
    ``checksum`` is "unsigned", "signed" (old tars summed signed chars; readers must accept
    both) or "bad".
    """
    block = bytearray(BLOCK)

    def put(offset: int, data: bytes) -> None:
        block[offset : offset + len(data)] = data

    put(0, name[:100])
    put(100, octal(mode, 8))
    put(108, octal(uid, 8))
    put(116, octal(gid, 8))
    put(124, octal(size, 12))
    put(136, octal(mtime, 12))
    put(156, typeflag)
    put(157, linkname[:100])
    put(257, magic)
    if magic.startswith(b"ustar"):
        put(329, octal(devmajor, 8))
        put(337, octal(devminor, 8))
        put(345, prefix[:155])
    for offset, data in (fields or {}).items():
        put(offset, data)
    block[148:156] = b" " * 8
    signed = checksum == "signed"
    total = sum(b - 256 if signed and b > 127 else b for b in block)
    if checksum == "bad":
        total += 1
    block[148:156] = b"%06o\0 " % (total & 0o777777)
    return bytes(block)


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a whole number of blocks."""
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes = b"", **kw: object) -> bytes:
    """A regular file (or any ``typeflag=`` given) with its data blocks."""
    kw.setdefault("size", len(data))
    return header(name, **kw) + pad(data)  # type: ignore[arg-type]


def directory(name: bytes, **kw: object) -> bytes:
    """A directory entry (mode 0755 unless given)."""
    kw.setdefault("mode", 0o755)
    return header(name, typeflag=b"5", **kw)  # type: ignore[arg-type]


def symlink(name: bytes, target: bytes, **kw: object) -> bytes:
    """A symbolic link entry."""
    return header(name, typeflag=b"2", linkname=target, mode=0o777, **kw)  # type: ignore[arg-type]


def hardlink(name: bytes, target: bytes, **kw: object) -> bytes:
    """A hard link entry."""
    return header(name, typeflag=b"1", linkname=target, **kw)  # type: ignore[arg-type]


def pax_record(key: bytes, value: bytes) -> bytes:
    """One ``"LEN key=value\\n"`` record with a self-consistent length."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def pax(records: bytes, *, typeflag: bytes = b"x", name: bytes = b"PaxHeader") -> bytes:
    """An extended header (``x`` or ``g``) carrying raw ``records`` bytes."""
    return header(name, typeflag=typeflag, size=len(records)) + pad(records)


def archive(*members: bytes, end: bool = True) -> bytes:
    """Members concatenated, followed by the end-of-archive marker unless ``end`` is False."""
    return b"".join(members) + (END if end else b"")


def gz(data: bytes) -> bytes:
    """gzip with a fixed header (mtime 0) so fixtures are reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(data)
    return buf.getvalue()


def zst(data: bytes) -> bytes:
    """One zstd frame with a content checksum."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def simple_tree() -> bytes:
    """A small well-formed layer: a directory, a file in it, a symlink (no end marker)."""
    return directory(b"etc/") + member(b"etc/hostname", b"erofs\n") + symlink(b"etc/link", b"hostname")
