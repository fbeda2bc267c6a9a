"""The containerized tool against real registries: the same bytes as on the host, and a mirror job."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from converter.reference import parse_reference
from converter.registry.client import RegistryClient
from converter.registry.credentials import DockerConfigCredentials
from converter.testing.mirror_demo import PLACEHOLDER_HOST, push_layout_image, push_sample_images
from converter.testing.sample import sample_layers, write_oci_layout
from tests.docker.engine import REPO, BuiltImage, Engine
from tests.docker.helpers import host_convert, readable_by_all
from tests.support.registry import RegistryServer

# The first test of a session waits for the base image (debootstrap) and a cold image build.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def source(registry_open: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The three-layer sample image in the open test registry."""
    ref = f"{registry_open.host}/ctr-{uuid.uuid4().hex[:8]}/app:1.0"
    layout = tmp_path_factory.mktemp("sample") / "app"
    write_oci_layout(layout, sample_layers())
    with RegistryClient() as client:
        push_layout_image(client, layout, [parse_reference(ref)])
    return ref


@pytest.mark.parametrize("fmt", ["erofs", "erofs+lz4"])
def test_same_digest_as_on_the_host(docker_engine: Engine, tool_image: BuiltImage, source: str, fmt: str) -> None:
    """The converted image is a function of the source and the options, not of where the tool runs:
    the container (its own Python, its own erofs-utils build) pushes the very manifest the host does."""
    name = source.rsplit(":", 1)[0]
    suffix = fmt.replace("+", "-")
    on_host = host_convert(source, "--to", fmt, "--dest", f"{name}-host:{suffix}")
    run = docker_engine.run_docker(["run", "--rm", "--network", "host", tool_image.ref, source, "--to", fmt,
                                    "--dest", f"{name}-container:{suffix}", "-q"])
    in_container = run.stdout.strip()
    assert on_host.startswith(f"{name}-host:{suffix}@sha256:"), on_host
    assert in_container.startswith(f"{name}-container:{suffix}@sha256:"), in_container
    print(f"\n{fmt}: host {on_host.split('@')[1]}  container {in_container.split('@')[1]}")
    assert in_container.split("@")[1] == on_host.split("@")[1]


def test_mirror_job_with_mounted_docker_config(docker_engine: Engine, tool_image: BuiltImage,
                                               registry_basic: RegistryServer, shared_dir: Path) -> None:
    """pipelines/local-sample.yaml run inside the container against a registry that needs a
    password, which only the read-only Docker config mounted at ~/.docker holds."""
    config = registry_basic.write_docker_config(shared_dir / "docker")
    with RegistryClient(credentials=DockerConfigCredentials(paths=[config])) as client:
        push_sample_images(client, registry_basic.host, shared_dir / "layouts")
    pipelines = shared_dir / "pipelines"
    pipelines.mkdir()
    job = (REPO / "pipelines" / "local-sample.yaml").read_text().replace(PLACEHOLDER_HOST, registry_basic.host)
    (pipelines / "local-sample.yaml").write_text(job)
    readable_by_all(shared_dir / "docker")
    readable_by_all(pipelines)

    def mirror() -> dict[str, int]:
        proc = docker_engine.run_docker([
            "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "-v", f"{shared_dir / 'docker'}:/home/erofs/.docker:ro", "-v", f"{pipelines}:/pipelines:ro",
            tool_image.ref, "mirror", "/pipelines/local-sample.yaml", "--report", "-", "--log-format", "json"])
        for secret in registry_basic.secrets():
            assert secret not in proc.stdout and secret not in proc.stderr
        summary: dict[str, int] = json.loads(proc.stdout)["summary"]
        return summary

    first = mirror()
    assert first["images"] == first["converted"] == 3 and first["failed"] == 0, first
    assert first["layers_reused"] > 0, first       # sample/base's layers came from the layer cache
    second = mirror()
    assert second["skipped"] == 3 and second["converted"] == 0, second
    with RegistryClient(credentials=DockerConfigCredentials(paths=[config])) as client:
        for repo, tag in [("mirror/sample/app", "1.0-erofs-lz4"), ("mirror/sample/base", "1.0-erofs-lz4"),
                          ("mirror/sample/app", "1.0-raw")]:
            data, _, _ = client.get_manifest(registry_basic.host, repo, tag)
            layers = json.loads(data)["layers"]
            assert layers and all(la["mediaType"].startswith("application/vnd.erofs") for la in layers)
