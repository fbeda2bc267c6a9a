"""Generates the embedded sample image: small but real layers with every feature worth showing.

Used by ``make demo`` and the tests. Layers are built deterministically with ``tarfile`` (we
only *write* archives here; untrusted parsing never goes through tarfile) and exercise
deletions, an opaque directory, file<->directory changes, hard links, symlinks, xattrs, a
setuid binary, a sticky directory, a FIFO, large uids and nanosecond timestamps.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

T0 = 1_700_000_000


@dataclass(slots=True)
class Item:
    """One tar member of a sample layer."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, fifo, chr
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float | str = T0
    link: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


def _blob(seed: int, size: int) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(size)


def layer_items() -> list[list[Item]]:
    """The three layers of the sample image, bottom first."""
    base = [
        Item("./", "dir", mode=0o755),
        Item("bin/", "dir", mode=0o755),
        Item("bin/busybox", data=_blob(1, 300_000), mode=0o755),
        Item("bin/sh", "symlink", link="busybox", mode=0o777),
        Item("etc/", "dir", mode=0o755),
        Item("etc/hostname", data=b"sample\n"),
        Item("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:100000:100000::/home/app:/bin/sh\n"),
        Item("etc/shadow", data=b"root:*:19000:0:99999:7:::\n", mode=0o640, gid=42),
        Item("usr/", "dir", mode=0o755),
        Item("usr/bin/", "dir", mode=0o755),
        Item("usr/bin/sudo", data=_blob(2, 40_000), mode=0o4755),
        Item("usr/bin/gzip", data=_blob(3, 9000), mode=0o755),
        Item("usr/bin/gunzip", "hardlink", link="usr/bin/gzip"),
        Item("usr/bin/ping", data=_blob(4, 5000), mode=0o755,
             xattrs={"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12}),
        Item("usr/lib/", "dir", mode=0o755),
        Item("usr/lib/libfoo.so.1", data=_blob(5, 70_000), mode=0o755),
        Item("usr/lib/libfoo.so", "symlink", link="libfoo.so.1", mode=0o777),
        Item("tmp/", "dir", mode=0o1777),
        Item("var/", "dir", mode=0o755),
        Item("var/cache/", "dir", mode=0o755),
        Item("var/cache/app/", "dir", mode=0o755),
        Item("var/cache/app/a.bin", data=_blob(6, 12_000)),
        Item("var/cache/app/b.bin", data=_blob(7, 4096)),
        Item("var/old/", "dir", mode=0o755),
        Item("var/old/file", data=b"old\n"),
        Item("opt/", "dir", mode=0o755),
        Item("opt/data/", "dir", mode=0o750, uid=100000, gid=100000,
             xattrs={"user.origin": "base"}),
        Item("opt/data/one", data=b"one\n", uid=100000, gid=100000),
        Item("opt/data/two", data=b"two\n", uid=100000, gid=100000),
        Item("srv/", "dir", mode=0o755),
        Item("srv/thing", data=b"a file that becomes a directory\n"),
        Item("run/", "dir", mode=0o755),
        Item("run/initctl", "fifo", mode=0o600),
    ]
    middle = [
        Item("etc/", "dir", mode=0o755, mtime="1700000100.123456789"),
        Item("etc/hostname", data=b"sample-v2\n", mtime="1700000100.5"),
        Item("var/cache/app/.wh.a.bin", data=b""),
        Item("opt/data/.wh..wh..opq", data=b""),
        Item("opt/data/three", data=b"three\n", uid=100000, gid=100000),
        Item("srv/thing/", "dir", mode=0o755),
        Item("srv/thing/inside", data=b"now a directory\n"),
        Item("var/old", data=b"a directory that became a file\n"),
        Item("usr/local/bin/tool", data=_blob(8, 20_000), mode=0o755),
        Item("usr/local/bin/tool-alias", "hardlink", link="usr/local/bin/tool"),
        Item("home/app/", "dir", mode=0o700, uid=100000, gid=100000),
        Item("home/app/notes.txt", data=b"hello\n", uid=100000, gid=100000, mode=0o600,
             mtime="1700000200.000000001", xattrs={"user.comment": "keep me", "user.bin": "\x00\xff\x10"}),
    ]
    top = [
        Item("var/.wh.cache", data=b""),
        Item("bin/.wh.sh", data=b""),
        Item("bin/sh", "symlink", link="/usr/local/bin/tool", mode=0o777),
        Item("etc/motd", data=b"converted to EROFS\n", mtime="1700000300.25"),
    ]
    return [base, middle, top]


def _tarinfo(item: Item) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(item.name)
    ti.mode = item.mode
    ti.uid, ti.gid = item.uid, item.gid
    ti.uname = ti.gname = ""
    mtime = item.mtime
    ti.mtime = float(mtime)
    pax: dict[str, str] = {}
    if isinstance(mtime, str):
        pax["mtime"] = mtime
    for k, v in item.xattrs.items():
        pax["SCHILY.xattr." + k] = v
    ti.pax_headers = pax
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}
    ti.type = kinds[item.kind]
    ti.linkname = item.link
    ti.devmajor, ti.devminor = item.dev
    ti.size = len(item.data) if item.kind == "file" else 0
    return ti


def layer_tar(items: Iterable[Item]) -> bytes:
    """An uncompressed PAX tar of ``items`` (deterministic bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for item in items:
            ti = _tarinfo(item)
            tf.addfile(ti, io.BytesIO(item.data) if item.kind == "file" else None)
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a fixed mtime so the compressed blob digest is stable."""
    return gzip.compress(data, compresslevel=6, mtime=0)


@dataclass(frozen=True, slots=True)
class SampleLayout:
    """Where ``write_oci_layout`` put the sample image."""

    path: Path
    tag: str
    manifest_digest: str
    layer_tars: list[bytes]


def write_oci_layout(path: Path, layers: list[bytes], *, tag: str = "latest", compress: bool | str = True,
                     architecture: str = "amd64", platforms: Sequence[str] = ()) -> SampleLayout:
    """Write an OCI image layout holding an image made of the given uncompressed layer tars.

    ``compress`` is True/"gzip", "zstd" or False (plain tar). With ``platforms`` (e.g.
    ["amd64", "arm64"]) the tag points at an image index with one manifest per architecture.
    """
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    kind = "gzip" if compress is True else (compress or "")

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    layer_descs = []
    diff_ids = []
    history = []
    for i, tar in enumerate(layers):
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        if kind == "gzip":
            blob = gzip_bytes(tar)
        elif kind == "zstd":
            import zstandard

            blob = zstandard.ZstdCompressor(level=3).compress(tar)
        else:
            blob = tar
        media = "application/vnd.oci.image.layer.v1.tar" + (f"+{kind}" if kind else "")
        layer_descs.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
        history.append({"created": "2023-11-14T22:13:20Z", "created_by": f"sample layer {i}"})

    def image_manifest(arch: str) -> tuple[str, int]:
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"],
                       "Labels": {"org.example.sample": "true"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": put(config_bytes), "size": len(config_bytes)},
            "layers": layer_descs,
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        return put(manifest_bytes), len(manifest_bytes)

    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    ref = {"org.opencontainers.image.ref.name": tag}
    if platforms:
        entries = []
        for arch in platforms:
            d, n = image_manifest(arch)
            entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": n,
                            "platform": {"architecture": arch, "os": "linux"}})
        inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": entries}, separators=(",", ":")).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put(inner), "size": len(inner),
               "annotations": ref}
    else:
        d, n = image_manifest(architecture)
        top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": n,
               "annotations": ref}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top]}
    (path / "index.json").write_text(json.dumps(index, separators=(",", ":")))
    return SampleLayout(path=path, tag=tag, manifest_digest=str(top["digest"]), layer_tars=list(layers))


def sample_layers() -> list[bytes]:
    """The sample image's layers as uncompressed tars, bottom first."""
    return [layer_tar(items) for items in layer_items()]
