"""On-disk structures of converter.erofs.format, checked against the spec's worked example (§12)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter.erofs import format as fmt
from converter.errors import ErofsFormatError

T = 1_700_000_000


def test_crc32c_vector() -> None:
    # §2.3: the EROFS checksum is CRC-32C without the final XOR.
    assert fmt.crc32c_raw(b"123456789") == 0x1CF96D7C
    assert fmt.crc32c_raw(b"123456789") ^ 0xFFFFFFFF == 0xE3069283
    assert fmt.crc32c_raw(b"") == 0xFFFFFFFF


def test_crc32c_is_incremental() -> None:
    data = bytes(range(256)) * 13
    assert fmt.crc32c_raw(data[100:], fmt.crc32c_raw(data[:100])) == fmt.crc32c_raw(data)


@pytest.mark.parametrize(
    ("blkszbits", "length"), [(12, 3072), (10, 1024), (9, 512), (16, 65536 - 1024)], ids=["4k", "1k", "512", "64k"]
)
def test_checksum_length(blkszbits: int, length: int) -> None:
    assert fmt.checksum_length(blkszbits) == length


def test_struct_sizes() -> None:
    assert fmt.SUPERBLOCK.size == 128
    assert fmt.COMPACT_INODE.size == 32
    assert fmt.EXTENDED_INODE.size == 64
    assert fmt.DIRENT.size == 12
    assert fmt.XATTR_IBODY_HEADER.size == 12
    assert fmt.XATTR_ENTRY.size == 4
    assert fmt.CHUNK_INDEX.size == 8


@pytest.mark.parametrize(
    ("extended", "layout", "value"),
    [(False, fmt.LAYOUT_FLAT_PLAIN, 0x0), (False, fmt.LAYOUT_FLAT_INLINE, 0x4), (True, fmt.LAYOUT_FLAT_PLAIN, 0x1),
     (True, fmt.LAYOUT_FLAT_INLINE, 0x5), (False, fmt.LAYOUT_CHUNK_BASED, 0x8), (True, fmt.LAYOUT_CHUNK_BASED, 0x9)],
)
def test_i_format(extended: bool, layout: int, value: int) -> None:
    assert fmt.i_format(extended, layout) == value  # §4.1 table


@pytest.mark.parametrize(
    ("major", "minor", "value"), [(1, 3, 0x103), (259, 300, 0x0011032C), (0, 0, 0), (0xFFF, 0xFFFFF, 0xFFFFFFFF)]
)
def test_rdev_encoding(major: int, minor: int, value: int) -> None:
    assert fmt.encode_rdev(major, minor) == value  # §7.2
    assert fmt.decode_rdev(value) == (major, minor)


@given(st.integers(0, fmt.MAX_MAJOR), st.integers(0, fmt.MAX_MINOR))
def test_rdev_roundtrip(major: int, minor: int) -> None:
    assert fmt.decode_rdev(fmt.encode_rdev(major, minor)) == (major, minor)


@pytest.mark.parametrize(("major", "minor"), [(0x1000, 0), (0, 0x100000), (-1, 0)])
def test_rdev_out_of_range(major: int, minor: int) -> None:
    with pytest.raises(ErofsFormatError, match="device number"):
        fmt.encode_rdev(major, minor)


def test_superblock_roundtrip() -> None:
    sb = fmt.Superblock(root_nid=128, inos=5, epoch=-5, blocks=9, meta_blkaddr=3, uuid=bytes(range(16)),
                        volume_name=b"label".ljust(16, b"\0"), feature_incompat=fmt.INCOMPAT_CHUNKED_FILE,
                        xattr_prefix_count=2, xattr_prefix_start=293, packed_nid=77, checksum=0x1234)
    raw = sb.pack()
    assert len(raw) == 128
    assert raw[:4] == b"\xe2\xe1\xf5\xe0"  # §2.1 magic bytes
    assert fmt.Superblock.unpack(raw) == sb


def test_superblock_field_out_of_range() -> None:
    with pytest.raises(ErofsFormatError, match="superblock"):
        fmt.Superblock(root_nid=70000).pack()


def _worked_example_block0() -> bytearray:
    """Block 0 of §12.3 (metadata-first, mkfs-like), assembled from our pack helpers."""
    block = bytearray(fmt.BLOCK_SIZE)

    def put(off: int, data: bytes) -> None:
        block[off:off + len(data)] = data

    root = fmt.pack_dirent_block([
        (b".", 36, fmt.FT_DIR), (b"..", 36, fmt.FT_DIR), (b"big.bin", 41, fmt.FT_REG), (b"dir", 42, fmt.FT_DIR),
        (b"link", 44, fmt.FT_SYMLINK), (b"small.txt", 46, fmt.FT_REG),
    ])
    assert len(root) == 98
    put(0x480, fmt.pack_compact_inode(layout=fmt.LAYOUT_FLAT_INLINE, icount=0, mode=0o40755, nlink=3, size=98,
                                      i_u=fmt.NULL_ADDR, ino=1, uid=0, gid=0) + root)
    put(0x520, fmt.pack_compact_inode(layout=fmt.LAYOUT_FLAT_PLAIN, icount=0, mode=0o100644, nlink=1, size=10240,
                                      i_u=1, ino=2, uid=0, gid=0))
    sub = fmt.pack_dirent_block([(b".", 42, fmt.FT_DIR), (b"..", 36, fmt.FT_DIR)])
    assert len(sub) == 27
    put(0x540, fmt.pack_compact_inode(layout=fmt.LAYOUT_FLAT_INLINE, icount=0, mode=0o40755, nlink=2, size=27,
                                      i_u=fmt.NULL_ADDR, ino=3, uid=0, gid=0) + sub)
    put(0x580, fmt.pack_compact_inode(layout=fmt.LAYOUT_FLAT_INLINE, icount=0, mode=0o120777, nlink=1, size=9,
                                      i_u=fmt.NULL_ADDR, ino=4, uid=0, gid=0) + b"small.txt")
    put(0x5C0, fmt.pack_compact_inode(layout=fmt.LAYOUT_FLAT_INLINE, icount=0, mode=0o100644, nlink=1, size=6,
                                      i_u=fmt.NULL_ADDR, ino=5, uid=0, gid=0) + b"hello\n")
    fmt.seal_block0(block, fmt.Superblock(root_nid=36, inos=5, epoch=T, blocks=4))
    return block


def test_worked_example_block0_bytes() -> None:
    block = _worked_example_block0()
    # §12.3, line by line.
    assert block[0x400:0x410].hex() == "e2e1f5e0" "b5f35aba" "03000000" "0c" "00" "2400"
    assert block[0x410:0x420].hex() == "0500000000000000" "00f1536500000000"
    assert block[0x420:0x430].hex() == "00000000" "04000000" "00000000" "00000000"
    assert block[0x480:0x490].hex() == "0400" "0000" "ed41" "0300" "62000000" "00000000"
    assert block[0x490:0x4A0].hex() == "ffffffff" "01000000" "0000" "0000" "00000000"
    assert block[0x4A0:0x4AC].hex() == "2400000000000000" "4800" "02" "00"
    assert block[0x4DC:0x4E8].hex() == "2e00000000000000" "5900" "01" "00"
    assert bytes(block[0x4E8:0x502]) == b"...big.bindirlinksmall.txt"
    assert block[0x520:0x540].hex() == ("0000" "0000" "a481" "0100" "00280000" "00000000"
                                        "01000000" "02000000" + "00" * 8)
    assert block[0x560:0x57B].hex() == ("2a00000000000000" "1800" "02" "00"
                                        "2400000000000000" "1900" "02" "00" + b"...".hex())
    # §12.2 step 9: the checksum over bytes 1024..4095.
    assert fmt.U32.unpack_from(block, 0x404)[0] == 0xBA5AF3B5
    assert fmt.superblock_crc(block[1024:]) == 0xBA5AF3B5


def test_extended_inode_layout() -> None:
    raw = fmt.pack_extended_inode(layout=fmt.LAYOUT_FLAT_INLINE, icount=9, mode=0o104755, nlink=70000,
                                  size=(1 << 32) + 5, i_u=7, ino=3, uid=100000, gid=65536, mtime=-1,
                                  mtime_nsec=999_999_999)
    assert len(raw) == 64
    fields = fmt.EXTENDED_INODE.unpack(raw)
    assert fields == (0x5, 9, 0o104755, 0, (1 << 32) + 5, 7, 3, 100000, 65536, -1, 999_999_999, 70000)
    assert raw[0x08:0x10] == ((1 << 32) + 5).to_bytes(8, "little")
    assert raw[0x2C:0x30] == (70000).to_bytes(4, "little")  # §4.3 i_nlink at 0x2C
    assert raw[0x30:] == bytes(16)


def test_dirent_packing_greedy() -> None:
    # §6.3: fill while used + 12 + len <= 4096, then start a new block.
    names = [b".", b".."] + [b"n%04d" % i for i in range(400)]
    counts = fmt.dirent_block_sizes(names)
    assert sum(counts) == len(names)
    first = 12 * counts[0] + sum(len(n) for n in names[:counts[0]])
    assert first <= 4096 < first + 12 + len(names[counts[0]])
    # An exact fit stays in the block.
    exact = [b"a" * 4084]
    assert fmt.dirent_block_sizes(exact) == [1]
    assert fmt.dirent_block_sizes([b"a" * 4084, b"b"]) == [1, 1]


def test_xattr_ibody_spec_example() -> None:
    # §8.4: trusted.overlay.meta=y and user.foo=bar give 44 bytes, icount 9; sorted by full name.
    body = fmt.encode_xattr_ibody({"user.foo": b"bar", "trusted.overlay.meta": b"y"})
    assert len(body) == 44
    assert fmt.xattr_icount(len(body)) == 9
    assert fmt.xattr_ibody_size(9) == 44
    assert body[:12] == bytes(12)  # h_name_filter 0, no shared ids
    assert fmt.XATTR_ENTRY.unpack_from(body, 12) == (12, fmt.XATTR_INDEX_TRUSTED, 1)
    assert body[16:29] == b"overlay.metay"
    assert fmt.XATTR_ENTRY.unpack_from(body, 32) == (3, fmt.XATTR_INDEX_USER, 3)
    assert body[36:42] == b"foobar"


@pytest.mark.parametrize(
    ("name", "index", "suffix"),
    [("user.a", 1, b"a"), ("system.posix_acl_access", 2, b""), ("system.posix_acl_default", 3, b""),
     ("trusted.overlay.opaque", 4, b"overlay.opaque"), ("security.capability", 6, b"capability")],
)
def test_xattr_prefixes(name: str, index: int, suffix: bytes) -> None:
    assert fmt.split_xattr_name(name) == (index, suffix)


@pytest.mark.parametrize("name", ["system.foo", "os2.x", "user.", "trusted.", "system.posix_acl_access2", "lustre.x"])
def test_xattr_unstorable_names(name: str) -> None:
    with pytest.raises(ErofsFormatError, match="xattr"):
        fmt.encode_xattr_ibody({name: b"v"})


def test_xattr_limits() -> None:
    fmt.encode_xattr_ibody({"user." + "n" * 255: b"v" * 65535})
    with pytest.raises(ErofsFormatError, match="longer than 255"):
        fmt.encode_xattr_ibody({"user." + "n" * 256: b""})
    with pytest.raises(ErofsFormatError, match="exceeds 65535"):
        fmt.encode_xattr_ibody({"user.x": b"v" * 65536})
    assert fmt.encode_xattr_ibody({}) == b""


def test_xattr_empty_value_and_padding() -> None:
    body = fmt.encode_xattr_ibody({"trusted.overlay.origin": b""})
    assert len(body) == 12 + 4 + 16  # 4 + 14 name bytes padded to 20
    assert len(body) % 4 == 0
