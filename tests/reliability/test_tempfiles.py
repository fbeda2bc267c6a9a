"""Temporary files: private while they exist, gone after success, failure and Ctrl-C.

* ``convert layer``: the image is built in a 0600 ``.NAME.*.partial`` file next to the output
  and renamed into place; contents are spooled to unnamed 0600 temporary files. Checked from
  inside a conversion (the source stream looks around when half read), and by interrupting a
  real process with SIGINT.
* ``convert SRC --dest DEST --workdir W``: everything lives in one 0700 directory under W,
  and downloaded blobs are 0600. Checked while a layer download is stalled by the fault proxy,
  then after SIGINT (which must end the stalled conversion within ``INTERRUPT_BUDGET``, not
  after the read timeout), success and failure: W must be empty again and nothing tagged.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

import pytest

from converter.convert.layer import LayerOptions, convert_layer
from converter.erofs.target import parse_format
from converter.testing.localregistry import RunningRegistry, local_registry
from tests.reliability.imageenv import Probe, Sample, skopeo_copy, write_sample
from tests.reliability.proxy import Action, Fault, FaultProxy
from tests.support.tarcraft import archive, gz, member

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
#: How long SIGINT may take to end a conversion whose download is stalled for STALL seconds
#: (the read timeout is the default 60 s: only cancelling the blocked read ends it in time).
INTERRUPT_BUDGET = 2.0
STALL = 8.0


def _layer(files: int = 40, size: int = 200_000) -> bytes:
    """A gzip layer of incompressible files (a few MB), so a conversion takes a moment."""
    return gz(archive(*(member(b"d/f%03d" % i, os.urandom(size)) for i in range(files))))


def _open_temp_files() -> list[tuple[str, int]]:
    """(path, permission bits) of this process's open regular files that are temporary:
    unnamed (O_TMPFILE / deleted) or ``.partial``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(int(fd))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and ("(deleted)" in target or target.endswith(".partial")
                                          or "O_TMPFILE" in target or target.startswith("/tmp/#")):
            found.append((target, stat.S_IMODE(st.st_mode)))
    return found


@dataclass
class Spy(io.RawIOBase):
    """A layer source that, once half read, records the temp files and the output directory."""

    data: bytes
    directory: Path
    pos: int = 0
    temp_files: list[tuple[str, int]] = field(default_factory=list)
    listing: list[tuple[str, int]] = field(default_factory=list)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self.listing and self.pos >= len(self.data) // 2:
            self.temp_files = _open_temp_files()
            self.listing = [(p.name, stat.S_IMODE(p.stat().st_mode)) for p in self.directory.iterdir()]
        view = memoryview(buffer).cast("B")
        chunk = self.data[self.pos : self.pos + min(len(view), 64 << 10)]
        view[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


@pytest.mark.parametrize("fmt", ["erofs", "erofs+lz4"])
def test_layer_temp_files_are_private_and_removed(fmt: str, tmp_path: Path) -> None:
    spy = Spy(_layer(), tmp_path)
    out = tmp_path / "out.erofs"
    before = set(_open_temp_files())  # pytest's own output capture uses unnamed temp files too
    convert_layer(cast(BinaryIO, spy), out, options=LayerOptions(fmt=parse_format(fmt)), layer="spy", workdir=tmp_path)
    partial = [(name, mode) for name, mode in spy.listing if name.endswith(".partial")]
    assert len(partial) == 1 and partial[0][0].startswith(".out.erofs."), spy.listing
    assert partial[0][1] == 0o600, oct(partial[0][1])
    ours = [item for item in spy.temp_files if item not in before]
    assert ours, "no temporary file was open mid-conversion: the check saw nothing"
    for path, mode in ours:
        assert mode == 0o600, f"{path} has mode {oct(mode)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.erofs"]
    assert set(_open_temp_files()) <= before, "a temporary file was left open"


@pytest.mark.parametrize("fmt", ["erofs", "erofs+lz4"])
def test_sigint_during_layer_conversion(fmt: str, tmp_path: Path) -> None:
    """Ctrl-C while the layer streams in: exit 130, one line, no output, no temp file."""
    data = _layer()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "converter.cli", "layer", "-", "-o", str(out_dir / "l.erofs"),
                             "--to", fmt], stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(p.name.endswith(".partial") for p in out_dir.iterdir()):
        assert time.monotonic() < deadline, "the conversion never started"
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    rc = proc.wait(timeout=30)
    err = proc.stderr.read().decode()
    assert rc == 130, err
    assert err == "convert: interrupted\n", err
    assert list(out_dir.iterdir()) == []


# --- image conversions ------------------------------------------------------------------------


@dataclass
class ImageEnv:
    registry: RunningRegistry
    proxy: FaultProxy
    probe: Probe
    sample: Sample


@pytest.fixture(scope="module")
def image_env() -> Iterator[ImageEnv]:
    with local_registry() as registry, tempfile.TemporaryDirectory() as tmp, FaultProxy(registry.host) as proxy:
        sample = write_sample(Path(tmp) / "layout")
        skopeo_copy(sample, f"{registry.host}/sample:v1")
        probe = Probe(registry.host)
        try:
            yield ImageEnv(registry, proxy, probe, sample)
        finally:
            probe.close()


def _start(env: ImageEnv, workdir: Path, repo: str, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "converter.cli", f"{env.proxy.host}/sample:v1", "--dest",
                             f"{env.proxy.host}/{repo}:conv", "--workdir", str(workdir), "-q", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _tree_modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")}


T = TypeVar("T")


def _interrupt_stalled(env: ImageEnv, workdir: Path, repo: str, layer: int, *flags: str, settle: float,
                       observe: Callable[[subprocess.Popen[bytes]], T]) -> tuple[subprocess.Popen[bytes], bytes,
                                                                                 float, T]:
    """Convert with layer ``layer``'s download stalled; once it stalls (and ``settle`` seconds
    more), ``observe`` the running conversion, send SIGINT and wait for the end. Returns the
    process, its stderr, the seconds SIGINT took to end it and what ``observe`` returned."""
    stall = Fault(Action.STALL, rf"/v2/sample/blobs/{env.sample.layers[layer]}$", "GET", stall=STALL, fraction=0.5)
    with env.proxy.scripted([stall]):
        proc = _start(env, workdir, repo, *flags)
        env.proxy.wait_for(lambda seen: seen.fault == "stall")
        time.sleep(settle)
        seen = observe(proc)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        return proc, err, time.monotonic() - started, seen


def test_image_workdir_private_and_removed_on_sigint(image_env: ImageEnv, tmp_path: Path) -> None:
    env = image_env
    workdir = tmp_path / "work"
    proc, err, elapsed, modes = _interrupt_stalled(env, workdir, "out-sigint", 0, settle=0.3,
                                                   observe=lambda proc: _tree_modes(workdir))
    private = [name for name in modes if "/" not in name]
    assert len(private) == 1 and private[0].startswith("erofs-convert-"), modes
    assert modes[private[0]] == 0o700, oct(modes[private[0]])
    pulled = {name: mode for name, mode in modes.items() if name.endswith(".src")}
    assert pulled and set(pulled.values()) == {0o600}, modes
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines()[-1] == "convert: interrupted", err.decode()
    assert list(workdir.iterdir()) == []
    assert env.probe.tag_digest("out-sigint", "conv") is None
    assert elapsed < INTERRUPT_BUDGET, f"SIGINT took {elapsed:.1f}s to end a conversion with a stalled download"


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat_line = (entry / "stat").read_bytes()
                parents[int(entry.name)] = int(stat_line[stat_line.rindex(b")") + 2:].split()[1])
    found, grew = set(), True
    while grew:
        grew = False
        for child, parent in parents.items():
            if (parent == pid or parent in found) and child not in found:
                found.add(child)
                grew = True
    return found


def test_sigint_with_build_processes_leaves_no_process(image_env: ImageEnv, tmp_path: Path) -> None:
    # Layer 1's download stalls after layer 0 went to a build process: Ctrl-C ends the conversion
    # as fast as without build processes, and the fork server and its processes go with it.
    env = image_env
    workdir = tmp_path / "work"
    proc, err, elapsed, helpers = _interrupt_stalled(env, workdir, "out-sigint-procs", 1, "--build-processes",
                                                     "--jobs", "2", settle=0.5,
                                                     observe=lambda proc: _descendants(proc.pid))
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines()[-1] == "convert: interrupted", err.decode()
    assert helpers, "the fork server was running"
    deadline = time.monotonic() + 10
    while (left := {pid for pid in helpers if Path(f"/proc/{pid}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"
    assert list(workdir.iterdir()) == []
    assert env.probe.tag_digest("out-sigint-procs", "conv") is None
    assert elapsed < INTERRUPT_BUDGET


def test_image_workdir_removed_after_success_and_failure(image_env: ImageEnv, tmp_path: Path) -> None:
    env = image_env
    workdir = tmp_path / "work"
    proc = _start(env, workdir, "out-ok")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert list(workdir.iterdir()) == []
    missing = Fault(Action.STATUS, rf"/v2/sample/blobs/{env.sample.layers[1]}$", "GET", status=404,
                    code="BLOB_UNKNOWN", times=None)
    with env.proxy.scripted([missing]):
        proc = _start(env, workdir, "out-fail")
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    assert len(err.decode().splitlines()) == 1, err.decode()
    assert list(workdir.iterdir()) == []
    assert env.probe.tag_digest("out-fail", "conv") is None
