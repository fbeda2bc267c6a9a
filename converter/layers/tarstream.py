"""Stream the members of an untrusted tar archive as ``TarEntry`` values plus their contents.

We parse tar ourselves instead of using :mod:`tarfile`: CPython 3.11.7's PAX parser has a
quadratic regular expression (CVE-2024-6232) and layers come from untrusted registries. The
reader is a single forward pass over a byte stream (often a decompressor or a pipe), never
seeks, and holds only metadata in memory: a regular file's contents are handed out as a
:class:`FileData` stream that must be consumed before the next member.

Container runtimes read layers with Go's ``archive/tar`` (containerd, moby and
containers/storage all do), so where tar dialects are ambiguous this reader does what Go's
does, as containerd applies it; ``docs/go-differential.md`` lists the rules and the few
deliberate differences, and ``tests/test_go_differential.py`` checks them against Go itself.

Formats understood (see POSIX.1-2017 ``pax``, the GNU tar manual "Basic Tar Format" and
"Storing Sparse Files", and docs/deviations.md for what mkfs.erofs does with the same input):

Formats understood (see POSIX.1-2017 ``pax``, the GNU tar manual "Basic Tar Format" and
"Storing Sparse Files"):

* v7, ustar, star and GNU headers; signed or unsigned header checksums; octal or GNU
  base-256 numeric fields (negative base-256 only makes sense for mtime). The ustar prefix
  field is joined to the name for ustar headers, the shorter star prefix for star headers,
  and for GNU headers only when their atime/ctime fields do not parse as numbers (files
  written by Go before 1.8, as Go's reader accepts them);
* PAX ``x`` records for the next member: ``path``, ``linkpath``, ``size``, ``uid``, ``gid``,
  ``mtime`` (exact nanoseconds), ``SCHILY.xattr.*``; numbers as Go's ``strconv.ParseInt``
  reads them (leading zeros and a ``+`` sign are fine); an empty value keeps the header's
  own field. Of several consecutive ``x`` headers only the last one counts. ``g`` (global)
  headers are checked and then ignored, as containerd and moby ignore them.
  ``LIBARCHIVE.xattr.*`` records are ignored too (containerd applies only ``SCHILY.xattr.*``);
* GNU ``L``/``K`` long names and links (a long name wins over a PAX ``path``, as in Go);
* GNU sparse members: old-style ``S`` headers and PAX formats 0.0, 0.1 and 1.0 (a PAX
  member of an unknown sparse version is a plain file, as in Go). Their data comes out as
  the stored segments of a ``SparseData``; the holes are never materialised here.

Types that carry no data by POSIX ('1'..'6') never consume data blocks, whatever their size
field says (as in Go). Typeflags that containerd cannot apply ('7', GNU 'D', 'M', 'V', ...)
are refused; only GNU 'S' sparse members, which GNU tar writes for ``--sparse``, are kept.
The end-of-archive marker is optional, as in Go: the archive also ends at a clean end of
stream, even after extension headers that no member followed.
"""

from __future__ import annotations

import abc
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

from converter.errors import LayerError
from converter.layers.filedata import FileData
from converter.layers.model import EntryKind, TarEntry, shorten_name

__all__ = ["BLOCK_SIZE", "ByteSource", "TarReader", "parse_pax_records"]

BLOCK_SIZE = 512
_ZERO_BLOCK = bytes(BLOCK_SIZE)
# An EROFS image starts with 1024 zero bytes (room for a boot sector), then its superblock's magic,
# EROFS_SUPER_MAGIC_V1 (fs/erofs/erofs_fs.h): the zeros read as a tar end-of-archive marker.
_EROFS_MAGIC = (0xE0F5E1E2).to_bytes(4, "little")
# How far past an end-of-archive marker at the very start we look for data that makes it no tar.
_EMPTY_CHECK = 64 << 10
_READ_SIZE = 1 << 20  # refill size: one large read amortises decompressor/pipe call overhead
_DIRECT_READ = 1 << 16  # file data requests at least this big bypass our buffer (no extra copy)

_OCTAL = b"01234567"
_DECIMAL = b"0123456789"
_HIGH_BYTES = bytes(range(0x80, 0x100))

_REG_TYPES = frozenset(b"0\0")
_KIND_BY_TYPE = {
    ord("1"): EntryKind.HARDLINK,
    ord("2"): EntryKind.SYMLINK,
    ord("3"): EntryKind.CHR,
    ord("4"): EntryKind.BLK,
    ord("5"): EntryKind.DIR,
    ord("6"): EntryKind.FIFO,
}
_PAX_ENTRY = ord("x")
_PAX_GLOBAL = ord("g")
_GNU_LONGNAME = ord("L")
_GNU_LONGLINK = ord("K")
_GNU_SPARSE = ord("S")

_SCHILY_XATTR = b"SCHILY.xattr."
_SPARSE_PREFIX = b"GNU.sparse."
_SPARSE_OFFSET = b"GNU.sparse.offset"
_SPARSE_NUMBYTES = b"GNU.sparse.numbytes"

# A sparse map costs 16+ bytes of input per segment but ~100 bytes of Python objects; cap it so
# a hostile map cannot exhaust memory. Real container files have a handful of segments.
_MAX_SPARSE_SEGMENTS = 1 << 18
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

_Lookup = Callable[[bytes], "bytes | None"]  # keyword -> effective PAX value (None if unset)


class ByteSource(Protocol):
    """Anything with ``read(n) -> bytes`` (files, pipes, decompressors, HTTP bodies).

    ``readinto`` is used when present, to skip data without allocating.
    """

    def read(self, size: int = -1, /) -> bytes: ...


class _Truncated(Exception):
    """The stream ended inside a header or member data (converted to LayerError by callers)."""


class _Malformed(Exception):
    """A header or PAX record is invalid (converted to LayerError naming layer and entry)."""


def parse_pax_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PAX extended header into ``(keyword, value)`` pairs, strictly and in linear time.

    Each record is ``"LEN keyword=value\\n"`` where LEN counts the whole record in decimal. The
    length field is looked for in a bounded window, so a run of digits without a space (the
    CVE-2024-6232 payload) fails at once instead of being rescanned. Trailing NUL padding,
    which a few writers add, is accepted; anything else that is not a record is an error.
    """
    records: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            if data.count(0, pos) == end - pos:
                break
            raise _Malformed("PAX header has data after NUL padding")
        space = data.find(b" ", pos, min(end, pos + 21))
        digits = data[pos:space]
        if space < 0 or not digits or digits.translate(None, _DECIMAL):
            raise _Malformed(f"PAX record at offset {pos} does not start with a decimal length")
        length = int(digits)
        rec_end = pos + length
        if length <= space - pos + 1 or rec_end > end:
            raise _Malformed(f"PAX record at offset {pos} has invalid length {length}")
        if data[rec_end - 1] != 0x0A:
            raise _Malformed(f"PAX record at offset {pos} does not end with a newline")
        eq = data.find(b"=", space + 1, rec_end - 1)
        key = data[space + 1 : eq]
        if eq < 0 or not key or 0 in key or 0x0A in key:
            raise _Malformed(f"PAX record at offset {pos} has no valid keyword")
        records.append((key, data[eq + 1 : rec_end - 1]))
        pos = rec_end
    return records


def _cstr(field: bytes) -> bytes:
    """A NUL-terminated header string (the whole field if it has no NUL)."""
    nul = field.find(0)
    return field if nul < 0 else field[:nul]


def _number(field: bytes, what: str) -> int:
    """Decode a numeric header field: octal text, or GNU base-256 when the top bit is set."""
    first = field[0]
    if first & 0x80:
        # Base-256: the remaining 8*len-1 bits are a two's complement number; 0x80 marks a
        # positive value and 0xff a negative one (GNU tar writes negative mtimes this way).
        value = int.from_bytes(bytes((first & 0x7F,)) + field[1:], "big")
        if first & 0x40:
            value -= 1 << (8 * len(field) - 1)
        if not _INT64_MIN <= value <= _INT64_MAX:  # Go's parseBase256 refuses it too
            raise _Malformed(f"{what} field {value} is out of range")
        return value
    # Writers pad the digits with NULs or spaces; a few put junk after a terminating NUL.
    text = field.strip(b" \0")
    if text.translate(None, _OCTAL):
        text = _cstr(field).strip(b" ")
        if text.translate(None, _OCTAL):
            raise _Malformed(f"invalid {what} field {field!r}")
    return int(text, 8) if text else 0


_NUMERIC_FIELDS = struct.Struct("8s8s8s12s12s")  # mode, uid, gid, size, mtime at offset 100
_PLAIN_OCTAL = b"01234567 \0"


def _header_numbers(block: bytes) -> tuple[int, int, int, int, int]:
    """(mode, uid, gid, size, mtime) from a header, with a fast path for plain octal fields."""
    mode, uid, gid, size, mtime = _NUMERIC_FIELDS.unpack_from(block, 100)
    if not block[100:148].translate(None, _PLAIN_OCTAL):
        try:
            return (
                int(mode.strip(b" \0") or b"0", 8),
                int(uid.strip(b" \0") or b"0", 8),
                int(gid.strip(b" \0") or b"0", 8),
                int(size.strip(b" \0") or b"0", 8),
                int(mtime.strip(b" \0") or b"0", 8),
            )
        except ValueError:
            pass  # e.g. a NUL between digits: let _number apply the careful rules
    return (
        _number(mode, "mode"),
        _number(uid, "uid"),
        _number(gid, "gid"),
        _number(size, "size"),
        _number(mtime, "mtime"),
    )


def _unsigned(field: bytes, what: str) -> int:
    value = _number(field, what)
    if value < 0:
        raise _Malformed(f"negative {what} {value}")
    return value


def _byte_sum(block: bytes) -> int:
    """Sum of the 512 bytes of a block, five times faster than ``sum(block)``.

    Adler-32 started at 0 keeps the plain byte sum modulo 65521 in its low half; each
    256-byte half sums to at most 65280, so the two halves are exact.
    """
    return (zlib.adler32(block[:256], 0) & 0xFFFF) + (zlib.adler32(block[256:], 0) & 0xFFFF)


def _checksum_ok(block: bytes) -> bool:
    """Check the header checksum, accepting the signed-char sum some old tars wrote."""
    field = block[148:156]
    try:
        expected = _number(field, "checksum")
    except _Malformed:
        return False
    # The checksum field itself counts as eight spaces (8 * 0x20 = 256).
    unsigned = _byte_sum(block) - sum(field) + 256
    if expected == unsigned:
        return True
    rest = block[:148] + block[156:]
    high = len(rest) - len(rest.translate(None, _HIGH_BYTES))
    return expected == unsigned - 256 * high


def _parse_int(value: bytes) -> int | None:
    """Go's ``strconv.ParseInt(value, 10, 64)``: an optional sign, then decimal digits (any
    number of leading zeros), within int64; None if it would fail."""
    digits = value[1:] if value[:1] in (b"+", b"-") else value
    if not digits or digits.translate(None, _DECIMAL):
        return None
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > 19:
        return None
    number = -int(digits) if value[:1] == b"-" else int(digits)
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _pax_uint(value: bytes, key: str) -> int:
    number = _parse_int(value)
    if number is None:
        raise _Malformed(f"invalid PAX {key} {value[:40]!r}")
    if number < 0:
        raise _Malformed(f"negative PAX {key} {value[:40]!r}")
    return number


def _pax_time(value: bytes) -> tuple[int, int]:
    """Decode a PAX time ``[-]SECONDS[.FRACTION]`` exactly into (seconds, nanoseconds).

    The result is floor-normalised like a ``struct timespec``: "-1.25" is (-2, 750000000).
    Fractions of any length are read to the nanosecond (digits past the ninth are cut off, as
    Go does), so no float ever touches the value.
    """
    whole, _, frac = value.partition(b".")
    seconds = _parse_int(whole)
    if seconds is None or frac.translate(None, _DECIMAL):
        raise _Malformed(f"invalid PAX mtime {value[:40]!r}")
    # Go's parsePAXTime: digits past the ninth are cut off, and a negative time subtracts
    # its fraction (time.Unix(secs, -nsecs)).
    nanos = int(frac[:9].ljust(9, b"0"))
    total = seconds * 1_000_000_000 + (-nanos if whole.startswith(b"-") else nanos)
    return divmod(total, 1_000_000_000)


def _decimal_list(values: list[bytes], what: str) -> list[int]:
    out = []
    for v in values:
        if not v or len(v) > 20 or v.translate(None, _DECIMAL):
            raise _Malformed(f"invalid number {v[:40]!r} in {what}")
        out.append(int(v))
    return out


def _pairs(numbers: list[int], what: str) -> list[tuple[int, int]]:
    if len(numbers) % 2:
        raise _Malformed(f"{what} has an odd number of values")
    if len(numbers) // 2 > _MAX_SPARSE_SEGMENTS:
        raise _Malformed(f"{what} has more than {_MAX_SPARSE_SEGMENTS} segments")
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def _check_sparse_map(segments: list[tuple[int, int]], realsize: int) -> int:
    """Validate a sparse map (sorted, disjoint, inside the file); return its stored byte count."""
    end = stored = 0
    for offset, length in segments:
        if offset < 0 or length < 0 or offset < end:
            raise _Malformed("sparse map entries are negative, overlapping or out of order")
        end = offset + length
        if end > realsize:
            raise _Malformed(f"sparse map reaches byte {end} of a {realsize}-byte file")
        stored += length
    return stored


class _Source:
    """Forward-only buffered view of the raw stream; counts what the parser has consumed.

    Headers and small files are served from a large read-ahead buffer; big file reads go to
    the stream directly so their bytes are not copied through the buffer.
    """

    __slots__ = ("_buf", "_pos", "_raw", "_readinto", "_scratch", "_total")

    def __init__(self, raw: ByteSource) -> None:
        self._raw = raw
        self._readinto = getattr(raw, "readinto", None)
        self._buf = b""
        self._pos = 0
        self._total = 0  # bytes taken from the raw stream so far
        self._scratch: memoryview | None = None

    @property
    def consumed(self) -> int:
        return self._total - (len(self._buf) - self._pos)

    def _fill(self, need: int) -> int:
        """Buffer at least ``need`` bytes if the stream has them; return how many are buffered."""
        avail = len(self._buf) - self._pos
        parts = [self._buf[self._pos :]] if avail else []
        while avail < need:
            chunk = self._raw.read(max(_READ_SIZE, need - avail))
            if not chunk:
                break
            self._total += len(chunk)
            parts.append(chunk)
            avail += len(chunk)
        self._buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos = 0
        return avail

    def read_block(self) -> bytes | None:
        """The next 512-byte block, or None at a clean end of stream."""
        pos = self._pos
        if len(self._buf) - pos < BLOCK_SIZE:
            avail = self._fill(BLOCK_SIZE)
            if avail == 0:
                return None
            if avail < BLOCK_SIZE:
                raise _Truncated
            pos = 0
        self._pos = pos + BLOCK_SIZE
        return self._buf[pos : pos + BLOCK_SIZE]

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes ahead, without consuming them (fewer at the end of the stream)."""
        if len(self._buf) - self._pos < n:
            self._fill(n)
        return self._buf[self._pos : self._pos + n]

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes (used for extended headers, whose size is capped)."""
        if len(self._buf) - self._pos < n and self._fill(n) < n:
            raise _Truncated
        pos = self._pos
        self._pos = pos + n
        return self._buf[pos : pos + n]

    def read_some(self, n: int) -> bytes:
        """Between 1 and ``n`` bytes of member data."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if not avail:
            if n >= _DIRECT_READ:
                chunk = self._raw.read(n)
                if not chunk:
                    raise _Truncated
                self._total += len(chunk)
                return chunk
            if not self._fill(1):
                raise _Truncated
            buf, pos, avail = self._buf, 0, len(self._buf)
        if n >= avail:
            self._buf, self._pos = b"", 0
            return buf if pos == 0 else buf[pos:]
        self._pos = pos + n
        return buf[pos : pos + n]

    def skip(self, n: int) -> None:
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            return
        n -= avail
        self._buf, self._pos = b"", 0
        if n < _READ_SIZE:
            if self._fill(n) < n:
                raise _Truncated
            self._pos = n
            return
        while n > 0:
            got = self._discard(n)
            if not got:
                raise _Truncated
            n -= got

    def drain(self) -> None:
        """Read the stream to its end, so decompressors verify trailers and hashes see it all."""
        self._buf, self._pos = b"", 0
        while self._discard(_READ_SIZE):
            pass

    def _discard(self, n: int) -> int:
        """Read and drop up to ``n`` bytes, into one reused buffer when the stream allows."""
        got: int | None = None
        if self._readinto is not None:
            if self._scratch is None:
                self._scratch = memoryview(bytearray(_READ_SIZE))
            try:
                got = self._readinto(self._scratch[: min(n, _READ_SIZE)]) or 0
            except (NotImplementedError, io.UnsupportedOperation):
                # ByteSource does not promise readinto; a RawIOBase with only read() raises here.
                self._readinto = None
        if got is None:
            got = len(self._raw.read(min(n, _READ_SIZE)))
        self._total += got
        return got


class _MemberData(abc.ABC):
    """Common lifecycle of the FileData handed out for one member."""

    __slots__ = ("_closed", "_entry", "_layer", "_src", "size")

    def __init__(self, src: _Source, size: int, layer: str, entry: bytes) -> None:
        self._src = src
        self._layer = layer
        self._entry = entry
        self._closed = False
        self.size = size

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"file data of {_display_name(self._entry)!r} read after the tar reader advanced")

    def _truncated(self) -> LayerError:
        return LayerError("unexpected end of archive", layer=self._layer, entry=_display_name(self._entry))

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left if ``n`` < 0); short only at the end of the file."""
        self._check_open()
        parts = []
        want = n if n >= 0 else self.size
        while want > 0:
            piece = self._next_piece(want)
            if not piece:
                break
            parts.append(piece)
            want -= len(piece)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The rest of the contents in pieces of at most ``size`` bytes."""
        while True:
            self._check_open()  # each time: a generator may outlive its member
            piece = self._next_piece(size)
            if not piece:
                return
            yield piece

    @abc.abstractmethod
    def _next_piece(self, limit: int) -> bytes:
        """At most ``limit`` bytes from the current position; empty at the end of the file."""

    @abc.abstractmethod
    def _finish(self) -> None:
        """Skip what the consumer left unread, plus block padding; later reads fail."""


class _PlainData(_MemberData):
    """Contents of an ordinary regular file: the next ``size`` bytes of the stream."""

    __slots__ = ("_remaining",)

    def __init__(self, src: _Source, size: int, layer: str, entry: bytes) -> None:
        super().__init__(src, size, layer, entry)
        self._remaining = size

    @property
    def remaining(self) -> int:
        return self._remaining

    def _next_piece(self, limit: int) -> bytes:
        n = min(limit, self._remaining)
        if n <= 0:
            return b""
        try:
            piece = self._src.read_some(n)
        except _Truncated:
            raise self._truncated() from None
        self._remaining -= len(piece)
        return piece

    def _finish(self) -> None:
        self._closed = True
        try:
            self._src.skip(self._remaining + (-self.size % BLOCK_SIZE))
        except _Truncated:
            raise self._truncated() from None
        self._remaining = 0


class _SparseData(_MemberData):
    """Contents of a sparse member: stored segments, with the holes between them as zeros when
    read (``read``/``chunks``), or only the stored segments (``extents``, a ``SparseFileData``)."""

    __slots__ = ("_index", "_pad", "_pos", "_segments", "_stored", "_stored_left")

    def __init__(
        self,
        src: _Source,
        size: int,
        segments: list[tuple[int, int]],
        stored: int,
        pad: int,
        layer: str,
        entry: bytes,
    ) -> None:
        super().__init__(src, size, layer, entry)
        self._segments = segments
        self._index = 0
        self._pos = 0
        self._stored = self._stored_left = stored
        self._pad = pad

    @property
    def remaining(self) -> int:
        return self.size - self._pos

    @property
    def segments(self) -> list[tuple[int, int]]:
        return list(self._segments)

    @property
    def stored_size(self) -> int:
        return self._stored

    def extents(self, size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        """The stored bytes from the current position on, as (offset, piece); holes skipped."""
        segments = self._segments
        while True:
            self._check_open()
            pos = self._pos
            while self._index < len(segments) and sum(segments[self._index]) <= pos:
                self._index += 1
            if self._index >= len(segments):
                self._pos = self.size
                return
            offset, length = segments[self._index]
            pos = self._pos = max(pos, offset)
            try:
                piece = self._src.read_some(min(size, offset + length - pos))
            except _Truncated:
                raise self._truncated() from None
            self._stored_left -= len(piece)
            self._pos += len(piece)
            yield pos, piece

    def _next_piece(self, limit: int) -> bytes:
        pos, segments = self._pos, self._segments
        if pos >= self.size or limit <= 0:
            return b""
        while self._index < len(segments) and sum(segments[self._index]) <= pos:
            self._index += 1
        if self._index < len(segments):
            offset, length = segments[self._index]
            if pos >= offset:
                try:
                    piece = self._src.read_some(min(limit, offset + length - pos))
                except _Truncated:
                    raise self._truncated() from None
                self._stored_left -= len(piece)
                self._pos += len(piece)
                return piece
            hole = offset - pos
        else:
            hole = self.size - pos
        n = min(limit, hole)
        self._pos += n
        return bytes(n)

    def _finish(self) -> None:
        self._closed = True
        try:
            self._src.skip(self._stored_left + self._pad)
        except _Truncated:
            raise self._truncated() from None
        self._stored_left = 0


class _Pending:
    """Extensions ('x' records, GNU long name/link) waiting for the member they describe."""

    __slots__ = ("longlink", "longname", "pax", "size", "sparse_pairs")

    def __init__(self) -> None:
        self.pax: dict[bytes, bytes] | None = None
        self.sparse_pairs: list[bytes] = []  # PAX sparse 0.0 repeats offset/numbytes keys
        self.longname: bytes | None = None
        self.longlink: bytes | None = None
        self.size = 0

    def active(self) -> bool:
        return self.pax is not None or self.longname is not None or self.longlink is not None


class TarReader:
    """Iterate over the members of a tar stream as ``(TarEntry, FileData | None)``.

    ``FileData`` is given for regular files only. It must be consumed before advancing the
    iterator; whatever is left unread is skipped when the iterator advances, after which the
    old ``FileData`` refuses reads. Malformed or truncated input raises :class:`LayerError`
    naming ``layer`` and the member.

    ``max_entries`` caps the number of members yielded; ``max_pax_size`` caps one extended
    header (PAX record block or GNU long name), the pending extensions of one member, and the
    accumulated global PAX records. After the end-of-archive marker the rest of the stream is
    read and discarded (``drain=True``) so that a decompressor underneath checks its trailer
    and a hashing reader sees the whole blob. The stream is read ahead in large chunks, so
    with ``drain=False`` its position afterwards is somewhere past the end marker.
    """

    def __init__(
        self,
        stream: ByteSource,
        *,
        layer: str = "",
        max_entries: int | None = None,
        max_pax_size: int = 1 << 20,
        drain: bool = True,
    ) -> None:
        self._src = _Source(stream)
        self._layer = layer
        self._max_entries = max_entries
        self._max_pax_size = max_pax_size
        self._drain = drain
        self._started = False
        # The raw name of the member being parsed, made a display name only for an error message;
        # until its name is known (b""), the name field of the header block being parsed.
        self._member = b""
        self._header: bytes | None = None

    @property
    def bytes_consumed(self) -> int:
        """Raw tar bytes consumed so far (read-ahead not yet parsed is not counted)."""
        return self._src.consumed

    def __iter__(self) -> Iterator[tuple[TarEntry, FileData | None]]:
        if self._started:
            raise RuntimeError("a TarReader can be iterated only once")
        self._started = True
        return self._members()

    def _error(self, message: str) -> LayerError:
        member = self._member
        if not member and self._header is not None:
            member = _cstr(self._header[:100])
        return LayerError(message, layer=self._layer, entry=_display_name(member))

    def _members(self) -> Iterator[tuple[TarEntry, FileData | None]]:
        count = 0
        seen = False  # any header read: an archive that starts with its end marker is suspect
        pending = _Pending()
        while True:
            try:
                item = self._next_member(pending)
            except _Truncated:
                raise self._error("unexpected end of archive") from None
            except _Malformed as exc:
                raise self._error(str(exc)) from None
            if item is None:
                if not seen:
                    self._check_empty()
                break
            seen = True
            entry, data = item
            if pending.size or pending.pax is not None or pending.longname is not None or pending.longlink is not None:
                pending = _Pending()  # used up (most members have no extensions: keep the empty one)
            if entry is None:
                continue
            count += 1
            if self._max_entries is not None and count > self._max_entries:
                raise self._error(f"too many entries: the limit is {self._max_entries}")
            yield entry, data
            if data is not None:
                data._finish()
        if self._drain:
            self._src.drain()

    def _check_empty(self) -> None:
        """Refuse input that starts with an end-of-archive marker but is followed by data: an
        EROFS image (1024 zero bytes, then a superblock) or another non-tar would otherwise read
        as an empty layer. Only zeros (record padding) may follow the marker of an empty tar."""
        ahead = self._src.peek(_EMPTY_CHECK)
        if ahead[:4] == _EROFS_MAGIC:
            raise self._error("not a tar archive: this is an EROFS image (its superblock follows the "
                              "1024 zero bytes that read as a tar end-of-archive marker)")
        if ahead.count(0) != len(ahead):
            raise self._error("not a tar archive: it starts with an end-of-archive marker (two zero "
                              "blocks) followed by data")

    def _next_member(self, pending: _Pending) -> tuple[TarEntry | None, _MemberData | None] | None:
        """Read headers up to and including the next member; None at the end of the archive.

        Returns ``(None, None)`` for a member that is skipped (an unknown typeflag).
        """
        src = self._src
        while True:
            self._member = b""
            self._header = None
            block = src.read_block()
            if block is None:
                return None  # a clean end of stream ends the archive (pending extensions too), as in Go
            if block == _ZERO_BLOCK:
                # End of archive is two zero blocks; a lone one followed by a header would
                # silently hide the rest of the layer, so it is an error (as in Go's reader).
                following = src.read_block()
                if following is not None and following != _ZERO_BLOCK:
                    raise _Malformed("a lone zero block is followed by more headers")
                return None
            self._header = block
            if not _checksum_ok(block):
                raise _Malformed("invalid header checksum (not a tar archive or corrupt)")
            typeflag = block[156]
            if typeflag in (_PAX_ENTRY, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                self._read_extension(block, typeflag, pending)
                continue
            return self._build_member(block, typeflag, pending)

    def _read_extension(self, block: bytes, typeflag: int, pending: _Pending) -> None:
        size = _unsigned(block[124:136], "size")
        if typeflag != _PAX_GLOBAL:
            pending.size += size  # a global header only has to fit the limit on its own
        if size > self._max_pax_size or pending.size > self._max_pax_size:
            raise _Malformed(f"extended header data exceeds the limit of {self._max_pax_size} bytes")
        data = self._src.read_exact(size)
        self._src.skip(-size % BLOCK_SIZE)
        if typeflag == _GNU_LONGNAME:
            pending.longname = _cstr(data)
        elif typeflag == _GNU_LONGLINK:
            pending.longlink = _cstr(data)
        elif typeflag == _PAX_ENTRY:
            # Go's reader keeps only the last of several 'x' headers before one member.
            pending.pax, pending.sparse_pairs = {}, []
            for key, value in parse_pax_records(data):
                if key in (_SPARSE_OFFSET, _SPARSE_NUMBYTES):
                    pending.sparse_pairs.append(key)
                    pending.sparse_pairs.append(value)
                else:
                    pending.pax[key] = value
        else:
            # Global headers: checked, then ignored, as containerd and moby ignore them (Go's
            # reader hands them out as members of their own and applies them to nothing).
            parse_pax_records(data)

    @staticmethod
    def _effective_pax(pending: _Pending) -> dict[bytes, bytes] | None:
        """The member's own records, without the empty ones (an empty value keeps the header's
        field, as in Go's mergePAX), except for xattrs, where GNU tar, libarchive and Go all
        write an empty xattr that way (overlayfs uses them); None when there are none."""
        pax = pending.pax
        if pax is None:
            return None
        return {key: value for key, value in pax.items() if value or key.startswith(_SCHILY_XATTR)}

    def _build_member(
        self, block: bytes, typeflag: int, pending: _Pending
    ) -> tuple[TarEntry | None, _MemberData | None]:
        mode, uid, gid, data_size, mtime_sec = _header_numbers(block)
        mtime_nsec = 0
        # Go's order: the header's name (with its prefix), then a PAX path, then a GNU long name;
        # a PAX sparse member's GNU.sparse.name is applied in _pax_sparse.
        if pending.pax is None:
            pax = None
            get: _Lookup = _no_records
            name = pending.longname or _header_name(block)
        else:
            pax = self._effective_pax(pending)
            assert pax is not None
            get = pax.get
            name = pending.longname or get(b"path") or _header_name(block)
        if 0 in name:
            raise _Malformed("member name contains a NUL byte")
        self._member = name

        if pax is not None:
            if (value := pax.get(b"size")) is not None:
                data_size = _pax_uint(value, "size")
            if (value := pax.get(b"uid")) is not None:
                uid = _pax_uint(value, "uid")
            if (value := pax.get(b"gid")) is not None:
                gid = _pax_uint(value, "gid")
            if (value := pax.get(b"mtime")) is not None:
                mtime_sec, mtime_nsec = _pax_time(value)
        if mode < 0:
            raise _Malformed("negative mode")
        if uid < 0 or gid < 0:
            raise _Malformed("negative uid or gid")

        if typeflag in _REG_TYPES or typeflag == _GNU_SPARSE:
            kind = EntryKind.REG
            if typeflag == 0 and name.endswith(b"/"):
                kind = EntryKind.DIR  # pre-POSIX archives mark directories by a trailing slash
        elif typeflag in _KIND_BY_TYPE:
            kind = _KIND_BY_TYPE[typeflag]
        else:
            # GNU 'V' volume label, 'D' dump dir, 'M' continuation, '7' contiguous file...:
            # containerd and moby refuse to apply them ("unhandled tar header type").
            raise _Malformed(f"unsupported typeflag {bytes((typeflag,))!r}")

        entry = TarEntry(
            name=name,
            kind=kind,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            mtime_sec=mtime_sec,
            mtime_nsec=mtime_nsec,
        )
        if pax is not None:
            entry.xattrs = _xattrs(pax)

        if kind is EntryKind.HARDLINK or kind is EntryKind.SYMLINK:
            # Go's order: the header's field, then a PAX linkpath, then a GNU long link.
            linkpath = get(b"linkpath")
            if linkpath is not None and 0 in linkpath:
                raise _Malformed("PAX linkpath contains a NUL byte")
            entry.linkname = pending.longlink or linkpath or _cstr(block[157:257])
        elif (kind is EntryKind.CHR or kind is EntryKind.BLK) and block[257:262] == b"ustar":
            # v7 headers have no device fields (Go reads them as 0)
            entry.devmajor = _unsigned(block[329:337], "devmajor")
            entry.devminor = _unsigned(block[337:345], "devminor")
        if kind is not EntryKind.REG:
            return entry, None  # header-only types: no data blocks follow (see module docstring)

        if data_size < 0:
            raise _Malformed(f"negative size {data_size}")
        if typeflag == _GNU_SPARSE:
            data: _MemberData = self._old_gnu_sparse(block, entry, data_size)
        elif pending.pax is not None and (
            pending.sparse_pairs or any(key.startswith(_SPARSE_PREFIX) for key in pending.pax)
        ):
            data = self._pax_sparse(get, pending.sparse_pairs, entry, data_size)
        else:
            entry.size = data_size
            data = _PlainData(self._src, data_size, self._layer, self._member)
        return entry, data

    def _old_gnu_sparse(self, block: bytes, entry: TarEntry, data_size: int) -> _SparseData:
        """GNU 'S' member: 4 map entries in the header, more in 512-byte extension blocks."""
        segments = _old_sparse_entries(block[386:482], 4)
        extended = block[482]
        while extended:
            ext = self._src.read_block()
            if ext is None:
                raise _Truncated
            segments += _old_sparse_entries(ext[:504], 21)
            if len(segments) > _MAX_SPARSE_SEGMENTS:
                raise _Malformed(f"sparse map has more than {_MAX_SPARSE_SEGMENTS} segments")
            extended = ext[504]
        realsize = _unsigned(block[483:495], "sparse real size")
        return self._sparse_data(entry, segments, realsize, data_size, data_size)

    def _pax_sparse(
        self,
        lookup: _Lookup,
        pairs_00: list[bytes],
        entry: TarEntry,
        data_size: int,
    ) -> _MemberData:
        """PAX sparse formats 0.0, 0.1 and 1.0 (GNU tar manual, "Storing Sparse Files"), told
        apart as Go's reader does: by GNU.sparse.major/minor, else by the presence of a map."""
        major = lookup(b"GNU.sparse.major")
        minor = lookup(b"GNU.sparse.minor")
        # Compared field by field: mypyc (scripts/build_native.py) compiled `(major, minor) in
        # ((b"1", b"0"), ...)` into C that released references it had not taken (a segfault).
        v10 = major == b"1" and minor == b"0"
        known = v10 or (major == b"0" and minor in (b"0", b"1"))
        sparse_map = lookup(b"GNU.sparse.map")
        if not known and (
            major is not None or minor is not None or (sparse_map is None and not pairs_00)
        ):
            # An unknown sparse version, or only unrelated GNU.sparse.* keywords (e.g.
            # GNU.sparse.name): Go's reader sees no sparse file, just a plain one.
            entry.size = data_size
            return _PlainData(self._src, data_size, self._layer, self._member)
        self._sparse_name(lookup, entry)
        realsize = lookup(b"GNU.sparse.size") or lookup(b"GNU.sparse.realsize")
        if realsize is None:
            raise _Malformed("GNU sparse member without GNU.sparse.size or GNU.sparse.realsize")
        size = _pax_uint(realsize, "GNU.sparse.size")
        if v10:
            numbers, map_size = self._read_sparse_map_10(data_size)
            segments = _pairs(numbers, "sparse map")
            return self._sparse_data(entry, segments, size, data_size - map_size, data_size)
        if sparse_map is not None:  # 0.1: "offset,size,offset,size,..."
            segments = _pairs(_decimal_list(sparse_map.split(b","), "GNU.sparse.map"), "GNU.sparse.map")
        else:  # 0.0: repeated GNU.sparse.offset / GNU.sparse.numbytes records, in order
            keys, values = pairs_00[0::2], pairs_00[1::2]
            if keys != [_SPARSE_OFFSET, _SPARSE_NUMBYTES] * (len(keys) // 2) or len(keys) % 2:
                raise _Malformed("GNU.sparse.offset and GNU.sparse.numbytes do not alternate")
            segments = _pairs(_decimal_list(values, "GNU sparse 0.0 map"), "GNU sparse 0.0 map")
        numblocks = lookup(b"GNU.sparse.numblocks")
        if numblocks is None:
            raise _Malformed("GNU sparse 0.x member without GNU.sparse.numblocks")
        if _pax_uint(numblocks, "GNU.sparse.numblocks") != len(segments):
            raise _Malformed("GNU.sparse.numblocks does not match the sparse map")
        return self._sparse_data(entry, segments, size, data_size, data_size)

    def _sparse_name(self, lookup: _Lookup, entry: TarEntry) -> None:
        """GNU.sparse.name renames a PAX sparse member (it wins over path and long names)."""
        name = lookup(b"GNU.sparse.name")
        if name:
            if 0 in name:
                raise _Malformed("GNU.sparse.name contains a NUL byte")
            entry.name = name
            self._member = name

    def _read_sparse_map_10(self, data_size: int) -> tuple[list[int], int]:
        """Read the 1.0 map at the start of the member data: newline-terminated decimals
        (count, then offset/size pairs), padded to a whole block. Returns numbers and bytes used.
        """
        buf = bytearray()
        newlines = 0
        needed: int | None = None
        while needed is None or newlines < needed:
            if len(buf) + BLOCK_SIZE > min(data_size, self._max_pax_size):
                raise _Malformed("GNU sparse 1.0 map is too large or runs past the member data")
            block = self._src.read_exact(BLOCK_SIZE)
            buf += block
            newlines += block.count(b"\n")
            if needed is None and newlines:
                count = _decimal_list([bytes(buf[: buf.index(b"\n")])], "GNU sparse 1.0 map")[0]
                if count > _MAX_SPARSE_SEGMENTS:
                    raise _Malformed(f"sparse map has more than {_MAX_SPARSE_SEGMENTS} segments")
                needed = 1 + 2 * count
        tokens = bytes(buf).split(b"\n", needed)[:needed]
        return _decimal_list(tokens[1:], "GNU sparse 1.0 map"), len(buf)

    def _sparse_data(
        self,
        entry: TarEntry,
        segments: list[tuple[int, int]],
        realsize: int,
        stored: int,
        data_size: int,
    ) -> _SparseData:
        if _check_sparse_map(segments, realsize) != stored:
            raise _Malformed(f"sparse map does not match the {stored} bytes stored for the member")
        entry.size = realsize
        return _SparseData(
            self._src,
            realsize,
            segments,
            stored,
            -data_size % BLOCK_SIZE,
            self._layer,
            self._member,
        )


def _display_name(name: bytes) -> str:
    """A member's name as error messages show it."""
    return shorten_name(name.decode("utf-8", "backslashreplace"))


def _no_records(key: bytes) -> bytes | None:
    return None


def _xattrs(pax: dict[bytes, bytes]) -> dict[str, bytes]:
    """Extended attributes from SCHILY.xattr.NAME records (raw value), the only kind containerd
    applies (``LIBARCHIVE.xattr.*`` duplicates them in bsdtar's archives); names are decoded
    UTF-8 with surrogateescape."""
    xattrs: dict[str, bytes] = {}
    for key, value in pax.items():
        if not key.startswith(_SCHILY_XATTR):
            continue
        raw_name = key[len(_SCHILY_XATTR) :]
        if not raw_name:
            raise _Malformed(f"invalid xattr name in PAX keyword {key!r}")
        xattrs[raw_name.decode("utf-8", "surrogateescape")] = value
    return xattrs


def _header_name(block: bytes) -> bytes:
    """The member name a header block holds, with its prefix where Go's reader applies one."""
    name = _cstr(block[:100])
    magic = block[257:265]
    prefix = b""
    if magic[:6] == b"ustar\0":
        # ustar/pax: a 155-byte prefix; star (trailer "tar\0"): 131 bytes, then atime/ctime
        prefix = _cstr(block[345:476] if block[508:512] == b"tar\0" else block[345:500])
    elif magic == b"ustar  \0" and not (_numeric_ok(block[345:357]) and _numeric_ok(block[357:369])):
        # GNU has atime/ctime there; Go (before 1.8) wrote a ustar prefix into GNU headers,
        # and Go's reader still takes a field that is no number as such a prefix.
        candidate = _cstr(block[345:500])
        if candidate.isascii():
            prefix = candidate
    return prefix + b"/" + name if prefix else name


def _numeric_ok(field: bytes) -> bool:
    """Whether Go's parseNumeric reads ``field`` without error (an empty field counts as 0)."""
    if field[0] == 0 or field[0] & 0x80:
        return True
    text = _cstr(field.strip(b" \0"))
    return not text.translate(None, _OCTAL)


def _old_sparse_entries(area: bytes, count: int) -> list[tuple[int, int]]:
    """Decode up to ``count`` (offset, numbytes) pairs of 12-byte fields; an empty one ends it."""
    out = []
    for i in range(count):
        offset_field = area[24 * i : 24 * i + 12]
        length_field = area[24 * i + 12 : 24 * i + 24]
        if offset_field[0] == 0 and length_field[0] == 0:
            break
        out.append((_number(offset_field, "sparse offset"), _number(length_field, "sparse size")))
    return out
