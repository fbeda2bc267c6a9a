"""``convert inspect``: platforms, layers (types, sizes, roles, compression) and provenance of an image."""

from __future__ import annotations

import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard

from converter.blob.encode import ANN_CHUNK_INDEX_RANGE, ANN_VERITY_ROOT_DIGEST
from converter.erofs import format as fmt
from converter.erofs.decompress import Algorithm
from converter.erofs.reader import ErofsImage
from converter.errors import ConverterError
from converter.oci.model import (
    MAX_CONFIG_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    parse_config,
    parse_image_manifest,
    parse_manifest,
)
from converter.oci.rewrite import ROLE_ANNOTATION, Provenance
from converter.transports.base import ImageSource
from converter.verify.run import SourceOpener, provenance_source, source_manifest
from converter.verify.structure import layer_profile

_HEAD = 4096


def _fs_compression(head: bytes) -> str:
    """The filesystem compression an EROFS superblock announces ("none", "lz4", "zstd+lzma", ...)."""
    if len(head) < fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size:
        return "unknown (too short)"
    sb = fmt.Superblock.unpack(head[fmt.SUPERBLOCK_OFFSET:fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size])
    if sb.magic != fmt.EROFS_MAGIC:
        return "not EROFS"
    raw = head[fmt.SUPERBLOCK_OFFSET + 0x54:fmt.SUPERBLOCK_OFFSET + 0x56]
    u1 = int.from_bytes(raw, "little")
    if sb.feature_incompat & fmt.INCOMPAT_COMPR_CFGS:
        names = [a.name.lower() for a in Algorithm if u1 & (1 << a.value)]
        return "+".join(names) or "none"
    return "lz4" if sb.feature_incompat & fmt.INCOMPAT_LZ4_0PADDING else "none"


def _head(image: ImageSource, desc: Descriptor, zstd: bool) -> bytes:
    with image.open_blob(desc.digest, size=desc.size) as src:
        if zstd:
            return bytes(zstandard.ZstdDecompressor().stream_reader(src).read(_HEAD))
        return bytes(src.read(_HEAD))


def _files(image: ImageSource, desc: Descriptor, zstd: bool) -> list[str]:
    d = Path(tempfile.mkdtemp(prefix="erofs-inspect-"))
    try:
        path = d / "layer"
        with image.open_blob(desc.digest, size=desc.size) as src, open(path, "wb") as out:
            reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True) if zstd else src
            shutil.copyfileobj(reader, out, 1 << 20)
        lines = []
        with ErofsImage.open(path) as img:
            for p, st in img.walk():
                size = f"{st.rdev_major},{st.rdev_minor}" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) \
                    else str(st.size)
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(max(0, min(st.mtime_sec, 253402300799))))
                line = f"{stat.filemode(st.st_mode)} {st.uid}/{st.gid} {size:>10} {when} " \
                       f"{p.decode('utf-8', 'backslashreplace')}"
                if stat.S_ISLNK(st.st_mode):
                    line += " -> " + img.readlink(st.nid).decode("utf-8", "backslashreplace")
                lines.append(line)
        return lines
    finally:
        shutil.rmtree(d, ignore_errors=True)




def _source_sizes(name: str, prov: Provenance, config: ImageConfig, open_location: SourceOpener | None
                  ) -> list[int] | str:
    where = provenance_source(name, prov.source_digest)
    if open_location is None or where is None:
        return []
    try:
        source, ref = open_location(where)
        return [layer.size for layer in source_manifest(source, ref, prov.source_digest, config).layers]
    except ConverterError as exc:
        return f"source unreadable: {exc}"


def _platform_info(image: ImageSource, name: str, label: str, manifest: Manifest, digest: str, *, files: bool,
                   open_location: SourceOpener | None) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": label, "digest": digest, "layers": []}
    config: ImageConfig | None = None
    try:
        config = parse_config(image.get_blob_bytes(manifest.config.digest, max_size=MAX_CONFIG_SIZE),
                              descriptor=manifest.config)
        cp = config.platform
        info["platform"] = label or "/".join(x for x in (cp.os, cp.architecture, cp.variant) if x)
        info["os.features"] = list(cp.os_features)
    except ConverterError as exc:
        info["config_error"] = str(exc)
    prov = Provenance.from_annotations(manifest.annotations)
    source_sizes: list[int] = []
    if prov is not None:
        info["source"] = {"ref": provenance_source(name, prov.source_digest), "digest": str(prov.source_digest),
                          "format": prov.fmt,
                          "profile": prov.profile.value, "tool_version": prov.version}
        if config is not None:
            sizes = _source_sizes(name, prov, config, open_location)
            if isinstance(sizes, str):
                info["source"]["error"] = sizes
            else:
                source_sizes = sizes
    for i, desc in enumerate(manifest.layers):
        found = layer_profile(desc)
        zstd = bool(found and found[1])
        layer: dict[str, Any] = {
            "index": i, "digest": str(desc.digest), "media_type": desc.media_type, "size": desc.size,
            "source_size": source_sizes[i] if i < len(source_sizes) else None,
            "role": desc.annotations.get(ROLE_ANNOTATION, ""),
            "blob_compression": "zstd" if zstd else "none",
            "annotations": {k: v for k, v in desc.annotations.items() if k.startswith("org.erofs.")},
        }
        if found is None:
            layer["fs_compression"] = "not an EROFS layer"
        else:
            try:
                layer["fs_compression"] = _fs_compression(_head(image, desc, zstd))
                if files:
                    layer["files"] = _files(image, desc, zstd)
            except (ConverterError, zstandard.ZstdError, OSError) as exc:
                layer["error"] = str(exc)
        layer["chunk_index"] = desc.annotations.get(ANN_CHUNK_INDEX_RANGE, "")
        layer["verity_root"] = desc.annotations.get(ANN_VERITY_ROOT_DIGEST, "")
        info["layers"].append(layer)
    return info


def inspect_image(image: ImageSource, name: str, *, files: bool = False,
                  open_location: SourceOpener | None = None) -> dict[str, Any]:
    """What ``convert inspect`` shows, as a JSON-able dict."""
    raw, media_type, digest = image.get_manifest()
    doc = parse_manifest(raw, media_type, digest=digest, what=f"manifest of {name}")
    out: dict[str, Any] = {"image": name, "digest": str(digest), "media_type": str(doc.media_type), "platforms": []}
    if isinstance(doc, Manifest):
        out["platforms"].append(_platform_info(image, name, "", doc, str(digest), files=files,
                                                 open_location=open_location))
        return out
    assert isinstance(doc, Index)
    prov = Provenance.from_annotations(doc.annotations)
    if prov is not None:
        out["source"] = {"ref": provenance_source(name, prov.source_digest), "digest": str(prov.source_digest),
                         "format": prov.fmt}
    for entry in doc.manifests:
        plat = entry.platform
        label = str(plat) if plat is not None else ""
        mraw, mt, _ = image.get_manifest(entry.digest)
        manifest = parse_image_manifest(mraw, mt, digest=entry.digest)
        out["platforms"].append(_platform_info(image, name, label, manifest, str(entry.digest), files=files,
                                                 open_location=open_location))
    return out


def render(info: dict[str, Any]) -> str:
    """The human-readable form of ``inspect_image``'s result."""
    lines = [f"{info['image']}@{info['digest']} ({info['media_type']})"]
    for plat in info["platforms"]:
        lines.append(f"platform {plat['platform']} ({plat['digest']})")
        src = plat.get("source")
        if src:
            lines.append(f"  source {src['ref']}@{src['digest']}, format {src['format']}, profile {src['profile']}, "
                         f"erofs-converter {src['tool_version']}")
        for layer in plat["layers"]:
            src_size = f" (source {layer['source_size']} bytes)" if layer.get("source_size") is not None else ""
            extra = "".join(f", {k} {layer[k]}" for k in ("chunk_index", "verity_root") if layer.get(k))
            lines.append(f"  layer {layer['index'] + 1}: {layer['digest']} {layer['media_type']} "
                         f"{layer['size']} bytes{src_size}, role {layer['role'] or '-'}, fs compression "
                         f"{layer.get('fs_compression', '?')}, blob compression {layer['blob_compression']}{extra}")
            if layer.get("error"):
                lines.append(f"    error: {layer['error']}")
            lines.extend(f"    {f}" for f in layer.get("files", []))
    return "\n".join(lines) + "\n"
