"""The baseline's manifest rewrite: the minimal-but-real Python one-off users write today.

Run as ``python3 rewrite_manifest.py SRC_DIR OUT_DIR [MEDIA_TYPE]`` inside the baseline shell
pipeline (it is part of the measured time). Stdlib only, like a one-off would be.

``SRC_DIR`` is what ``skopeo copy docker://… dir:SRC_DIR`` wrote; ``OUT_DIR`` holds one
``HEX.erofs`` per source layer (named by the source blob's hex digest). It renames each EROFS
image to its own digest, writes a config whose ``rootfs.diff_ids`` are the new layer digests
(a raw EROFS blob is its own DiffID) and whose ``os.features`` gains ``erofs``, and a
``manifest.json`` with the new layer descriptors, ready for ``skopeo copy dir:OUT_DIR docker://…``.
When ``HEX.erofs.zst`` exists too (the user ran ``zstd`` over the image), that is the blob and
the image's own digest is the DiffID and ``org.erofs.uncompressed-digest``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

DEFAULT_MEDIA_TYPE = "application/vnd.erofs"


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _put(out: Path, obj: Any) -> tuple[str, int]:
    data = json.dumps(obj, separators=(",", ":")).encode()
    hexdigest = hashlib.sha256(data).hexdigest()
    (out / hexdigest).write_bytes(data)
    return "sha256:" + hexdigest, len(data)


def rewrite(src: Path, out: Path, media_type: str = DEFAULT_MEDIA_TYPE) -> None:
    """Write OUT/manifest.json, the new config and the renamed layer blobs."""
    manifest = json.loads((src / "manifest.json").read_text())
    config = json.loads((src / manifest["config"]["digest"].split(":", 1)[1]).read_text())
    layers = []
    diff_ids = []
    for layer in manifest["layers"]:
        built = out / (layer["digest"].split(":", 1)[1] + ".erofs")
        hexdigest, size = _digest(built)
        diff_ids.append("sha256:" + hexdigest)
        desc: dict[str, Any] = {"mediaType": media_type}
        wrapped = built.with_name(built.name + ".zst")
        if wrapped.exists():
            built.unlink()
            built = wrapped
            desc["annotations"] = {"org.erofs.uncompressed-digest": "sha256:" + hexdigest}
            hexdigest, size = _digest(built)
        built.rename(out / hexdigest)
        layers.append({**desc, "digest": "sha256:" + hexdigest, "size": size})
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    features = config.get("os.features") or []
    if "erofs" not in features:
        config["os.features"] = [*features, "erofs"]
    config_digest, config_size = _put(out, config)
    manifest["config"] = {**manifest["config"], "digest": config_digest, "size": config_size}
    manifest["layers"] = layers
    (out / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    shutil.copyfile(src / "version", out / "version")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: rewrite_manifest.py SRC_DIR OUT_DIR [MEDIA_TYPE]", file=sys.stderr)
        return 2
    rewrite(Path(argv[0]), Path(argv[1]), *argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
