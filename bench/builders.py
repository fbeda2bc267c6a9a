"""``python -m bench.builders``: our compressed writer against mkfs.erofs, per layer and format.

For each bench layer (and the generated big layer with ``--big-layer-gb N``) and each format,
``erofs-convert layer L.tar.gz -o OUT --to FMT --builder python`` races ``… --builder mkfs``
(the same normalised input fed to mkfs.erofs, so only the writer differs), in alternating
order; medians of wall and CPU time, the peak RSS of the whole process tree (GNU time) and the
image size. Prints a markdown table and writes ``bench/builders.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import inputs
from bench.measure import Sample, run_measured

FORMATS = ("erofs+lz4", "erofs+lz4hc,level=9", "erofs+zstd,level=3", "erofs+deflate", "erofs+lzma")
RESULTS = Path(__file__).with_name("builders.json")


def _run(layer: inputs.LayerInput, fmt: str, builder: str, round_no: int, out: Path) -> tuple[Sample, int]:
    argv = [sys.executable, "-m", "converter.cli", "layer", str(layer.gz), "-o", str(out), "--to", fmt,
            "--builder", builder, *(["--bottom"] if layer.bottom else [])]
    sample = run_measured(f"{builder}", round_no, argv)
    if not sample.ok:
        raise SystemExit(f"{builder} {fmt} {layer.name} failed:\n{sample.stderr_tail}")
    size = out.stat().st_size
    out.unlink()
    return sample, size


def measure(layers: Sequence[inputs.LayerInput], formats: Sequence[str], rounds: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-builders-") as tmp:
        out = Path(tmp) / "out.erofs"
        for layer in layers:
            for fmt in formats:
                samples: dict[str, list[Sample]] = {"python": [], "mkfs": []}
                sizes: dict[str, int] = {}
                for r in range(rounds):
                    order = ("python", "mkfs") if r % 2 == 0 else ("mkfs", "python")
                    for builder in order:
                        sample, sizes[builder] = _run(layer, fmt, builder, r, out)
                        samples[builder].append(sample)
                row: dict[str, Any] = {"layer": layer.name, "format": fmt, "tar_mb": layer.tar_size / 1e6}
                for builder, got in samples.items():
                    row[builder] = {"wall_s": statistics.median(s.wall_s for s in got),
                                    "cpu_s": statistics.median(s.cpu_s for s in got),
                                    "rss_mb": max(s.max_rss_kb for s in got) / 1024, "size": sizes[builder]}
                row["time_ratio"] = row["python"]["wall_s"] / row["mkfs"]["wall_s"]
                row["size_ratio"] = sizes["python"] / sizes["mkfs"]
                rows.append(row)
                print(_line(row), flush=True)
    return rows


HEADER = ("| layer | format | tar MB | python s | mkfs s | time ratio | python CPU s | mkfs CPU s "
          "| python RSS MB | mkfs RSS MB | python MB | mkfs MB | size ratio |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def _line(row: dict[str, Any]) -> str:
    p, m = row["python"], row["mkfs"]
    return (f"| {row['layer']} | {row['format']} | {row['tar_mb']:.0f} | {p['wall_s']:.2f} | {m['wall_s']:.2f} "
            f"| **{row['time_ratio']:.2f}** | {p['cpu_s']:.2f} | {m['cpu_s']:.2f} | {p['rss_mb']:.0f} "
            f"| {m['rss_mb']:.0f} | {p['size'] / 1e6:.2f} | {m['size'] / 1e6:.2f} | {row['size_ratio']:.4f} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.builders", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layers", nargs="*", help="bench layer names (default: all four)")
    p.add_argument("--formats", nargs="*", default=list(FORMATS))
    p.add_argument("--big-layer-gb", type=float, default=0.0, metavar="N", help="add the generated N GiB layer")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    layers = list(inputs.build_image(log=lambda msg: None).layers)
    if args.layers:
        layers = [layer for layer in layers if layer.name in args.layers]
    if args.big_layer_gb:
        layers.append(inputs.big_layer(args.big_layer_gb))
    print(HEADER, flush=True)
    rows = measure(layers, args.formats, args.rounds)
    args.results.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
