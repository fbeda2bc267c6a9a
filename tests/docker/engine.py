"""A private Docker engine for the container tests: dockerd, a local Debian base image, image builds."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERD = "/usr/sbin/dockerd"   # Debian's docker.io (scripts/setup-system.sh installs it)
DOCKER = "/usr/bin/docker"      # its client, not whatever else is first on PATH
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_INCLUDE = ("python3",)
# Bump when the recipe below changes in a way the key does not see.
BASE_RECIPE = "minbase+python3, apt lists/caches, docs, man pages and locales removed; v1"
_START_TIMEOUT = 60.0


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "erofs-converter"


def sid_tool(package: str, relative: str) -> Path:
    """A program from a Debian sid package that scripts/setup-system.sh unpacked into the cache."""
    return cache_root() / "sid-tools" / package / relative


class EngineError(RuntimeError):
    """The private engine could not do what a test needs (the message carries its log)."""


@dataclass(frozen=True)
class Engine:
    """A running private dockerd: ``run_docker`` talks to it and to nothing else."""

    socket: Path
    data_root: Path
    exec_root: Path
    log: Path

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update(DOCKER_HOST=self.host, DOCKER_BUILDKIT="1", DOCKER_CONFIG=str(self.exec_root / "client"))
        env.update(extra)
        return env

    def run_docker(self, args: Sequence[str], *, check: bool = True, timeout: float = 600,
                   env: dict[str, str] | None = None, program: str = DOCKER,
                   input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine; output captured as text; raises with its stderr on failure."""
        proc = subprocess.run([program, *args], capture_output=True, text=True, timeout=timeout,
                              env=env or self.env(), check=False,
                              input=input.decode() if input is not None else None)
        if check and proc.returncode != 0:
            raise EngineError(f"{Path(program).name} {' '.join(args)} exited {proc.returncode}:\n"
                              f"{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
        return proc

    def has_image(self, ref: str) -> bool:
        return self.run_docker(["image", "inspect", ref], check=False).returncode == 0


def _pids_using(root: Path) -> list[int]:
    """Processes whose working directory lies under ``root`` (containerd shims run in their bundle)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(str(os.readlink(entry / link)).startswith(str(root)) for link in ("cwd",)):
                found.append(int(entry.name))
    return found


def _unmount_under(*roots: Path) -> None:
    """Unmount whatever is still mounted below ``roots`` (deepest first)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted(points, key=len, reverse=True):
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextlib.contextmanager
def private_dockerd(data_root: Path) -> Iterator[Engine]:
    """Start dockerd with its own data root, exec root, pidfile and socket, no bridge and no
    iptables rules (the machine's firewall stays as it is); stop it and remove its run-time state
    afterwards, also when the start or a test fails.

    ``data_root`` (images and build cache) is kept for the next session; one session at a time
    uses it (an exclusive lock, waited for).
    """
    if not os.access(DOCKERD, os.X_OK):
        raise EngineError(f"{DOCKERD} is missing: run scripts/setup-system.sh (Debian package docker.io)")
    data_root.mkdir(parents=True, exist_ok=True)
    lock = open(data_root.parent / f"{data_root.name}.lock", "w")  # noqa: SIM115 (held for the whole session)
    fcntl.flock(lock, fcntl.LOCK_EX)
    owner = data_root.parent / f"{data_root.name}.owner"
    _reap_orphan(owner, data_root)
    # Short paths: the socket and containerd's sockets below the exec root must fit sun_path.
    run_dir = Path(tempfile.mkdtemp(prefix="erofs-dockerd-", dir="/tmp"))  # _reap_orphan relies on the name
    engine = Engine(socket=run_dir / "docker.sock", data_root=data_root, exec_root=run_dir / "exec",
                    log=run_dir / "dockerd.log")
    pidfile = run_dir / "dockerd.pid"
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(engine.log, "wb") as log:
            process = subprocess.Popen(
                [DOCKERD, "--data-root", str(data_root), "--exec-root", str(engine.exec_root),
                 "--pidfile", str(pidfile), "-H", engine.host, "--bridge=none", "--iptables=false",
                 "--ip6tables=false"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        owner.write_text(json.dumps({"pid": process.pid, "run_dir": str(run_dir)}))
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise EngineError(f"dockerd exited {process.returncode} while starting:\n{_tail(engine.log)}")
            if engine.socket.exists() and engine.run_docker(["version"], check=False, timeout=30).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer within {_START_TIMEOUT:g} s:\n{_tail(engine.log)}")
            time.sleep(0.2)
        (engine.exec_root / "client").mkdir(parents=True, exist_ok=True)
        yield engine
    finally:
        try:
            if process is not None and process.poll() is None:
                with contextlib.suppress(Exception):  # containers first, then leftovers of old builds
                    ids = engine.run_docker(["ps", "-aq"], check=False, timeout=60).stdout.split()
                    if ids:
                        engine.run_docker(["rm", "-f", *ids], check=False, timeout=120)
                    engine.run_docker(["image", "prune", "-f"], check=False, timeout=300)
                    engine.run_docker(["builder", "prune", "-f", "--keep-storage", "3gb"], check=False, timeout=300)
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
            _clean_run_dir(run_dir, data_root)
            owner.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


def _clean_run_dir(run_dir: Path, data_root: Path) -> None:
    """After dockerd: kill shims that outlived it, unmount what it left, remove its run-time state."""
    for pid in _pids_using(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _unmount_under(run_dir, data_root)
    shutil.rmtree(run_dir, ignore_errors=True)


def _reap_orphan(owner: Path, data_root: Path) -> None:
    """Stop a dockerd that an earlier session started on ``data_root`` and could not stop (that
    session was killed), so the two never share a data root."""
    try:
        recorded = json.loads(owner.read_text())
        pid, run_dir = int(recorded["pid"]), Path(recorded["run_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if cmdline and cmdline[0] == DOCKERD.encode() and str(data_root).encode() in cmdline:
        for sig, wait in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 30.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not Path(f"/proc/{pid}").exists():
                break
    if run_dir.parent == Path("/tmp") and run_dir.name.startswith("erofs-dockerd-"):
        _clean_run_dir(run_dir, data_root)
    owner.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def base_key() -> str:
    """What the base image is made of, hashed: suite, mirror, packages and the recipe."""
    text = "\n".join([BASE_SUITE, BASE_MIRROR, " ".join(BASE_INCLUDE), BASE_RECIPE])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_rootfs_tar() -> Path:
    """A Debian bookworm minbase root file system with python3 as a tar, made once with
    debootstrap and cached under ~/.cache/erofs-converter/docker/ by its inputs."""
    cache = cache_root() / "docker" / "base"
    tar = cache / f"debian-{BASE_SUITE}-python3-{base_key()}.tar"
    if tar.is_file():
        return tar
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="erofs-base-", dir=cache) as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_INCLUDE)}",
                               BASE_SUITE, str(rootfs), BASE_MIRROR],
                              capture_output=True, text=True, timeout=1200, check=False)
        if proc.returncode != 0:
            raise EngineError(f"debootstrap {BASE_SUITE} failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                              f"\n{proc.stderr[-2000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/locale", "var/log"):
            for child in (rootfs / junk).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                elif child.name != "lock":
                    child.unlink()
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        partial = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "--sort=name", "-C", str(rootfs), "-cf", str(partial), "."],
                       check=True, capture_output=True, timeout=600)
        partial.replace(tar)
    return tar


def import_base(engine: Engine) -> str:
    """The base image in ``engine`` (``docker import`` of the cached root file system)."""
    ref = f"erofs-converter-test-base:{base_key()}"
    if not engine.has_image(ref):
        tar = base_rootfs_tar()
        engine.run_docker(["import", "--change", 'CMD ["/bin/bash"]', str(tar), ref], timeout=600)
    return ref


@dataclass(frozen=True)
class PipConf:
    """A pip.conf for the image build (a BuildKit secret): this machine's package index, if it is
    not pip's default, and a marker line that must never show up in the image."""

    path: Path
    marker: str


def host_pip_settings() -> dict[str, str]:
    """This machine's effective pip settings (``pip config list``: files and PIP_* variables)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          timeout=120, check=False)
    settings: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.rpartition(".")[2]] = value.strip().strip("'\"")
    return settings


def pip_conf(directory: Path, marker: str) -> PipConf:
    lines = ["[global]", f"# {marker}"]
    index = host_pip_settings().get("index-url", "")
    if index.startswith(("http://", "https://")):  # file: indexes don't exist inside the build
        lines.append(f"index-url = {index}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pip.conf"
    path.write_text("\n".join(lines) + "\n")
    return PipConf(path=path, marker=marker)


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    seconds: float
    log: Path


def make_image(engine: Engine, *, tag: str, base: str, conf: PipConf, log: Path) -> BuiltImage:
    """``make image`` (docker build of docker/Dockerfile) on ``base`` with ``--network host``; the
    Makefile passes this machine's pip CA bundle as a secret. The full log goes to ``log``."""
    args = ["make", "-s", "-C", str(REPO), "image", f"DOCKER={DOCKER}", f"IMAGE={tag}", f"BASE_IMAGE={base}",
            f"PIP_CONF={conf.path}", "DOCKER_BUILD_ARGS=--network host --progress plain"]
    start = time.monotonic()
    proc = subprocess.run(["nice", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=engine.env(), timeout=1800, check=False)
    seconds = time.monotonic() - start
    log.write_bytes(proc.stdout)
    if proc.returncode != 0:
        raise EngineError(f"make image IMAGE={tag} failed ({proc.returncode}); log {log}:\n"
                          f"{proc.stdout.decode(errors='replace')[-5000:]}")
    return BuiltImage(ref=tag, seconds=seconds, log=log)
