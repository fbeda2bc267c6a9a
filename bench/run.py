"""``make bench``: erofs-converter against the C toolchain, side by side, in alternating order.

    python -m bench.run [--rounds N] [--only layer|image] [--big-layer-gb N] [--plot]

Modes (each pair runs ours-first in even rounds and baseline-first in odd rounds):

* ``image`` — end to end, registry → registry, for ``erofs`` and ``erofs+lz4``: (a)/(b)
  ``erofs-convert SRC --dest DEST --to FMT`` against (c) ``skopeo copy`` out, per layer
  ``gzip -dc | mkfs.erofs --tar=f --aufs``, a manifest rewrite, ``skopeo copy`` back. Every
  round gets a fresh local registry (fresh storage and port, so neither side can skip an upload
  because a blob from an earlier round is already there) and each variant its own repository.
* ``layer`` — (d) per layer: ``erofs-convert layer`` against ``gzip -dc | mkfs.erofs``.
* ``--big-layer-gb N`` — one generated N GiB layer through both, to show that our peak RSS does
  not grow with the layer size.

The floor (``bench/floor.py``) is measured after each pair, once per round: the unavoidable work
of the row on this machine (gunzip with isal, SHA-256 of the tar and, in image mode, of each blob,
writing and hashing as many output bytes as ours produced), single-threaded.

Reported: median wall time, ratio ours / baseline, the floor and ratio ours / floor, MB/s of
uncompressed layer (tar) data, peak RSS of the process tree (``os.wait4``), median CPU time;
PASS/MISS per target. Written to stdout and ``bench/results.json`` (with input digests, tool
versions and the machine);
``--plot`` adds ``bench/throughput.png``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import inputs
from bench.baseline import (
    BLOB_ZSTD,
    FORMATS,
    IMAGE_FORMATS,
    Tools,
    baseline_image_argv,
    baseline_layer_argv,
    image_command_status,
    ours_image_argv,
    ours_layer_argv,
)
from bench.measure import Sample, Summary, run_measured, summarise

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
PLOT = BENCH_DIR / "throughput.png"
RSS_LIMIT_BYTES = 200 * 10**6
TOOLS_ORDER = ("ours", "baseline")
FLOOR = "floor"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- what we run on ------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else f"unavailable (exit {res.returncode})"


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, memory, kernel and distribution of this machine."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    distro = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_total_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "distro": distro,
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def _git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCH_DIR.parent, capture_output=True, text=True,
                              timeout=30, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=BENCH_DIR.parent,
                               capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "") if head else "unknown"


def byte_compile() -> bool:
    """Write the bytecode cache of the ``converter`` package (where missing or stale), as
    installing a wheel does, so that every timed run measures the tool as installed. A checkout
    has none until a run writes it, and none is ever written under ``PYTHONDONTWRITEBYTECODE``
    (set on the machine the README's figures come from): every ``erofs-convert`` run then
    compiled its modules first, about 50 ms per run (``erofs-convert --version``: 0.14 s against
    0.09 s). Returns whether every module compiled."""
    return bool(compileall.compile_dir(str(BENCH_DIR.parent / "converter"), quiet=1))


def _native_status() -> str:
    """Whether `erofs-convert` runs the compiled per-entry modules here (converter/native.py):
    it is this interpreter in this environment, so this process's own answer is the same."""
    from converter import native

    return native.status()


def tool_versions(tools: Tools) -> dict[str, str]:
    """Versions of everything that takes part in a measurement."""

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "mkfs.erofs": f"{_first_line([str(tools.mkfs), '-V'])} ({tools.mkfs})",
        "python": sys.version.split()[0],
        "python3 (baseline one-off)": _first_line([tools.python3, "--version"]),
        "skopeo": _first_line(["skopeo", "--version"]),
        "gzip": _first_line(["gzip", "--version"]),
        "jq": _first_line(["jq", "--version"]),
        "docker-registry": _first_line(["docker-registry", "--version"]),
        "erofs-converter": f"{dist('erofs-converter')} @ {_git_revision()}, {_native_status()}",
        "isal": dist("isal"),
        "zstandard": dist("zstandard"),
        "deflate": dist("deflate"),
    }


# --- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One ours-vs-baseline comparison: a mode, an input and a format."""

    mode: str  # "layer", "image", "big"
    input: str
    fmt: str
    tar_bytes: int

    def variant(self, tool: str) -> str:
        return f"{self.mode}:{self.input}:{self.fmt}:{tool}"


@dataclass(slots=True)
class Results:
    """Everything measured in this run."""

    cases: list[Case]
    samples: list[Sample]
    unavailable: dict[str, str]

    def summary(self, case: Case, tool: str) -> Summary | None:
        variant = case.variant(tool)
        return summarise(variant, [s for s in self.samples if s.variant == variant])


def _order(round_no: int) -> tuple[str, ...]:
    return TOOLS_ORDER if round_no % 2 == 0 else TOOLS_ORDER[::-1]


@contextlib.contextmanager
def _scratch(tag: str) -> Iterator[Path]:
    """A scratch directory on the cache's filesystem, removed after each run (not timed)."""
    parent = inputs.cache_root() / "work"
    parent.mkdir(exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f"run-{tag}-", dir=parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _report_sample(sample: Sample) -> None:
    state = "ok" if sample.ok else f"FAILED (exit {sample.returncode}): {sample.stderr_tail.strip()[-400:]}"
    _log(f"  round {sample.round} {sample.variant}: {sample.wall_s:.2f}s, {sample.max_rss_kb / 1024:.0f} MiB, {state}")


def _measure_layer(tools: Tools, case: Case, layer: inputs.LayerInput, tool: str, round_no: int) -> Sample:
    with _scratch("layer") as work:
        out = work / "out.erofs"
        if tool == "ours":
            argv = ours_layer_argv(tools, layer.gz, out, case.fmt, bottom=layer.bottom)
        else:
            argv = baseline_layer_argv(tools, layer.gz, out, case.fmt)
        sample = run_measured(case.variant(tool), round_no, argv)
        sample.extra["output_bytes"] = out.stat().st_size if out.exists() else 0
    _report_sample(sample)
    return sample


def _output_bytes(samples: Sequence[Sample], case: Case, round_no: int) -> int | None:
    """What this round's ours produced (the baseline's output if ours failed)."""
    for tool in TOOLS_ORDER:
        for s in samples:
            if s.variant == case.variant(tool) and s.round == round_no and s.ok and s.extra.get("output_bytes"):
                return int(s.extra["output_bytes"])
    return None


def _measure_floor(case: Case, blobs: Sequence[Path], output_bytes: int | None, round_no: int, *,
                   hash_blobs: bool) -> Sample | None:
    """The row's floor (``bench.floor``) for ``output_bytes`` of output; None if nothing was produced."""
    if output_bytes is None:
        return None
    with _scratch("floor") as work:
        argv = [sys.executable, "-m", "bench.floor", "--output-bytes", str(output_bytes), "--out",
                str(work / "out"), *(["--hash-blobs"] if hash_blobs else []), *map(str, blobs)]
        sample = run_measured(case.variant(FLOOR), round_no, argv, cwd=BENCH_DIR.parent)
    _report_sample(sample)
    return sample


def run_layers(tools: Tools, layers: list[inputs.LayerInput], rounds: int, mode: str = "layer") -> Results:
    """(d): every layer and format, ``rounds`` times, ours and baseline alternating who goes first."""
    cases = [Case(mode, layer.name, fmt, layer.tar_size) for layer in layers for fmt in FORMATS]
    by_name = {layer.name: layer for layer in layers}
    samples: list[Sample] = []
    for round_no in range(rounds):
        _log(f"{mode} mode, round {round_no + 1}/{rounds}")
        for case in cases:
            for tool in _order(round_no):
                samples.append(_measure_layer(tools, case, by_name[case.input], tool, round_no))
            floor = _measure_floor(case, [by_name[case.input].gz], _output_bytes(samples, case, round_no),
                                   round_no, hash_blobs=False)
            if floor is not None:
                samples.append(floor)
    return Results(cases=cases, samples=samples, unavailable={})


def _inspect_layers(ref: str) -> list[dict[str, Any]]:
    """The layer descriptors of a pushed manifest (a sanity check, not timed)."""
    res = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        return []
    doc = json.loads(res.stdout)
    if "manifests" in doc:  # an index: follow its first manifest
        return _inspect_layers(ref.rsplit(":", 1)[0] + "@" + doc["manifests"][0]["digest"])
    layers: list[dict[str, Any]] = doc.get("layers", [])
    return layers


def _check_pushed(sample: Sample, ref: str, expect_layers: int) -> None:
    if not sample.ok:
        return
    layers = _inspect_layers(ref)
    sample.extra["pushed"] = ref
    sample.extra["output_bytes"] = sum(int(layer.get("size", 0)) for layer in layers)
    sample.extra["layer_media_types"] = sorted({str(layer.get("mediaType")) for layer in layers})
    if len(layers) != expect_layers:
        sample.returncode = -1
        sample.stderr_tail = f"bench check: {ref} has {len(layers)} layers, expected {expect_layers}"


def run_image(tools: Tools, image: inputs.BenchImage, rounds: int, *, jobs: int = 0,
              build_processes: bool | None = None) -> Results:
    """(a)/(b) against (c): registry → registry, both formats, a fresh registry per round."""
    from converter.testing.localregistry import local_registry

    cases = [Case("image", "bench-image", fmt, image.tar_bytes) for fmt in IMAGE_FORMATS]
    available, why = image_command_status(tools)
    unavailable = {} if available else {case.variant("ours"): why for case in cases}
    if not available:
        _log(f"image mode: `erofs-convert SOURCE --dest DEST` is unavailable ({why}); measuring the baseline only")
    samples: list[Sample] = []
    for round_no in range(rounds):
        _log(f"image mode, round {round_no + 1}/{rounds}")
        with local_registry() as registry:
            host = registry.host
            src = inputs.push_image(image, host)
            for case in cases:
                tag = case.fmt.replace("+", "-")  # erofs.zstd stays a valid tag
                for tool in _order(round_no):
                    if tool == "ours" and not available:
                        continue
                    dest = f"{host}/bench/{tool}:{tag}"
                    if tool == "ours":
                        argv = ours_image_argv(tools, src, dest, case.fmt, host)
                        if jobs:
                            argv += ["--jobs", str(jobs)]
                        if build_processes is not None:
                            argv += ["--build-processes" if build_processes else "--no-build-processes"]
                        sample = run_measured(case.variant(tool), round_no, argv)
                    else:
                        with _scratch("image") as work:
                            sample = run_measured(case.variant(tool), round_no,
                                                  baseline_image_argv(tools, src, dest, work, case.fmt))
                    _check_pushed(sample, dest, len(image.layers))
                    samples.append(sample)
                    _report_sample(sample)
                floor = _measure_floor(case, [layer.gz for layer in image.layers],
                                       _output_bytes(samples, case, round_no), round_no, hash_blobs=True)
                if floor is not None:
                    samples.append(floor)
    return Results(cases=cases, samples=samples, unavailable=unavailable)


# --- reporting -----------------------------------------------------------------------------------


def _mb_s(tar_bytes: int, summary: Summary | None) -> float | None:
    return tar_bytes / 1e6 / summary.wall_s if summary and summary.wall_s > 0 else None


def _ratio(ours: Summary | None, base: Summary | None) -> float | None:
    return ours.wall_s / base.wall_s if ours and base and base.wall_s > 0 else None


def case_rows(results: Results) -> list[dict[str, Any]]:
    """One row per case: medians of both tools, ratio, throughput, peak RSS."""
    rows = []
    for case in results.cases:
        ours, base = results.summary(case, "ours"), results.summary(case, "baseline")
        floor = results.summary(case, FLOOR)
        row: dict[str, Any] = {"mode": case.mode, "input": case.input, "format": case.fmt,
                               "tar_bytes": case.tar_bytes, "ratio": _ratio(ours, base),
                               "floor": floor.as_json() if floor else None, "ours_floor_ratio": _ratio(ours, floor)}
        for tool in TOOLS_ORDER:
            outs = [s.extra["output_bytes"] for s in results.samples
                    if s.variant == case.variant(tool) and s.ok and "output_bytes" in s.extra]
            row[f"{tool}_output_bytes"] = outs[0] if outs else None
        for tool, summary in (("ours", ours), ("baseline", base)):
            row[tool] = summary.as_json() if summary else None
            row[f"{tool}_mb_s"] = _mb_s(case.tar_bytes, summary)
            if summary is None:
                reason = results.unavailable.get(case.variant(tool))
                row[f"{tool}_note"] = f"unavailable: {reason}" if reason else "failed"
        rows.append(row)
    return rows


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("mode", "input", "format", "tar MB", "ours s", "base s", "ours/base", "floor s", "ours/floor",
              "ours MB/s", "base MB/s", "ours RSS MB", "base RSS MB", "ours CPU s", "base CPU s")
    lines = [header]
    for row in rows:
        ours, base = row["ours"], row["baseline"]

        def get(d: dict[str, Any] | None, key: str, scale: float = 1.0) -> float | None:
            return None if d is None else d[key] * scale

        ours_s = _cell(get(ours, "median_wall_s"), ".2f") if ours else row["ours_note"].split(":")[0]
        base_s = _cell(get(base, "median_wall_s"), ".2f") if base else row["baseline_note"].split(":")[0]
        lines.append((
            row["mode"], row["input"], row["format"], f"{row['tar_bytes'] / 1e6:.0f}", ours_s, base_s,
            _cell(row["ratio"], ".2f"), _cell(get(row["floor"], "median_wall_s"), ".2f"),
            _cell(row["ours_floor_ratio"], ".2f"),
            _cell(row["ours_mb_s"], ".0f"), _cell(row["baseline_mb_s"], ".0f"),
            _cell(get(ours, "peak_rss_kb", 1024 / 1e6), ".0f"), _cell(get(base, "peak_rss_kb", 1024 / 1e6), ".0f"),
            _cell(get(ours, "median_cpu_s"), ".2f"), _cell(get(base, "median_cpu_s"), ".2f"),
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(str(v).rjust(w) if i >= 3 else str(v).ljust(w) for i, (v, w) in
                             enumerate(zip(line, widths, strict=True))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


@dataclass(frozen=True, slots=True)
class Target:
    """One goal from the issue and how this run did against it."""

    name: str
    limit: str
    measured: str
    status: str  # PASS, MISS, FAILED, UNAVAILABLE, NOT RUN

    def as_json(self) -> dict[str, str]:
        return {"target": self.name, "limit": self.limit, "measured": self.measured, "status": self.status}


def _ratio_target(name: str, limit: float, rows: list[dict[str, Any]], **match: str) -> Target:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    if not found:
        return Target(name, f"<= {limit:.1f}x", "-", "NOT RUN")
    row = found[0]
    if row["ratio"] is None:
        note = row.get("ours_note") or row.get("baseline_note") or "failed"
        return Target(name, f"<= {limit:.1f}x", note, "UNAVAILABLE" if note.startswith("unavailable") else "FAILED")
    return Target(name, f"<= {limit:.1f}x", f"{row['ratio']:.2f}x", "PASS" if row["ratio"] <= limit else "MISS")


def _pushed_target(rows: list[dict[str, Any]], source_bytes: int) -> Target:
    """Bytes pushed by ``--blob-compression zstd`` against the source image's tar+gzip blobs."""
    name, limit = "pushed bytes, --blob-compression zstd vs source tar+gzip", "<= 0.95x"
    row = next((r for r in rows if r["mode"] == "image" and r["format"] == BLOB_ZSTD), None)
    pushed = row.get("ours_output_bytes") if row else None
    if not pushed or not source_bytes:
        return Target(name, limit, "-", "NOT RUN" if row is None else "UNAVAILABLE")
    ratio = pushed / source_bytes
    base = row.get("baseline_output_bytes") if row else None
    versus = f", zstd -3 script {base / 1e6:.1f} MB" if base else ""
    return Target(name, limit, f"{ratio:.3f}x ({pushed / 1e6:.1f} of {source_bytes / 1e6:.1f} MB{versus})",
                  "PASS" if ratio <= 0.95 else "MISS")


def evaluate_targets(rows: list[dict[str, Any]], big_inputs: list[str], source_bytes: int = 0) -> list[Target]:
    """PASS/MISS per target of the issue; nothing here is adjusted to make a target pass."""
    targets = [
        _ratio_target("end-to-end raw (erofs) vs skopeo+gzip|mkfs.erofs", 0.8, rows, mode="image", format="erofs"),
        _ratio_target("end-to-end erofs+lz4 vs skopeo+gzip|mkfs.erofs -zlz4", 1.0, rows, mode="image",
                      format="erofs+lz4"),
        _ratio_target("end-to-end --blob-compression zstd vs the same script + zstd -3 -T0", 0.8, rows,
                      mode="image", format=BLOB_ZSTD),
        _pushed_target(rows, source_bytes),
    ]
    for name in ("01-rootfs", "02-packages"):
        targets.append(_ratio_target(f"convert layer raw, big-file layer {name}", 1.0, rows, mode="layer",
                                     input=name, format="erofs"))
    for name in big_inputs:
        targets.append(_ratio_target(f"convert layer raw, big-file layer {name}", 1.0, rows, mode="big",
                                     input=name, format="erofs"))
    targets.append(_ratio_target("convert layer raw, 50k-small-files layer", 2.0, rows, mode="layer",
                                 input="03-smallfiles", format="erofs"))
    for mode in ("layer", "big", "image"):
        for fmt in IMAGE_FORMATS if mode == "image" else FORMATS:
            name = f"peak RSS, ours, {mode} mode, {fmt}"
            limit = f"<= {RSS_LIMIT_BYTES / 1e6:.0f} MB"
            mine = [r for r in rows if r["mode"] == mode and r["format"] == fmt]
            peaks = [r["ours"]["peak_rss_kb"] for r in mine if r["ours"]]
            if not peaks:
                targets.append(Target(name, limit, "-", "UNAVAILABLE" if mine else "NOT RUN"))
                continue
            peak = max(peaks) * 1024
            base = [r["baseline"]["peak_rss_kb"] * 1024 for r in mine if r["baseline"]]
            versus = f" (baseline {max(base) / 1e6:.0f} MB)" if base else ""
            targets.append(Target(name, limit, f"{peak / 1e6:.0f} MB{versus}",
                                  "PASS" if peak <= RSS_LIMIT_BYTES else "MISS"))
    return targets


def format_targets(targets: list[Target]) -> str:
    width = max(len(t.name) for t in targets)
    return "\n".join(f"{t.status:<11} {t.name:<{width}}  {t.limit:<10} measured {t.measured}" for t in targets)


def plot(rows: list[dict[str, Any]], path: Path) -> str:
    """A bar chart of MB/s per case, ours vs baseline. Installs matplotlib into the venv if missing."""
    if importlib.util.find_spec("matplotlib") is None:
        _log("--plot: matplotlib is not installed; installing it into the venv…")
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], capture_output=True,
                             text=True, check=False)
        if res.returncode != 0 or importlib.util.find_spec("matplotlib") is None:
            return f"not plotting: installing matplotlib failed: {res.stderr.strip()[-300:]}"
    matplotlib = importlib.import_module("matplotlib")  # optional dependency: imported only here
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    labels = [f"{r['mode']}\n{r['input']}\n{r['format']}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(rows)), 5.5))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [r["ours_mb_s"] or 0 for r in rows], width, label="erofs-converter")
    ax.bar([x + width / 2 for x in xs], [r["baseline_mb_s"] or 0 for r in rows], width,
           label="gzip -dc | mkfs.erofs (+ skopeo)")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("MB/s of uncompressed layer data (median)")
    ax.set_title("erofs-converter vs the C toolchain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else "",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per variant (default 3)")
    p.add_argument("--only", choices=("layer", "image"), help="run only the per-layer or only the image mode")
    p.add_argument("--big-layer-gb", type=float, default=0.0, metavar="N",
                   help="also generate an N GiB layer and race `convert layer` on it (peak RSS vs size)")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="pass --jobs N to `erofs-convert SOURCE` in image mode (default: its own default)")
    p.add_argument("--build-processes", action=argparse.BooleanOptionalAction, default=None,
                   help="pass --[no-]build-processes to `erofs-convert SOURCE` in image mode (default: its own "
                   "default, which is off below 4 CPUs)")
    p.add_argument("--plot", action="store_true", help=f"write {PLOT.name} (installs matplotlib if missing)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"where to write the JSON (default {RESULTS})")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.jobs < 0:
        p.error("--jobs must not be negative")
    if args.big_layer_gb < 0:
        p.error("--big-layer-gb must not be negative")
    return args


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM behaves like Ctrl-C, so scratch directories and the registry are cleaned up."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = dt.datetime.now(dt.UTC)
    machine_before = machine_info()  # the load average before: other work on the box skews timings
    tools = Tools.find()
    compiled = byte_compile()
    image = inputs.build_image(log=_log)
    big = [inputs.big_layer(args.big_layer_gb, log=_log)] if args.big_layer_gb and args.only != "image" else []

    parts: list[Results] = []
    if args.only in (None, "layer"):
        parts.append(run_layers(tools, image.layers, args.rounds))
    if big:
        parts.append(run_layers(tools, big, args.rounds, mode="big"))
    if args.only in (None, "image"):
        parts.append(run_image(tools, image, args.rounds, jobs=args.jobs, build_processes=args.build_processes))

    rows = [row for part in parts for row in case_rows(part)]
    targets = evaluate_targets(rows, [layer.name for layer in big],
                               source_bytes=sum(layer.gz_size for layer in image.layers))
    table = format_table(rows)
    print(table)
    print()
    print(format_targets(targets))
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": {"rounds": args.rounds, "only": args.only, "big_layer_gb": args.big_layer_gb, "jobs": args.jobs,
                 "build_processes": args.build_processes},
        "machine": {**machine_before, "loadavg_after": machine_info()["loadavg_1_5_15"]},
        "byte_compiled": compiled,
        "tools": tool_versions(tools),
        "commands": {
            "ours_layer": "erofs-convert layer LAYER.tar.gz -o OUT --to FMT [--bottom]",
            "floor": "python -m bench.floor --output-bytes N --out OUT [--hash-blobs] BLOB... (isal gunzip, SHA-256 of "
                     "tar [and blob], write + SHA-256 of N output bytes; N = what ours produced that round)",
            "baseline_layer": "gzip -dc LAYER.tar.gz | mkfs.erofs --quiet --tar=f --aufs -b4096 -T0 --mkfs-time "
                              "-Uclear [-zlz4] OUT",
            "ours_image": "erofs-convert HOST/bench/image:tar --dest HOST/bench/ours:TAG --to FMT --plain-http HOST -q",
            "baseline_image": "skopeo copy docker://… dir:SRC; per layer gzip -dc | mkfs.erofs …; "
                              "python3 bench/rewrite_manifest.py SRC OUT; skopeo copy dir:OUT docker://…",
        },
        "inputs": {"image_manifest": image.manifest_digest, "image_config": image.config_digest,
                   "layers": [layer.as_json() for layer in image.layers + big]},
        "results": rows,
        "targets": [t.as_json() for t in targets],
        "samples": [s.as_json() for part in parts for s in part.samples],
        "table": table.splitlines(),
    }
    args.results.write_text(json.dumps(doc, indent=1) + "\n")
    _log(f"wrote {args.results}")
    if args.plot:
        _log(plot(rows, PLOT))
    failed = [s for part in parts for s in part.samples if not s.ok]
    if failed:
        _log(f"{len(failed)} run(s) failed; see 'samples' in {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
