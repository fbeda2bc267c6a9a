"""Where ``convert layer`` spends its time, on one cached benchmark layer.

    python -m bench.profile [--layer 03-smallfiles] [--to erofs] [--top 25] [--sort tottime|cumtime]
    python -m bench.profile --py-spy [--layer 02-packages]

Default: runs ``converter.cli.main(["layer", LAYER.tar.gz, "-o", OUT, ...])`` in this process
under cProfile (the same code path as the console script) and prints a per-module roll-up of
self time and the top functions. cProfile adds overhead to every Python call, so its absolute
times are inflated (most for the small-files layer); compare shares, not seconds.

``--py-spy``: samples the real console script with py-spy (``.venv/bin/pip install py-spy``)
at 250 Hz, no instrumentation overhead, and prints self time per module and inclusive time per
function. The layers come from ``bench.inputs`` (built and cached on first use).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench import inputs


def _layer(name: str) -> inputs.LayerInput:
    image = inputs.build_image()
    for layer in image.layers:
        if layer.name == name:
            return layer
    raise SystemExit(f"bench.profile: no layer {name!r}; choose one of {', '.join(x.name for x in image.layers)}")


def module_rollup(stats: pstats.Stats, top: int) -> list[tuple[str, float, int]]:
    """Self time and call count per source file (or built-in), biggest first."""
    per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, func), (_cc, ncalls, tottime, _cumtime, _callers) in raw.items():
        if filename == "~":
            key = f"<built-in> {func}"
        else:
            parts = Path(filename).parts
            key = "/".join(parts[parts.index("converter"):]) if "converter" in parts else Path(filename).name
        per[key][0] += tottime
        per[key][1] += ncalls
    rows = sorted(((k, v[0], int(v[1])) for k, v in per.items()), key=lambda r: -r[1])
    return rows[:top]


def _summarise_pyspy(raw: str, top: int) -> None:
    """Self time per module and inclusive time per function from py-spy's ``--format raw``."""
    per_module: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        where = leaf[leaf.rfind("(") + 1:].split(":")[0] if "(" in leaf else leaf
        per_module[where] += count
        for func in {frame.split(" (")[0] for frame in frames}:
            inclusive[func] += count
    if not total:
        print("py-spy recorded no samples")
        return
    print(f"\n## self time per module ({total} samples)")
    for key, count in per_module.most_common(top):
        print(f"{100 * count / total:5.1f}%  {key}")
    print(f"\n## inclusive time per function (top {top})")
    for key, count in inclusive.most_common(top):
        print(f"{100 * count / total:5.1f}%  {key}")


def _run_pyspy(argv_convert: list[str], top: int) -> int:
    pyspy = Path(sys.executable).with_name("py-spy")
    convert = Path(sys.executable).with_name("erofs-convert")
    if not pyspy.exists():
        print("bench.profile: py-spy is not installed; run .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    with tempfile.NamedTemporaryFile(prefix="pyspy-", suffix=".txt") as raw:
        started = time.perf_counter()
        res = subprocess.run([str(pyspy), "record", "-r", "250", "--format", "raw", "-o", raw.name, "--",
                              str(convert), *argv_convert], capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if res.returncode != 0:
            print(f"bench.profile: py-spy exited {res.returncode}: {res.stderr.strip()[-500:]}", file=sys.stderr)
            return 1
        print(f"# {' '.join(argv_convert[:2])} under py-spy: {wall:.2f}s")
        _summarise_pyspy(Path(raw.name).read_text(), top)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--layer", default="03-smallfiles", help="a bench layer name (01-rootfs … 04-deletions)")
    p.add_argument("--to", default="erofs", help="output format (default erofs)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sort", choices=("tottime", "cumtime"), default="tottime")
    p.add_argument("--py-spy", action="store_true", help="sample the console script with py-spy instead")
    args = p.parse_args(argv)

    from converter.cli import main as convert_main

    layer = _layer(args.layer)
    with tempfile.TemporaryDirectory(dir=inputs.cache_root()) as tmp:
        out = Path(tmp) / "out.erofs"
        argv_convert = ["layer", str(layer.gz), "-o", str(out), "--to", args.to]
        if layer.bottom:
            argv_convert.append("--bottom")
        if args.py_spy:
            return _run_pyspy(argv_convert, args.top)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        rc = convert_main(argv_convert)
        profiler.disable()
        wall = time.perf_counter() - started
    if rc != 0:
        print(f"bench.profile: convert exited {rc}", file=sys.stderr)
        return rc
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    print(f"# convert layer {layer.name} ({layer.tar_size / 1e6:.0f} MB tar, {layer.entries} entries) "
          f"--to {args.to}: {wall:.2f}s under cProfile")
    print("\n## self time per module")
    total = sum(v for _, v, _ in module_rollup(stats, 10**6))
    for key, tottime, ncalls in module_rollup(stats, args.top):
        print(f"{tottime:8.3f}s {100 * tottime / total:5.1f}% {ncalls:10d} calls  {key}")
    print(f"\n## top {args.top} functions by {args.sort}")
    stats.sort_stats(args.sort).print_stats(args.top)
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip() and "Ordered by" not in line
                    and "function calls" not in line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
