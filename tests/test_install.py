"""What a plain ``pip install`` gives (issue #18): every format, with no erofs-utils anywhere.

The package is built into a wheel from the files git tracks (what a clean clone holds), the
wheel is installed into a venv of its own, and that venv converts with ``PATH`` holding only its
own ``bin``, ``XDG_CACHE_HOME`` at an empty directory and ``HOME`` at the test's own (``make
setup`` caches its erofs-utils build under ``~/.cache``) and no ``EROFS_UTILS_DIR``: no
mkfs.erofs to be found, and no compiled modules (the wheel carries sources only, so
``converter.native`` runs them). Every conversion must give the pinned golden digests, the
same bytes ``make test`` checks from the compiled modules (tests/test_golden.py), and pass
``fsck.erofs``.

The third-party dependencies come from this test run's own environment (a ``.pth`` line in the
new venv), not from an index, so the test needs no network: the wheel's ``Requires-Dist`` must be
``pyproject.toml``'s dependencies, each of them installed here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from converter.testing.sample import sample_layers, write_oci_layout
from tests.support import golden
from tests.support.kernel import fsck

ROOT = Path(__file__).resolve().parent.parent


def _tracked_copy(dest: Path) -> Path:
    """The files git tracks, copied to ``dest`` (no build directories, caches or compiled modules)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if not src.is_file():  # deleted in the work tree but not yet in the index
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the package as installed from its wheel; returns the venv's directory."""
    work = tmp_path_factory.mktemp("install")
    src = _tracked_copy(work / "src")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, cwd=work)
    (wheel,) = wheels.glob("erofs_converter-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, cwd=work)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, cwd=work)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies: this environment's site-packages, after the venv's own (where the package is).
    # A directory named in a .pth file is not scanned for .pth files itself, so this checkout's
    # editable install (a finder registered by a .pth there) stays out.
    Path(purelib, "_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


@pytest.fixture(scope="module")
def compressible(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden compressible layer as a tar file (made once for the module's tests)."""
    source = tmp_path_factory.mktemp("layer") / "compressible.tar"
    source.write_bytes(golden.compressible_tar())
    return source


def _env(venv: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"EROFS_UTILS_DIR", "EROFS_CONVERTER_NATIVE", "PYTHONPATH", "VIRTUAL_ENV"}}
    (tmp_path / "empty-cache").mkdir(exist_ok=True)
    env.update(PATH=str(venv / "bin"), XDG_CACHE_HOME=str(tmp_path / "empty-cache"), HOME=str(tmp_path))
    return env


def _run(venv: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # cwd is not the checkout: ``python -m`` and ``-c`` put the cwd first on sys.path.
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], env=_env(venv, tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)


def test_the_wheel_holds_the_sources_and_needs_what_is_declared(installed: Path) -> None:
    record = next(installed.glob("lib/python*/site-packages/erofs_converter-*.dist-info/RECORD"))
    files = [line.split(",", 1)[0] for line in record.read_text().splitlines()]
    package = [f for f in files if f.startswith("converter/")]
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "converter/*.py"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert sorted(f for f in package if f.endswith(".py")) == sorted(tracked)
    assert not [f for f in package if f.endswith((".so", ".cdll", "_native.json"))], "compiled modules in the wheel"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wheel_meta = next(installed.glob("lib/python*/site-packages/erofs_converter-*.dist-info/METADATA")).read_text()
    declared = [line.split(": ", 1)[1] for line in wheel_meta.splitlines() if line.startswith("Requires-Dist: ")]
    assert sorted(r for r in declared if "extra ==" not in r) == sorted(project["dependencies"])
    for requirement in project["dependencies"]:  # what the installed package runs on, from this environment
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        assert metadata.version(name), f"{name} is not installed here"


def test_every_format_without_erofs_utils(installed: Path, compressible: Path, tmp_path: Path) -> None:
    probe = _run(installed, tmp_path, "python", "-c",
                 "import json, converter, converter.native as n\n"
                 "from converter.erofs.tools import find_program\n"
                 "print(json.dumps([converter.__file__, n.status(), str(find_program('mkfs.erofs'))]))")
    assert probe.returncode == 0, probe.stderr
    where, status, mkfs = json.loads(probe.stdout)
    assert where.startswith(str(installed)), where
    assert status.startswith("pure"), status
    assert mkfs == "None"

    pinned = golden.pinned()
    for fmt in golden.LAYER_FORMATS:
        image = tmp_path / f"{fmt.replace(',', '-').replace('=', '')}.erofs"
        done = _run(installed, tmp_path, "erofs-convert", "layer", str(compressible), "-o", str(image), "--to", fmt,
                    "--bottom")
        assert done.returncode == 0 and done.stderr == "", f"{fmt}: {done.stderr}"
        assert "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest() == pinned[f"layer {fmt}"], fmt
        fsck(image)

    # The image command too, every conversion of the golden set that does not ask for mkfs.erofs.
    layout = write_oci_layout(tmp_path / "src", sample_layers(), tag="v1")
    for name, flags in golden.CONVERSIONS.items():
        if "mkfs" in flags:
            continue
        dest = tmp_path / f"dst-{name.replace('+', '-').replace(',', '-').replace('=', '')}"
        done = _run(installed, tmp_path, "convert", f"oci:{layout.path}:v1", "--dest", f"oci:{dest}:x", "-q", *flags)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        digest = done.stdout.strip().rsplit("@", 1)[1]
        manifest = json.loads((dest / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())
        assert {"config": manifest["config"]["digest"], "layers": [d["digest"] for d in manifest["layers"]]} == \
            pinned[name], name


def test_asking_for_mkfs_there_is_one_clear_line(installed: Path, compressible: Path, tmp_path: Path) -> None:
    done = _run(installed, tmp_path, "erofs-convert", "layer", str(compressible), "-o", str(tmp_path / "x.erofs"),
                "--to", "erofs+lz4", "--builder", "mkfs", "--bottom")
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "mkfs.erofs" in done.stderr and "make setup" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.erofs").exists()
