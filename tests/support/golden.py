"""The golden outputs: pinned digests of the sample image's conversions, of a compressible layer's
compressed conversions, and small committed images.

``python -m tests.support.golden --update`` rewrites tests/data/golden/ from the current code.
Run it only for a deliberate change of output bytes and review the diff. It refuses to record new
digests under the same ``converter.__version__``: the version keys the mirror layer cache and goes
into the provenance annotations, so a changed output under an old version would let a mirror
reuse stale layers or skip images as already converted.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
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
#: Formats pinned on ``compressible_tar()`` with ``convert layer``: the sample image's files are
#: random, so every compressed conversion above stores them plain.
LAYER_FORMATS = ("erofs+lz4", "erofs+lz4hc", "erofs+zstd", "erofs+deflate", "erofs+lzma",
                 "erofs+lz4,pcluster=65536", "erofs+zstd,level=9,pcluster=16384", "erofs+lz4,ztailpacking",
                 "erofs+lzma,pcluster=16384,ztailpacking")
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


def compressible_tar() -> bytes:
    """A deterministic layer whose files compress: text of every size class (one spans two 4 MiB
    segments), all-zero and mixed files, and xattrs of lengths that shift the index alignment."""
    rng = random.Random(20261204)
    words = [b"erofs", b"layer", b"cluster", b"block", b"index", b"\n", b"0123456789", b"  "]

    def text(size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words) + b" "
        return bytes(out[:size])

    files = [("empty", b""), ("one", b"x"), ("small.txt", text(3000)), ("block.txt", text(4097)),
             ("mid.txt", text(70000)), ("zeros", bytes(300000)),
             ("mixed", text(9000) + rng.randbytes(9000) + text(50000)),
             ("d/big.txt", text(4 * 1048576 + 123457)), ("d/e/f.txt", text(123456))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i, (name, data) in enumerate(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            info.pax_headers = {"SCHILY.xattr.user.k": "v" * (i * 4)} if i % 2 else {}
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def convert_layers(workdir: Path) -> dict[str, str]:
    """``convert layer`` of ``compressible_tar()`` in each of LAYER_FORMATS: the images' digests."""
    src = workdir / "compressible.tar"
    src.write_bytes(compressible_tar())
    out: dict[str, str] = {}
    for fmt in LAYER_FORMATS:
        image = workdir / "layer.erofs"
        proc = subprocess.run([sys.executable, "-m", "converter.cli", "layer", str(src), "-o", str(image),
                               "--to", fmt, "--bottom"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"convert layer --to {fmt} failed: {proc.stderr.strip()}")
        out[f"layer {fmt}"] = "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
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
        sample = convert_sample(Path(tmp))
        digests: dict[str, object] = {**sample, **convert_layers(Path(tmp))}
        old = pinned() if DIGESTS.exists() else {}
        # A newly pinned conversion is not a change; a different digest for a pinned one is.
        changed = {name for name, value in digests.items() if name in old and old[name] != value}
        if changed and old.get("tool_version") == __version__:
            print(f"output bytes changed ({', '.join(sorted(changed))}) under the same version {__version__}: "
                  "bump converter.__version__ first (it keys the mirror cache and the provenance)", file=sys.stderr)
            return 1
        for index, data in layer_images(Path(tmp), sample).items():
            layer_image_path(index).write_bytes(gzip.compress(data, mtime=0))
    DIGESTS.write_text(json.dumps({"tool_version": __version__, **digests}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS} and {len(IMAGE_LAYERS)} layer images")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.support.golden")
    parser.add_argument("--update", action="store_true", help="rewrite tests/data/golden from the current code")
    if parser.parse_args().update:
        sys.exit(update())
