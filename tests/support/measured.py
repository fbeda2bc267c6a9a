"""Run the CLI in a child process and measure it: exit status, stderr, peak RSS.

The child runs under a small wrapper process whose only child it is, so
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the CLI's own peak (the test process has other
children). An address-space limit (``RLIMIT_AS``) keeps a regression from taking the machine
down: it fails with a MemoryError instead of growing to gigabytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_WRAPPER = """
import json, resource, subprocess, sys
limit, timeout, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, preexec_fn=cap)
    status, out, err = done.returncode, done.stdout, done.stderr
except subprocess.TimeoutExpired as exc:
    status, out, err = None, "", f"timed out after {timeout} s"
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"status": status, "stdout": out, "stderr": err, "peak": peak}))
"""


@dataclass(frozen=True)
class Measured:
    """What a measured CLI run did. ``status`` is None if it timed out; ``peak`` is in bytes."""

    status: int | None
    stdout: str
    stderr: str
    peak: int

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def run_cli(args: Sequence[str], *, timeout: float = 120, address_space: int = 2 << 30,
            env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """``python -m converter.cli ARGS`` (this checkout), measured; see the module docstring."""
    environ = dict(os.environ if env is None else env)
    environ["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "converter.cli", *args]
    wrapper = subprocess.run([sys.executable, "-c", _WRAPPER, str(address_space), str(timeout), *argv],
                             capture_output=True, text=True, env=environ, cwd=cwd, timeout=timeout + 60,
                             check=True)
    result = json.loads(wrapper.stdout)
    return Measured(result["status"], result["stdout"], result["stderr"], result["peak"])
