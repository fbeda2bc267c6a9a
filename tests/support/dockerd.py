"""A private Docker engine for tests: Debian's dockerd with its own data root, exec root, socket
and pidfile, no bridge and no iptables rules (the machine's network stays as it is), stopped and
removed afterwards. ``dockerd`` is the session fixture; ``Dockerd.docker`` runs Debian's client
against it, ``Dockerd.env`` points any other client (python-on-whales) at it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCKERD = "/usr/sbin/dockerd"  # Debian's docker.io (scripts/setup-system.sh installs it)
DOCKER = "/usr/bin/docker"  # its client, not whatever else comes first on PATH
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Dockerd:
    """A running private engine."""

    run_dir: Path

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.run_dir / "dockerd.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.run_dir / "client"))
        return env

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, env=self.env(), timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return proc


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _unmount_under(root: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted(points, key=len, reverse=True):
        if point == str(root) or point.startswith(f"{root}/"):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextlib.contextmanager
def private_dockerd() -> Iterator[Dockerd]:
    """Start a private dockerd (see the module docstring); skips when docker.io is missing."""
    if not os.access(DOCKERD, os.X_OK) or not os.access(DOCKER, os.X_OK):
        pytest.skip(f"{DOCKERD} or {DOCKER} is missing: run scripts/setup-system.sh (Debian's docker.io)")
    # A short path: the socket and containerd's sockets below the exec root must fit sun_path.
    run_dir = Path(tempfile.mkdtemp(prefix="erofs-td-", dir="/tmp"))
    engine = Dockerd(run_dir)
    (run_dir / "client").mkdir()
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(engine.log, "wb") as log:
            process = subprocess.Popen(
                [DOCKERD, "--data-root", str(run_dir / "data"), "--exec-root", str(run_dir / "exec"),
                 "--pidfile", str(run_dir / "dockerd.pid"), "--host", engine.host, "--bridge=none",
                 "--iptables=false", "--ip6tables=false"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"dockerd exited {process.returncode} while starting:\n{_tail(engine.log)}")
            if engine.socket.exists() and engine.docker("version", check=False, timeout=30).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not answer within {START_TIMEOUT:g} s:\n{_tail(engine.log)}")
            time.sleep(0.2)
        yield engine
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        _unmount_under(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    with private_dockerd() as engine:
        yield engine
