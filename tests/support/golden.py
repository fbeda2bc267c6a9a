"""The golden outputs: pinned digests of the sample image's conversions and small committed images.

``python -m tests.support.golden --update`` rewrites tests/data/golden/ from the current code.
Run it only for a deliberate change of output bytes, review the diff, and make sure the mirror
layer cache key changes with it (converter/mirror/cache.py: the tool version is part of the key).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from converter.testing.sample import sample_layers, write_oci_layout

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
DIGESTS = GOLDEN / "digests.json"
#: name -> extra flags of `convert`; each is one conversion of the sample image.
CONVERSIONS: dict[str, list[str]] = {
    "erofs": ["--to", "erofs"],
    "erofs-mkfs": ["--to", "erofs", "--builder", "mkfs"],
    "erofs+lz4": ["--to", "erofs+lz4"],
    "erofs+zstd,level=3": ["--to", "erofs+zstd,level=3"],
}
#: the raw conversion's layers small enough to commit (gzip-compressed), by layer index.
IMAGE_LAYERS = (1, 2)


def layer_image_path(index: int) -> Path:
    return GOLDEN / f"sample-layer{index}.erofs.gz"


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def convert_sample(workdir: Path) -> dict[str, dict[str, object]]:
    """Convert the sample image every way in CONVERSIONS; the digests of what came out."""
    source = write_oci_layout(workdir / "src", sample_layers(), tag="v1")
    out: dict[str, dict[str, object]] = {}
    for name, flags in CONVERSIONS.items():
        dest = workdir / "dst"
        proc = subprocess.run([sys.executable, "-m", "converter.cli", f"oci:{source.path}:v1", "--dest",
                               f"oci:{dest}:{name.replace('+', '-').replace(',', '-').replace('=', '')}", "-q",
                               *flags], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"convert {name} failed: {proc.stderr.strip()}")
        digest = proc.stdout.strip().rsplit("@", 1)[1]
        manifest = json.loads(_blob(dest, digest))
        out[name] = {
            "config": manifest["config"]["digest"],
            "layers": [layer["digest"] for layer in manifest["layers"]],
        }
    return out


def layer_images(workdir: Path, digests: dict[str, dict[str, object]]) -> dict[int, bytes]:
    layers = digests["erofs"]["layers"]
    assert isinstance(layers, list)
    return {i: _blob(workdir / "dst", layers[i]) for i in IMAGE_LAYERS}


def update() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        digests = convert_sample(Path(tmp))
        for index, data in layer_images(Path(tmp), digests).items():
            layer_image_path(index).write_bytes(gzip.compress(data, mtime=0))
    DIGESTS.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS} and {len(IMAGE_LAYERS)} layer images")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.support.golden")
    parser.add_argument("--update", action="store_true", help="rewrite tests/data/golden from the current code")
    if parser.parse_args().update:
        update()
