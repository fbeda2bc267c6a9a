"""The tool's container image (docker/Dockerfile) built on a local Debian base: what is in it."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from converter.erofs.tools import MIN_VERSION, parse_version
from tests.docker.engine import DOCKER, BuiltImage, Engine

# The first test of a session waits for the base image (debootstrap) and a cold image build.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_help_works(docker_engine: Engine, tool_image: BuiltImage) -> None:
    """``docker run IMAGE --help`` (and with no arguments at all) prints the tool's usage."""
    for args in (["--help"], []):
        proc = docker_engine.run_docker(["run", "--rm", tool_image.ref, *args])
        assert proc.stdout.startswith("usage: convert"), proc.stdout
        assert "--to FORMAT" in proc.stdout


def test_runs_as_non_root(docker_engine: Engine, tool_image: BuiltImage) -> None:
    config = json.loads(docker_engine.run_docker(["image", "inspect", tool_image.ref]).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"   # numeric, so Kubernetes' runAsNonRoot can check it
    assert config["Entrypoint"] == ["erofs-convert"]
    ids = docker_engine.run_docker(["run", "--rm", "--entrypoint", "id", tool_image.ref]).stdout
    assert ids.startswith("uid=10001(erofs) gid=10001(erofs)"), ids


def test_current_erofs_utils_without_compilers(docker_engine: Engine, tool_image: BuiltImage) -> None:
    """mkfs.erofs >= 1.9.3 with lz4 is there; no compiler, no -dev package, no pip is."""
    script = ("mkfs.erofs -V; echo ---; for p in gcc cc c++ make autoconf ld pip pip3; do command -v $p; done;"
              " echo ---; dpkg-query -W -f '${Package}\\n'")
    out = docker_engine.run_docker(["run", "--rm", "--entrypoint", "sh", tool_image.ref, "-c", script]).stdout
    version, found, packages = out.split("---\n")
    parsed = parse_version(version)
    assert parsed is not None and parsed >= MIN_VERSION, version
    assert "lz4" in version
    assert found == "", f"build tools in the final image: {found}"
    dev = [p for p in packages.split() if p.endswith("-dev") or re.fullmatch(r"(gcc|g\+\+|cpp|binutils)(-\d+)?", p)]
    assert dev == []


def test_runs_the_compiled_modules(docker_engine: Engine, tool_image: BuiltImage) -> None:
    """The image compiled the per-entry modules and the extent loop for its own Python (the build
    context never carries the host's), and uses them: the same speed as a ``make setup`` checkout."""
    script = ("import converter.native as n, converter.erofs.zcodec as z, converter.layers.tarstream as t; "
              "print(n.status(), z.compiled_loop_available(), t.__file__.endswith('.so'))")
    out = docker_engine.run_docker(["run", "--rm", "--entrypoint", "python", tool_image.ref, "-c", script]).stdout
    assert out.split() == ["native", "True", "True"], out


def test_no_build_secret_or_host_configuration_in_image(docker_engine: Engine, tool_image: BuiltImage,
                                                        build_marker: str) -> None:
    """The pip configuration and CA bundle passed as build secrets are in no layer and no history,
    and no pip setting of the build host is in the image's environment."""
    save = subprocess.Popen([DOCKER, "save", tool_image.ref], stdout=subprocess.PIPE, env=docker_engine.env())
    assert save.stdout is not None
    needle, tail, size = build_marker.encode(), b"", 0
    while chunk := save.stdout.read(1 << 20):
        size += len(chunk)
        assert needle not in tail + chunk, "a build secret ended up in the image"
        tail = chunk[-len(needle):]
    assert save.wait() == 0 and size > 10 << 20
    history = docker_engine.run_docker(["history", "--no-trunc", "--format", "{{.CreatedBy}}", tool_image.ref]).stdout
    assert "/run/secrets" not in history and "PIP_" not in history
    env = json.loads(docker_engine.run_docker(["image", "inspect", tool_image.ref]).stdout)[0]["Config"]["Env"]
    assert not [e for e in env if e.startswith(("PIP_", "REQUESTS_CA", "SSL_CERT"))], env
    files = docker_engine.run_docker(["run", "--rm", "--entrypoint", "sh", tool_image.ref, "-c",
                                      "ls /etc/pip.conf /etc/xdg/pip /root/.config/pip ~/.config/pip "
                                      "/usr/local/bin/pip-with-secrets 2>/dev/null; true"]).stdout
    assert files == ""
