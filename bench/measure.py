"""Running one benchmark command and measuring it: wall time, CPU time and peak RSS of the tree.

Peak RSS comes from GNU time (``/usr/bin/time -f "%M …"``), which forks the command from its own
tiny process and reports the ``wait4`` rusage of it: Linux gives there the command's usage plus
everything its waited-for descendants used, and ``ru_maxrss`` is the maximum over all of them.
So for a shell pipeline run through ``bash -c`` the figure is the peak of the biggest process in
the pipeline (not a sum); for ``convert`` it covers the mkfs.erofs children too.

Why not ``os.wait4`` on our own child directly: at ``exec`` Linux folds the RSS of the
*replaced* address space into the new program's ``maxrss``, and a child spawned from this
Python process starts as a copy of (or, with vfork, borrows) the harness, so every figure would
be at least the harness's own peak (64 MB after generating the big layer). That direct method
is kept only as a fallback when GNU time is missing, and samples say which method was used.
Wall time is ``time.perf_counter`` around the whole run.

Build processes (``convert`` builds each layer in a process of its own, started by a fork
server) break both figures: the processes run side by side, so the peak of the biggest is not
the peak of the conversion, and the fork server outlives the command (it exits once its parent
has), so nobody waits for it and its CPU time and its children's would be lost. So the harness
makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``: orphans of the command become its
children), samples the summed RSS of the command's whole process tree every 20 ms, waits for
the orphans it saw in that tree, and takes the CPU time of everything it waited for from
``getrusage(RUSAGE_CHILDREN)``. Peak RSS is the larger of GNU time's figure and the sampled
sum (the sum counts pages that forked processes share once per process: it errs high).
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TIME_TAG = "bench-rusage"
_SAMPLE_EVERY = 0.02  # seconds
_PR_SET_CHILD_SUBREAPER = 36
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process now."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        out[int(entry.name)] = int(fields[1])
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


class _TreeSampler:
    """Samples the summed RSS of ``root``'s process tree (and of the orphans it leaves, which a
    subreaper harness adopts) until stopped; remembers every pid it saw."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak_kb = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> set[int]:
        parents = _parents()
        tree = {self.root} | (self.seen & parents.keys())
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        return tree

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_EVERY):
            tree = self._tree()
            self.seen |= tree
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(pid) for pid in tree))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _reap(pids: set[int], *, timeout: float = 30.0) -> None:
    """Wait for those of ``pids`` that became our children (orphans adopted as subreaper)."""
    deadline = time.monotonic() + timeout
    for pid in sorted(pids):
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break  # not ours, or already reaped
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.01)


@dataclass(slots=True)
class Sample:
    """One measured run of one variant."""

    variant: str
    round: int
    wall_s: float
    cpu_s: float
    max_rss_kb: int
    returncode: int
    stdout: str = ""
    stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def as_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "round": self.round, "wall_s": round(self.wall_s, 4),
                "cpu_s": round(self.cpu_s, 3), "max_rss_kb": self.max_rss_kb, "returncode": self.returncode,
                **({"stdout": self.stdout} if self.stdout else {}),
                **({"stderr_tail": self.stderr_tail} if self.returncode else {}), **self.extra}


def gnu_time() -> str | None:
    """``/usr/bin/time`` if it is GNU time (Debian package ``time``), else None."""
    path = shutil.which("time", path="/usr/bin:/bin")
    if path is None:
        return None
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU" in res.stdout + res.stderr else None


def _parse_time_report(text: str) -> tuple[int, float] | None:
    """(max RSS in KiB, user+sys seconds) from GNU time's ``-o`` file, or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(_TIME_TAG):
            fields = line.split()
            try:
                return int(fields[1]), float(fields[2]) + float(fields[3])
            except (IndexError, ValueError):
                return None
    return None


def run_measured(variant: str, round_no: int, argv: Sequence[str], *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None) -> Sample:
    """Run ``argv`` to completion; stdout/stderr go to temp files (no pipe can stall the child)."""
    timer = gnu_time()
    subreaper = _become_subreaper()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-rusage-") as report:
        cmd = [timer, "-f", f"{_TIME_TAG} %M %U %S", "-o", report.name, "--", *argv] if timer else list(argv)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=dict(env) if env is not None else None)
        sampler = _TreeSampler(proc.pid)
        while True:
            try:
                _, status, usage = os.wait4(proc.pid, 0)
                break
            except InterruptedError:
                continue
        wall = time.perf_counter() - started
        sampler.stop()
        if subreaper:
            _reap(sampler.seen - {proc.pid})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace").strip()
        stderr = err.read().decode("utf-8", "replace")
        parsed = _parse_time_report(Path(report.name).read_text(errors="replace")) if timer else None
    if parsed is not None:
        max_rss_kb, cpu = parsed
        method = "GNU time"
    else:
        max_rss_kb, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
        method = "os.wait4 (floor: the harness's own RSS)"
    if subreaper:  # everything the command started, the adopted orphans included
        cpu = max(cpu, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    max_rss_kb = max(max_rss_kb, sampler.peak_kb)
    method += " and the sampled sum over the process tree"
    return Sample(variant=variant, round=round_no, wall_s=wall, cpu_s=cpu, max_rss_kb=max_rss_kb,
                  returncode=proc.returncode, stdout=stdout[-2000:], stderr_tail=stderr[-3000:],
                  extra={"rss_method": method})


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the successful rounds of one variant."""

    variant: str
    runs: int
    failures: int
    wall_s: float
    cpu_s: float
    max_rss_kb: int  # the maximum over rounds, not the median: a peak is a peak

    def as_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "runs": self.runs, "failures": self.failures,
                "median_wall_s": round(self.wall_s, 4), "median_cpu_s": round(self.cpu_s, 3),
                "peak_rss_kb": self.max_rss_kb}


def summarise(variant: str, samples: Sequence[Sample]) -> Summary | None:
    """The medians of ``samples`` that succeeded, or None if none did."""
    good = [s for s in samples if s.ok]
    if not good:
        return None
    return Summary(variant=variant, runs=len(good), failures=len(samples) - len(good),
                   wall_s=statistics.median(s.wall_s for s in good), cpu_s=statistics.median(s.cpu_s for s in good),
                   max_rss_kb=max(s.max_rss_kb for s in good))
