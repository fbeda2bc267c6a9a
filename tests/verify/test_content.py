"""The content comparer's fallback to fsck.erofs for what our reader does not decode."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path

from converter.erofs.reader import ErofsImage
from converter.erofs.tools import erofs_utils
from converter.erofs.zmap import ADVISE_COMPACTED_2B, header_position
from converter.errors import ErofsUnsupported
from converter.layers.model import Inode, NodeKind
from converter.verify.content import FsckReader, HashRef, TreeComparer

TEXT = b"".join(b"line %d of a compressible file\n" % i for i in range(3000))


def _image(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(TEXT)
    img = tmp_path / "img.erofs"
    subprocess.run([str(erofs_utils().mkfs), "--quiet", "-T0", "-zlz4", "-Elegacy-compress", str(img), str(src)],
                   check=True)
    return img


def _expected() -> Inode:
    f = Inode(NodeKind.REG, 0o644, size=len(TEXT), data=HashRef(len(TEXT), hashlib.sha256(TEXT).hexdigest()))
    return Inode(NodeKind.DIR, 0o755, children={b"f": f})


def test_fsck_reader_reads_a_compressed_file(tmp_path: Path) -> None:
    reader = FsckReader(_image(tmp_path))
    assert b"".join(reader(b"/f")) == TEXT and reader.used == ["/f"]


def test_unsupported_layout_goes_to_fsck_and_is_never_silent(tmp_path: Path) -> None:
    """A full-index inode marked as encoded extents (48-bit images): we refuse to decode it, fsck.erofs
    is asked; it cannot either here, so the file is reported unreadable, by path."""
    path = _image(tmp_path)
    data = bytearray(path.read_bytes())
    with ErofsImage.open(path) as img:
        raw = img._inode(img.stat("/f").nid)
        advise_at = header_position(raw.body_end) + 4
    data[advise_at] |= ADVISE_COMPACTED_2B
    bad = tmp_path / "bad.erofs"
    bad.write_bytes(data)
    with ErofsImage(io.BytesIO(bytes(data)), verify_checksum=False) as img:
        try:
            img.read_bytes("/f")
        except ErofsUnsupported as exc:
            assert "encoded extents" in str(exc)
        else:
            raise AssertionError("expected ErofsUnsupported")
        fallback = FsckReader(bad)
        diffs = list(TreeComparer(img, _expected(), fallback=fallback).differences())
    assert [(d.path, d.what) for d in diffs] == [("/f", "contents unreadable")], diffs
    assert "fsck.erofs --extract /f" in diffs[0].got


def test_fallback_result_is_compared(tmp_path: Path) -> None:
    path = _image(tmp_path)
    with ErofsImage.open(path) as img:
        assert list(TreeComparer(img, _expected(), fallback=FsckReader(path)).differences()) == []
