"""Signals to the CLI: the first SIGINT or SIGTERM interrupts (cleanup runs, exit 130, one line);
a second one kills the process at once, even while that cleanup hangs.

The command is a stand-in registered in ``converter.cli.main.COMMANDS`` inside a child process, so
``main`` installs its real handlers, and its cleanup can hang on purpose: an image
conversion's cleanup is normally too quick (tests/reliability/test_tempfiles.py) to send a
second signal into.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

HANGING_CLEANUP = """
import sys, time
import importlib
cli = importlib.import_module("converter.cli.main")

def hang(argv):
    try:  # "ready" inside the try: a signal sent right after it must reach the cleanup
        print("ready", flush=True)
        time.sleep(60)
    finally:
        print("cleaning up", flush=True)
        if argv:
            time.sleep(60)  # a cleanup that hangs: only a second signal ends it
    return 0

cli.COMMANDS["hang"] = hang
sys.exit(cli.main(["hang", *sys.argv[1:]]))
"""


def _start(*args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", HANGING_CLEANUP, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_first_signal_interrupts_and_cleans_up(first: signal.Signals) -> None:
    proc = _start()
    proc.send_signal(first)
    out, err = proc.communicate(timeout=10)
    assert out == b"cleaning up\n"
    assert proc.returncode == 130
    assert err == b"convert: interrupted\n"


@pytest.mark.parametrize(("first", "second"), [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGTERM),
                                               (signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)],
                         ids=["INT-INT", "TERM-TERM", "TERM-INT", "INT-TERM"])
def test_second_signal_kills_at_once(first: signal.Signals, second: signal.Signals) -> None:
    proc = _start("hang-in-cleanup")
    assert proc.stdout is not None
    proc.send_signal(first)
    assert proc.stdout.readline() == b"cleaning up\n"
    started = time.monotonic()
    proc.send_signal(second)
    try:
        returncode = proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.communicate()
    assert returncode == -second, returncode  # killed by the signal's default action
    assert time.monotonic() - started < 1.0
