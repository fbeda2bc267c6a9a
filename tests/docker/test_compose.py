"""docker/compose.yaml with Docker Compose v2 (Debian sid's docker-compose): both services build
here (the registry from Debian's docker-registry package), and `docker compose run convert`
converts through the compose registry."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from converter.reference import parse_reference
from converter.registry.client import RegistryClient
from converter.testing.localregistry import free_port
from converter.testing.mirror_demo import push_layout_image
from converter.testing.sample import sample_layers, write_oci_layout
from tests.docker.engine import REPO, BuiltImage, Engine, EngineError, host_pip_settings, sid_tool
from tests.docker.helpers import host_convert

# The first test of a session waits for the base image (debootstrap) and a cold image build.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

COMPOSE_PLUGIN = sid_tool("docker-compose", "usr/libexec/docker/cli-plugins/docker-compose")


@dataclass(frozen=True)
class Project:
    engine: Engine
    files: tuple[Path, ...]
    env: dict[str, str]
    host_port: int

    def compose(self, *args: str, timeout: float = 600) -> str:
        cmd = ["compose", *(a for f in self.files for a in ("-f", str(f))), *args]
        return self.engine.run_docker(cmd, env=self.env, timeout=timeout).stdout


@pytest.fixture(scope="module")
def project(docker_engine: Engine, base_image: str, tool_image: BuiltImage,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The compose project, its registry up (published on a free loopback port, not 5000, which
    may be taken on a shared machine; builds use the host's network: this engine has no bridge)."""
    if not COMPOSE_PLUGIN.is_file():
        raise EngineError(f"{COMPOSE_PLUGIN} is missing: run scripts/setup-system.sh (sid's docker-compose)")
    plugins = Path(docker_engine.env()["DOCKER_CONFIG"]) / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "docker-compose").unlink(missing_ok=True)
    (plugins / "docker-compose").symlink_to(COMPOSE_PLUGIN)
    port = free_port()
    override = tmp_path_factory.mktemp("compose") / "test-override.yaml"
    override.write_text(
        "services:\n"
        "  registry:\n"
        "    build:\n      network: host\n"
        f"    ports: !override\n      - \"127.0.0.1:{port}:5000\"\n"
        "  convert:\n"
        "    build:\n      network: host\n")
    ca = host_pip_settings().get("cert") or os.environ.get("PIP_CERT", "")
    env = docker_engine.env(
        COMPOSE_PROJECT_NAME=f"erofs-test-{uuid.uuid4().hex[:8]}", REGISTRY_BASE_IMAGE=base_image,
        BASE_IMAGE=base_image, EROFS_CONVERTER_IMAGE="erofs-converter-compose:test",
        REGISTRY_IMAGE="erofs-converter-registry:test", **({"PIP_CA": ca} if ca else {}))
    proj = Project(docker_engine, (REPO / "docker" / "compose.yaml", override), env, port)
    try:
        # both services: the tool's build mostly hits the cache `make image` (tool_image) filled
        proj.compose("build")
        proj.compose("up", "-d", "registry")
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EngineError("the compose registry did not answer:\n" + proj.compose("logs", "registry"))
            time.sleep(0.3)
        yield proj
    finally:
        docker_engine.run_docker(["compose", "-f", str(proj.files[0]), "-f", str(override), "down", "-v",
                                  "--remove-orphans"], env=env, check=False, timeout=300)


def test_compose_uses_no_docker_hub_image() -> None:
    """Every image of the compose file is built here (from a base given as a variable)."""
    text = (REPO / "docker" / "compose.yaml").read_text()
    assert "registry:2" not in text
    for dockerfile in (REPO / "docker" / "Dockerfile", REPO / "docker" / "registry" / "Dockerfile"):
        froms = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]
        assert froms and all(f == "${BASE_IMAGE}" for f in froms), (dockerfile, froms)


def test_compose_run_converts_through_the_compose_registry(project: Project, tmp_path: Path) -> None:
    """Push the sample to the compose registry from the host; `compose run convert` names it
    registry:5000 inside the compose network (plain HTTP by CONVERT_PLAIN_HTTP) and pushes the
    same manifest as the host's conversion: provenance records the source digest, never where the
    source was pulled from (registry:5000/… inside compose against 127.0.0.1:PORT/… on the host)."""
    layout = tmp_path / "app"
    write_oci_layout(layout, sample_layers())
    published = f"127.0.0.1:{project.host_port}"
    with RegistryClient() as client:
        push_layout_image(client, layout, [parse_reference(f"{published}/sample/app:1.0")])
    out = project.compose("run", "--rm", "convert", "registry:5000/sample/app:1.0", "--to", "erofs+lz4",
                          "--dest", "registry:5000/converted/app:compose", "-q")
    line = out.strip().splitlines()[-1]
    assert line.startswith("registry:5000/converted/app:compose@sha256:"), out
    host_convert(f"{published}/sample/app:1.0", "--to", "erofs+lz4", "--dest", f"{published}/converted/app:host")
    with RegistryClient() as client:
        in_compose, on_host = (json.loads(client.get_manifest(published, "converted/app", tag)[0])
                               for tag in ("compose", "host"))
    assert in_compose["config"] == on_host["config"]
    assert in_compose["layers"] == on_host["layers"]
    assert in_compose == on_host


def test_compose_registry_runs_as_its_own_user(project: Project) -> None:
    ps = project.compose("ps", "-q", "registry").split()
    assert len(ps) == 1
    user = project.engine.run_docker(["exec", ps[0], "id", "-un"]).stdout.strip()
    assert user == "docker-registry"
