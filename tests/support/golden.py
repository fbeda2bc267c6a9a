"""The golden outputs: pinned digests of the sample image's conversions and small committed images.

``python -m tests.support.golden --update`` rewrites tests/data/golden/ from the current code.
Run it only for a deliberate change of output bytes and review the diff. It refuses to record new
digests under the same ``converter.__version__``: the version keys the mirror layer cache and goes
into the provenance annotations, so a changed output under an old version would let a mirror
reuse stale layers or skip images as already converted.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from converter import __version__
from converter.testing.sample import sample_layers, write_oci_layout

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
DIGESTS = GOLDEN / "digests.json"
#: name -> extra flags of `convert`; each is one conversion of the sample image.
CONVERSIONS: dict[str, list[str]] = {
    "erofs": ["--to", "erofs"],
    "erofs-mkfs": ["--to", "erofs", "--builder", "mkfs"],
    "erofs+lz4": ["--to", "erofs+lz4"],
    "erofs+lz4-mkfs": ["--to", "erofs+lz4", "--builder", "mkfs"],
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


def pinned() -> dict[str, object]:
    """What tests/data/golden/digests.json holds: ``tool_version`` and one entry per conversion."""
    data: dict[str, object] = json.loads(DIGESTS.read_text())
    return data


def update() -> int:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        digests = convert_sample(Path(tmp))
        old = pinned() if DIGESTS.exists() else {}
        changed = {name for name, value in digests.items() if old.get(name) != value}
        if changed and old.get("tool_version") == __version__:
            print(f"output bytes changed ({', '.join(sorted(changed))}) under the same version {__version__}: "
                  "bump converter.__version__ first (it keys the mirror cache and the provenance)", file=sys.stderr)
            return 1
        for index, data in layer_images(Path(tmp), digests).items():
            layer_image_path(index).write_bytes(gzip.compress(data, mtime=0))
    DIGESTS.write_text(json.dumps({"tool_version": __version__, **digests}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS} and {len(IMAGE_LAYERS)} layer images")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.support.golden")
    parser.add_argument("--update", action="store_true", help="rewrite tests/data/golden from the current code")
    if parser.parse_args().update:
        sys.exit(update())
