"""Session fixtures of the container tests: a private dockerd, the local base image, the tool's image."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.engine import BuiltImage, Engine, cache_root, import_base, make_image, pip_conf, private_dockerd

TOOL_TAG = "erofs-converter:test"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """dockerd of Debian's docker.io with a data root kept in the cache (images, build cache)."""
    with private_dockerd(cache_root() / "docker" / "engine") as engine:
        yield engine


@pytest.fixture(scope="session")
def base_image(docker_engine: Engine) -> str:
    """Debian bookworm minbase + python3 (debootstrap, cached), imported into the engine."""
    return import_base(docker_engine)


@pytest.fixture(scope="session")
def build_marker() -> str:
    return f"build-secret-marker-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def tool_image(docker_engine: Engine, base_image: str, build_marker: str,
               tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """``make image`` on the local base, with the host's pip index and CA as build secrets."""
    work = tmp_path_factory.mktemp("image-build")
    conf = pip_conf(work / "secrets", build_marker)
    built = make_image(docker_engine, tag=TOOL_TAG, base=base_image, conf=conf, log=work / "build.log")
    print(f"\ndocker build of {TOOL_TAG}: {built.seconds:.1f} s (log {built.log})")
    return built


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the image's non-root user can read when it is bind-mounted (0755, files 0644)."""
    path = Path(tempfile.mkdtemp(prefix="erofs-ctr-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

