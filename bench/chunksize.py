"""What a chunk index costs: +zstd blob size and encode time per chunk size, on the benchmark layers.

    python -m bench.chunksize [--sizes 0,256K,1M,2M,4M] [--level 3] [--verity]

Each cached benchmark layer is converted once to a raw EROFS image (``convert layer``), then
encoded with ``converter.blob.encode.encode_blob`` for every chunk size (0 = one frame, no
index). Prints bytes and the ratio to one frame per layer and for the whole image.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import inputs
from converter.blob.encode import encode_blob
from converter.blob.encoding import make_encoding, parse_size
from converter.cli.main import main as convert_main


def measure(images: list[tuple[str, Path]], sizes: list[int], *, level: int, verity: bool) -> list[str]:
    lines = [f"{'layer':<16} {'image MB':>9} " + " ".join(f"{_name(s):>18}" for s in sizes)]
    totals = dict.fromkeys(sizes, 0)
    seconds = dict.fromkeys(sizes, 0.0)
    image_total = 0
    for name, path in images:
        cells = []
        sizes_of: dict[int, int] = {}
        for size in sizes:
            encoding = make_encoding(f"zstd,level={level}", chunk_size=size, verity=verity)
            started = time.perf_counter()
            with open(path, "rb") as src, tempfile.TemporaryFile() as out:
                result = encode_blob(src, out, encoding=encoding)
            seconds[size] += time.perf_counter() - started
            sizes_of[size] = result.size
            totals[size] += result.size
        one = sizes_of[sizes[0]]
        for size in sizes:
            cells.append(f"{sizes_of[size] / 1e6:9.2f} {sizes_of[size] / one:7.4f}x ")
        image_total += path.stat().st_size
        lines.append(f"{name:<16} {path.stat().st_size / 1e6:9.1f} " + " ".join(f"{c:>18}" for c in cells))
    one = totals[sizes[0]]
    lines.append(f"{'image':<16} {image_total / 1e6:9.1f} "
                 + " ".join(f"{totals[s] / 1e6:9.2f} {totals[s] / one:7.4f}x " for s in sizes))
    lines.append(f"{'encode s':<16} {'':>9} " + " ".join(f"{seconds[s]:18.2f}" for s in sizes))
    return lines


def _name(size: int) -> str:
    return "one frame" if size == 0 else f"{size >> 10}K" if size < 1 << 20 else f"{size >> 20}M"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.chunksize")
    p.add_argument("--sizes", default="0,256K,1M,2M,4M")
    p.add_argument("--level", type=int, default=3)
    p.add_argument("--verity", action="store_true")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    image = inputs.build_image()
    with tempfile.TemporaryDirectory(prefix="bench-chunks-") as tmp:
        images = []
        for layer in image.layers:
            out = Path(tmp) / f"{layer.name}.erofs"
            argv_ = ["layer", str(layer.gz), "-o", str(out), *(["--bottom"] if layer.bottom else [])]
            if convert_main(argv_) != 0:
                return 1
            images.append((layer.name, out))
        print("\n".join(measure(images, sizes, level=args.level, verity=args.verity)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
