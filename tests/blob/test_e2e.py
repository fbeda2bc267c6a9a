"""+zstd, chunk-indexed and dm-verity layers through the real registry, read back by zstd,
veritysetup, fsck.erofs, the kernel (overlay compared with umoci) and skopeo."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from converter.cli import main
from tests.blob.indexcheck import check_chunks
from tests.support.compare import Entry, diff, snapshot
from tests.support.kernel import fsck, overlay, require_mount
from tests.support.registry import RegistryServer
from tests.test_image_e2e import TAG, inspect_raw, push_sample, skopeo

CASES = [
    # (id, --to, extra flags, tag suffix, zstd, index, verity)
    ("zstd", "erofs", ["--blob-compression", "zstd"], "erofs.zstd", True, True, False),
    ("zstd-lz4-one-frame", "erofs+lz4", ["--blob-compression", "zstd,level=9", "--chunk-size", "0"],
     "erofs-lz4.zstd-level-9.chunk-0", True, False, False),
    ("zstd-verity-4k", "erofs", ["--blob-compression", "zstd", "--chunk-size", "4K", "--verity"],
     "erofs.zstd.chunk-4k.verity", True, True, True),
    ("lz4-zstd-verity", "erofs+lz4", ["--blob-compression", "zstd", "--verity"], "erofs-lz4.zstd.verity",
     True, True, True),
    ("raw-verity", "erofs", ["--verity"], "erofs.verity", False, False, True),
    ("lz4-verity-one-frame", "erofs+lz4", ["--verity", "--blob-compression", "zstd", "--chunk-size", "0"],
     "erofs-lz4.zstd.chunk-0.verity", True, False, True),
    ("zstd-one-frame", "erofs", ["--blob-compression", "zstd", "--chunk-size", "0"], "erofs.zstd.chunk-0",
     True, False, False),
    ("zstd-one-frame-verity", "erofs", ["--blob-compression", "zstd", "--chunk-size", "0", "--verity"],
     "erofs.zstd.chunk-0.verity", True, False, True),
    ("lz4-zstd-4k", "erofs+lz4", ["--blob-compression", "zstd", "--chunk-size", "4K"], "erofs-lz4.zstd.chunk-4k",
     True, True, False),
    ("lz4-verity", "erofs+lz4", ["--verity"], "erofs-lz4.verity", False, False, True),
]
# With test_image_e2e's plain erofs and erofs+lz4 conversions: every combination of raw/lz4 by
# none/zstd by chunk index/one frame by verity/none.


def veritysetup_verify(path: Path, root: str, offset: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["veritysetup", "verify", str(path), str(path), root.removeprefix("sha256:"),
                           f"--hash-offset={offset}"], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("to", "flags", "suffix", "zstd", "index", "verity"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_encoded_layers(tmp_path: Path, registry_open: RegistryServer, capsysbinary: pytest.CaptureFixture[bytes],
                        to: str, flags: list[str], suffix: str, zstd: bool, index: bool, verity: bool) -> None:
    require_mount()
    repo = "blob/enc"
    src_layout = push_sample(tmp_path, registry_open, repo)
    source = f"{registry_open.host}/{repo}:{TAG}"
    line = convert(capsysbinary, source, "--to", to, *flags)
    ref = line.split("@")[0]
    assert ref == f"{source}-{suffix}"
    manifest = inspect_raw(registry_open, ref)
    config = inspect_raw(registry_open, ref, "--config")
    want_type = "application/vnd.erofs+zstd" if zstd else "application/vnd.erofs"
    assert [la["mediaType"] for la in manifest["layers"]] == [want_type] * 3
    out = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}:x")
    images: list[Path] = []
    diff_ids = []
    for n, layer in enumerate(manifest["layers"]):
        ann = layer.get("annotations", {})
        blob_path = out / "blobs/sha256" / layer["digest"].split(":")[1]
        blob = blob_path.read_bytes()
        if zstd:
            data = subprocess.run(["zstd", "-dc", str(blob_path)], capture_output=True, check=True).stdout
            diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
            assert ann["org.erofs.uncompressed-digest"] == diff_id
        else:
            data, diff_id = blob, layer["digest"]
            assert "org.erofs.uncompressed-digest" not in ann
        diff_ids.append(diff_id)
        if index:
            assert check_chunks(blob, ann, data) >= 1
        else:
            assert "org.erofs.chunk-index.range" not in ann
            if zstd:  # one frame
                dobj = __import__("zstandard").ZstdDecompressor().decompressobj()
                assert dobj.decompress(blob) == data and dobj.eof and not dobj.unused_data
        image = tmp_path / f"layer{n}.img"
        image.write_bytes(data)
        if verity:
            offset = int(ann["org.erofs.dmverity.hash_offset"])
            assert offset % 4096 == 0 and ann["org.erofs.dmverity.block_size"] == "4096"
            root = ann["org.erofs.dmverity.root_digest"]
            assert root.startswith("sha256:")
            ok = veritysetup_verify(image, root, offset)
            assert ok.returncode == 0, ok.stderr
            flipped = tmp_path / f"layer{n}.flipped"
            bad = bytearray(data)
            bad[offset // 2] ^= 0x01
            flipped.write_bytes(bytes(bad))
            assert veritysetup_verify(flipped, root, offset).returncode != 0
            fsck_image = tmp_path / f"layer{n}.erofs"
            fsck_image.write_bytes(data[:offset])
            fsck(fsck_image)
        else:
            assert not any(k.startswith("org.erofs.dmverity.") for k in ann)
            fsck(image)
        images.append(image)
    assert config["rootfs"]["diff_ids"] == diff_ids
    # The image data (tree included) mounts in the kernel; the overlay equals umoci's unpacking.
    rootfs = tmp_path / "umoci"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{src_layout}:{TAG}", str(rootfs)], check=True,
                   capture_output=True)
    expected = snapshot(rootfs)
    with overlay(images) as mnt:
        actual = snapshot(mnt)
    touched = {p for p, e in expected.items() if stat.S_ISDIR(e.mode) and e.mtime_ns > (time.time() - 3600) * 1e9}
    assert diff(expected, actual, skip_dir_mtime=touched) == []
    # `convert ls REF` shows what the kernel's overlay shows; `convert cat REF` reads through symlinks.
    check_merged_view(capsysbinary, ref, actual, contents=to == "erofs")
    # Reproducible: the same conversion again gives the same manifest (hence the same blobs).
    assert convert(capsysbinary, source, "--to", to, *flags) == line
    # The provenance records the encoding, so a mirror job can tell these images apart.
    assert "io.github.erofs-converter.blob-encoding" in json.dumps(manifest["annotations"])


def convert(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> str:
    rc = main([*args, "--log-format", "json", "-q"])
    captured = capsysbinary.readouterr()
    assert rc == 0, captured.err
    (line,) = captured.out.decode().splitlines()
    return line


def ls_entries(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> dict[str, tuple[str, str]]:
    """``convert ls`` output as path → (mode, size)."""
    assert main(["ls", *args]) == 0, capsysbinary.readouterr().err
    out: dict[str, tuple[str, str]] = {}
    for line in capsysbinary.readouterr().out.decode().splitlines():
        mode, _owner, size, _date, _time, rest = line.split(maxsplit=5)
        path = re.sub(r" \[nlink=\d+ ino=\d+\]$", "", rest).split(" -> ")[0]
        out[path] = (mode, size)
    return out


def cat(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> bytes:
    rc = main(["cat", *args])
    captured = capsysbinary.readouterr()
    assert rc == 0, captured.err
    return captured.out


def check_merged_view(capsysbinary: pytest.CaptureFixture[bytes], ref: str, kernel: dict[str, Entry], *,
                      contents: bool) -> None:
    listed = ls_entries(capsysbinary, ref)
    assert set(listed) == set(kernel)
    for path, entry in kernel.items():
        assert listed[path][0] == stat.filemode(entry.mode), path
        if stat.S_ISREG(entry.mode):
            assert listed[path][1] == str(entry.size), path
    assert set(ls_entries(capsysbinary, ref, "/usr/lib")) == {p for p in kernel if p.startswith("/usr/lib")}
    if contents:
        for path, entry in kernel.items():
            if stat.S_ISREG(entry.mode):
                assert hashlib.sha256(cat(capsysbinary, ref, path)).hexdigest() == entry.sha256, path
        # a symlink is followed inside the image (usr/lib/libfoo.so -> libfoo.so.1)
        assert cat(capsysbinary, ref, "/usr/lib/libfoo.so") == cat(capsysbinary, ref, "/usr/lib/libfoo.so.1")


def test_tags_stay_distinct(tmp_path: Path) -> None:
    suffixes = [c[3] for c in CASES] + ["erofs", "erofs-zstd", "erofs-lz4"]
    assert len(set(suffixes)) == len(suffixes)
