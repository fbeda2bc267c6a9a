"""Running one benchmark command and measuring it: wall time, CPU time and peak RSS of the tree.

The command is started with ``subprocess.Popen`` and reaped with ``os.wait4``. Linux reports in
that rusage the child's own usage plus everything its waited-for descendants used, and its
``ru_maxrss`` is the maximum over all of them (``max(maxrss, cmaxrss)``). So for a shell
pipeline run through ``bash -c`` the figure is the peak of the biggest process in the pipeline
(what the brief asks for), not a sum; for ``convert`` it covers the mkfs.erofs children too.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


def run_measured(variant: str, round_no: int, argv: Sequence[str], *, cwd: Path | None = None,
                 env: Mapping[str, str] | None = None) -> Sample:
    """Run ``argv`` to completion; stdout/stderr go to temp files (no pipe can stall the child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=dict(env) if env is not None else None)
        while True:
            try:
                _, status, usage = os.wait4(proc.pid, 0)
                break
            except InterruptedError:
                continue
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace").strip()
        stderr = err.read().decode("utf-8", "replace")
    return Sample(variant=variant, round=round_no, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
                  max_rss_kb=usage.ru_maxrss, returncode=proc.returncode, stdout=stdout[-2000:],
                  stderr_tail=stderr[-3000:])


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
