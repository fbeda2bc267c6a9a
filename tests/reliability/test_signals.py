"""Signals to the CLI: the first SIGINT or SIGTERM interrupts (cleanup runs, exit 130, one line);
a second one kills the process at once, even while that cleanup hangs.

The command is a stand-in registered in ``converter.cli.main.COMMANDS`` inside a child process, so
``main`` installs its real handlers, and its cleanup can hang on purpose: an image
conversion's cleanup is normally too quick (tests/reliability/test_tempfiles.py) to send a
second signal into.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converter.erofs.target import parse_format
from converter.errors import NotFound
from converter.reference import parse_reference
from converter.registry.client import RegistryClient
from converter.testing.sample import Item, layer_tar
from tests.mirror.helpers import push_image

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


MIRROR = """
import sys
from converter.cli.main import main
sys.exit(main(["mirror", *sys.argv[1:]]))
"""


def _mkfs_processes(marker: str) -> list[int]:
    """Process ids of mkfs.erofs runs whose command line mentions ``marker`` (our workdir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"mkfs.erofs") and any(marker.encode() in arg for arg in cmdline):
            found.append(int(entry.name))
    return found


def _text(size: int) -> bytes:
    """Word-like text: compressible, so a high zstd level works hard on every block."""
    rng = random.Random(1)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=4096)) + b" "
    return bytes(out[:size])


def _python_builds(workdir: Path) -> list[Path]:
    """Images our writer is writing under ``workdir`` (its ``.partial`` files, once data is in)."""
    return [p for p in workdir.rglob("*.partial") if p.is_file() and p.stat().st_size > 0] if workdir.exists() else []


@pytest.mark.parametrize("builder", ["python", "mkfs"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_mirror_stops_at_once_on_a_signal(sig: signal.Signals, builder: str, client: RegistryClient, prefix: str,
                                          tmp_path: Path) -> None:
    """A signal to the process (not its group) while images convert: running builds are aborted,
    nothing new starts, nothing is tagged, the report marks the images interrupted, exit 130.
    Both builders: our writer's compression threads, and mkfs.erofs child processes."""
    if builder == "mkfs":  # mkfs.erofs takes about a minute for this
        to, data = "erofs+lzma,level=109", os.urandom(24 << 20)
    else:  # our writer: about 11 s of CPU per image for this (its lzma is fast on random data)
        to, data = "erofs+zstd,level=22", _text(48 << 20)
    big = layer_tar([Item("data/", "dir", mode=0o755), Item("data/random", data=data)])
    sources = [f"{prefix}/big{n}:1" for n in range(3)]
    for n, ref in enumerate(sources):
        push_image(client, tmp_path / "images", [big, layer_tar([Item(f"id{n}", data=b"%d" % n)])], [ref])
    job = tmp_path / "job.yaml"
    job.write_text(f"defaults:\n  to: {to}\n"
                   f'  dest: "{prefix}/out/{{repository}}:{{tag}}-{{format}}"\n'
                   "images:\n" + "".join(f"  - source: {ref}\n" for ref in sources))
    report = tmp_path / "report.json"
    workdir = tmp_path / "w"
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", MIRROR, str(job), "--jobs", "2", "--log-format", "json",
                                 "--builder", builder,
                                 "--report", str(report), "--workdir", str(workdir)],
                                stdout=subprocess.DEVNULL, stderr=err_file, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        # Wait until an image's layers are being built (mkfs.erofs running / our image growing), then signal.
        deadline = time.monotonic() + 120
        while not (_mkfs_processes(str(workdir)) if builder == "mkfs" else _python_builds(workdir)):
            assert time.monotonic() < deadline and proc.poll() is None, "no build started"
            time.sleep(0.05)
        proc.send_signal(sig)
        signalled = time.monotonic()
        proc.wait(timeout=60)
        elapsed = time.monotonic() - signalled
    finally:
        proc.kill()
        proc.wait()
    err = stderr.read_text()
    assert proc.returncode == 130, err
    assert elapsed < 10, elapsed  # a build of these layers alone takes far longer
    lines = [json.loads(line) for line in err.splitlines()]  # --log-format json: every line, the end too
    assert lines[-1]["event"] == "interrupted" and lines[-1]["exit_status"] == 130, err
    assert not _mkfs_processes(str(workdir))  # the running builds were killed, not left behind
    assert not _python_builds(workdir)  # and their partial images removed
    document = json.loads(report.read_text())
    statuses = [image["status"] for image in document["images"]]
    assert statuses == ["interrupted"] * 3, document
    assert document["summary"]["interrupted"] == 3
    namespace = prefix.partition("/")[2]
    for n in range(3):  # nothing was tagged
        with pytest.raises(NotFound):
            client.get_manifest(parse_reference(f"{prefix}/out/{namespace}/big{n}:1-{parse_format(to).tag_suffix}"))


def test_mirror_stops_at_once_while_planning(tmp_path: Path) -> None:
    """A signal while the plan's look-ups hang on a registry that never answers: exit 130 within
    seconds (not after the 60 s read timeout), the report written and marked interrupted."""
    with socket.socket() as silent:  # accepts connections, never answers a request
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        job = tmp_path / "job.yaml"
        job.write_text("images:\n" + "".join(f'  - {{source: "{host}/app{n}:1", dest: "{host}/out{n}:1"}}\n'
                                             for n in range(3)))
        report = tmp_path / "report.json"
        stderr = tmp_path / "stderr"
        with stderr.open("wb") as err_file:
            proc = subprocess.Popen([sys.executable, "-c", MIRROR, str(job), "--report", str(report),
                                     "--log-format", "json", "-v"],
                                    stdout=subprocess.DEVNULL, stderr=err_file, cwd=REPO,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            silent.settimeout(60)
            connection, _ = silent.accept()  # a look-up has connected and now waits for an answer
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            proc.wait(timeout=50)
            elapsed = time.monotonic() - signalled
        finally:
            proc.kill()
            proc.wait()
        connection.close()
    err = stderr.read_text()
    assert proc.returncode == 130, err
    assert elapsed < 10, elapsed
    assert json.loads(err.splitlines()[-1])["event"] == "interrupted"
    document = json.loads(report.read_text())
    assert document["interrupted"] is True and document["images"] == []
