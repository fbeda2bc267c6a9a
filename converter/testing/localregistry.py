"""Runs Debian's ``docker-registry`` (CNCF distribution) on a free loopback port.

For ``make demo`` and the tests: a private config (filesystem storage in a temp dir, no
systemd), started and stopped by a context manager so nothing is left running.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from converter.errors import ToolError

PROGRAM = "docker-registry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True, slots=True)
class RunningRegistry:
    """A started registry: ``host`` is "127.0.0.1:PORT"."""

    host: str
    root: Path
    process: subprocess.Popen[bytes]


def registry_config(root: Path, port: int, *, auth_yaml: str = "") -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"{auth_yaml}"
    )


@contextlib.contextmanager
def local_registry(*, auth_yaml: str = "", timeout: float = 20.0, expect_status: tuple[int, ...] = (200, 401),
                   ) -> Iterator[RunningRegistry]:
    """Start a registry (optionally with an ``auth:`` YAML block), yield it, stop it."""
    exe = shutil.which(PROGRAM)
    if exe is None:
        raise ToolError(f"{PROGRAM} is not installed; run `make setup` (Debian package docker-registry)")
    root = Path(tempfile.mkdtemp(prefix="registry-"))
    port = free_port()
    cfg = root / "config.yml"
    cfg.write_text(registry_config(root, port, auth_yaml=auth_yaml))
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{port}/v2/"
        while True:
            if proc.poll() is not None:
                raise ToolError(f"{PROGRAM} exited at start: {(root / 'registry.log').read_text()[-500:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status in expect_status:
                        break
            except urllib.error.HTTPError as exc:
                if exc.code in expect_status:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ToolError(f"{PROGRAM} did not answer on {url} within {timeout}s")
            time.sleep(0.05)
        yield RunningRegistry(host=f"127.0.0.1:{port}", root=root, process=proc)
    finally:
        stop_process(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
