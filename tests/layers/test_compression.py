"""open_layer_stream and HashingReader: detection, media-type checks, damaged streams, bombs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from converter.errors import LayerError, UnsupportedMediaType
from converter.layers.compression import (
    ByteSource,
    Compression,
    HashingReader,
    compression_for_media_type,
    detect_compression,
    open_layer_stream,
)
from converter.layers.tarstream import TarReader

PAYLOAD = os.urandom(200_000) + bytes(300_000) + b"end"
OCI = "application/vnd.oci.image.layer.v1.tar"


def compress(kind: Compression, data: bytes) -> bytes:
    if kind is Compression.GZIP:
        return gzip.compress(data)
    if kind is Compression.ZSTD:
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)
    return data


def read_all(blob: bytes | ByteSource, *, media_type: str | None = None, max_expanded: int | None = None) -> bytes:
    raw = io.BytesIO(blob) if isinstance(blob, bytes) else blob
    stream = open_layer_stream(raw, layer="L", media_type=media_type, max_expanded=max_expanded)
    out = bytearray()
    while chunk := stream.read(65536):
        out += chunk
    return bytes(out)


class Trickle(io.RawIOBase):
    """A non-seekable source that returns a few bytes per read, like a slow pipe."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1, /) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


KINDS = [pytest.param(kind, id=kind.value) for kind in Compression]


# --- detection and media types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        pytest.param(b"\x1f\x8b\x08\x00", Compression.GZIP, id="gzip"),
        pytest.param(b"\x28\xb5\x2f\xfd", Compression.ZSTD, id="zstd"),
        pytest.param(b"etc/", Compression.NONE, id="tar"),
        pytest.param(b"\x28\xb5\x2f", Compression.NONE, id="short-zstd-prefix"),
        pytest.param(b"", Compression.NONE, id="empty"),
    ],
)
def test_detect_compression(head: bytes, kind: Compression) -> None:
    assert detect_compression(head) is kind


@pytest.mark.parametrize(
    ("media_type", "kind"),
    [
        (OCI, Compression.NONE),
        (OCI + "+gzip", Compression.GZIP),
        (OCI + "+zstd", Compression.ZSTD),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression.GZIP),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression.GZIP),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression.GZIP),
        (OCI + "+gzip; charset=binary", Compression.GZIP),
    ],
)
def test_compression_for_media_type(media_type: str, kind: Compression) -> None:
    assert compression_for_media_type(media_type) is kind


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.oci.image.config.v1+json", "application/vnd.erofs", "text/plain", ""],
)
def test_non_tar_media_types_are_unsupported(media_type: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        open_layer_stream(io.BytesIO(gzip.compress(b"x")), media_type=media_type)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("declared", KINDS)
def test_media_type_must_agree_with_magic(kind: Compression, declared: Compression) -> None:
    media_type = OCI if declared is Compression.NONE else f"{OCI}+{declared.value}"
    blob = compress(kind, PAYLOAD)
    if kind is declared:
        assert read_all(blob, media_type=media_type) == PAYLOAD
    else:
        with pytest.raises(LayerError, match=f"promises {declared.value} but the blob is {kind.value}"):
            read_all(blob, media_type=media_type)


# --- good streams ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_a_trickling_pipe(kind: Compression) -> None:
    # Three bytes per read: the 4-byte magic peek must span reads and lose nothing.
    blob = compress(kind, PAYLOAD[:20_000])
    assert read_all(Trickle(blob)) == PAYLOAD[:20_000]


def test_empty_blob_is_an_empty_tar() -> None:
    assert read_all(b"") == b""


def test_concatenated_gzip_members() -> None:
    blob = gzip.compress(b"first ") + gzip.compress(b"") + gzip.compress(b"second")
    assert read_all(blob) == b"first second"


def test_gzip_trailing_zero_padding_is_accepted() -> None:
    # Like gzip(1) and Python's gzip module: zero padding after the last member is not data.
    assert read_all(gzip.compress(b"abc") + bytes(100)) == b"abc"


def test_multiple_zstd_frames_and_skippable_frames() -> None:
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345"
    blob = (
        zstandard.ZstdCompressor().compress(b"one ")
        + skippable
        + zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(b"two")
    )
    assert read_all(blob) == b"one two"


def test_zstd_streamed_frame_without_content_size() -> None:
    cctx = zstandard.ZstdCompressor(level=1)
    out = io.BytesIO()
    with cctx.stream_writer(out, closefd=False) as writer:
        for _ in range(40):
            writer.write(os.urandom(50_000))
    blob = out.getvalue()
    assert len(read_all(blob)) == 2_000_000


def test_real_gzip_pipe(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(PAYLOAD)
    with subprocess.Popen(["gzip", "-c", str(tmp_path / "data")], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert read_all(proc.stdout) == PAYLOAD


# --- damaged streams -------------------------------------------------------------------------


def gzip_cuts() -> list[object]:
    blob = gzip.compress(PAYLOAD)
    return [
        pytest.param(blob[:cut], id=label)
        for label, cut in [("header", 5), ("deflate", len(blob) // 2), ("crc", len(blob) - 6), ("size", len(blob) - 1)]
    ]


@pytest.mark.parametrize("blob", gzip_cuts())
def test_truncated_gzip(blob: bytes) -> None:
    with pytest.raises(LayerError, match=r"^reading layer L: truncated gzip stream$"):
        read_all(blob)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        pytest.param(
            gzip.compress(PAYLOAD) + b"garbage after the member",
            "corrupt gzip stream: Not a gzipped file",
            id="garbage",
        ),
        pytest.param(gzip.compress(PAYLOAD) + b"\x1f", "truncated gzip stream", id="one-garbage-byte"),
        pytest.param(gzip.compress(PAYLOAD)[:-8] + b"\0\0\0\0" + gzip.compress(PAYLOAD)[-4:], "CRC check", id="crc"),
        pytest.param(gzip.compress(PAYLOAD)[:-4] + b"\0\0\0\0", "corrupt gzip stream", id="length"),
        pytest.param(b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 100, "corrupt gzip stream", id="bad-deflate"),
        pytest.param(b"\x1f\x8b\x09\x00" + bytes(20), "corrupt gzip stream", id="bad-method"),
    ],
)
def test_corrupt_gzip(blob: bytes, message: str) -> None:
    with pytest.raises(LayerError, match=message) as err:
        read_all(blob)
    assert err.value.layer == "L"
    assert err.value.__cause__ is None  # one clean line, no chained library traceback


def test_flipped_gzip_byte_is_caught() -> None:
    blob = bytearray(gzip.compress(PAYLOAD))
    blob[len(blob) // 3] ^= 0x55
    with pytest.raises(LayerError, match="corrupt gzip stream"):
        read_all(bytes(blob))


def zstd_cuts() -> list[object]:
    blob = compress(Compression.ZSTD, PAYLOAD)
    two = blob + compress(Compression.ZSTD, b"second frame")
    return [
        pytest.param(data[:cut], id=label)
        for label, data, cut in [
            ("frame-header", blob, 5),
            ("first-block", blob, 40),
            ("middle", blob, len(blob) // 2),
            ("checksum", blob, len(blob) - 2),
            ("second-frame-magic", two, len(blob) + 3),
            ("second-frame-body", two, len(two) - 5),
        ]
    ]


@pytest.mark.parametrize("blob", zstd_cuts())
def test_truncated_zstd(blob: bytes) -> None:
    # python-zstandard alone reports a clean EOF here; the frame tracker must notice.
    with pytest.raises(LayerError, match=r"^reading layer L: truncated zstd stream$"):
        read_all(blob)


def test_cut_inside_the_magic_is_not_zstd() -> None:
    # Two bytes cannot be recognised as zstd; as a "tar" they are two bytes of garbage, which
    # the tar reader then rejects as a truncated header.
    assert read_all(b"\x28\xb5") == b"\x28\xb5"
    with pytest.raises(LayerError, match="unexpected end of archive"):
        list(TarReader(open_layer_stream(io.BytesIO(b"\x28\xb5"))))


@pytest.mark.parametrize(
    "suffix",
    [pytest.param(b"garbage!", id="garbage"), pytest.param(bytes(16), id="zeros")],
)
def test_zstd_trailing_data(suffix: bytes) -> None:
    with pytest.raises(LayerError, match="corrupt zstd stream"):
        read_all(compress(Compression.ZSTD, PAYLOAD) + suffix)


def test_zstd_checksum_mismatch() -> None:
    blob = bytearray(compress(Compression.ZSTD, PAYLOAD))
    blob[-1] ^= 0xFF
    with pytest.raises(LayerError, match="corrupt zstd stream"):
        read_all(bytes(blob))


def test_zstd_reserved_bits() -> None:
    blob = bytearray(compress(Compression.ZSTD, PAYLOAD))
    blob[4] |= 0x08  # reserved bit of the frame header descriptor
    with pytest.raises(LayerError, match="corrupt zstd stream"):
        read_all(bytes(blob))


# --- decompression bombs ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_max_expanded(kind: Compression) -> None:
    blob = compress(kind, bytes(64 << 20)) if kind is not Compression.NONE else bytes(8 << 20)
    start = time.perf_counter()
    with pytest.raises(LayerError, match="expands to more than the limit of 1048576 bytes"):
        read_all(blob, max_expanded=1 << 20)
    assert time.perf_counter() - start < 1.0  # it stops near the limit, not at the end


@pytest.mark.parametrize("kind", KINDS)
def test_max_expanded_exact_fit(kind: Compression) -> None:
    assert read_all(compress(kind, PAYLOAD), max_expanded=len(PAYLOAD)) == PAYLOAD


# --- hashing and the pipeline together -------------------------------------------------------


def test_hashing_reader_read_and_readinto() -> None:
    data = os.urandom(100_000)
    reader = HashingReader(io.BytesIO(data))
    first = reader.read(1000)
    buf = bytearray(5000)
    n = reader.readinto(buf)
    rest = reader.read()
    assert first + bytes(buf[:n]) + rest == data
    assert reader.bytes_read == len(data)
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
    assert reader.digest() == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_tar_reader_over_hashed_layer_covers_every_byte(kind: Compression) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(20):
            data = os.urandom(i * 1000)
            ti = tarfile.TarInfo(f"dir/f{i}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    blob = compress(kind, buf.getvalue())
    hashed = HashingReader(io.BytesIO(blob))
    entries = [
        (e.name, len(d.read()) if d else None)
        for e, d in TarReader(open_layer_stream(hashed, layer="L", media_type=None), layer="L")
    ]
    assert entries == [(f"dir/f{i}".encode(), i * 1000) for i in range(20)]
    # The reader drained the stream: gzip/zstd trailers were checked and every blob byte hashed.
    assert hashed.bytes_read == len(blob)
    assert hashed.digest() == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_truncated_compressed_tar_fails_in_the_tar_reader() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("f")
        ti.size = 100_000
        tf.addfile(ti, io.BytesIO(os.urandom(100_000)))
    blob = buf.getvalue()[:-20]
    with pytest.raises(LayerError, match="reading layer L: truncated gzip stream"):
        for _, data in TarReader(open_layer_stream(io.BytesIO(blob), layer="L"), layer="L"):
            if data:
                data.read()


def test_closing_the_layer_stream_leaves_the_source_open() -> None:
    source = io.BytesIO(gzip.compress(b"abc"))
    stream = open_layer_stream(source)
    assert stream.read() == b"abc"
    stream.close()
    assert not source.closed
