"""The compiled per-entry modules (converter/native.py): used only while they match the sources,
and the same bytes either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from converter import native
from tests.support import golden

ROOT = Path(__file__).resolve().parent.parent


def _package(tmp_path: Path) -> Path:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("A = 1\n")
    (package / "sub" / "b.py").write_text("B = 2\n")
    (package / "sub" / "notes.txt").write_text("not a source\n")
    return package


def _manifest(tmp_path: Path, package: Path, **override: object) -> Path:
    manifest = tmp_path / "_native.json"
    doc = {"python": native.python_tag(), "sources": native.fingerprint(package)}
    doc.update(override)
    manifest.write_text(json.dumps(doc))
    return manifest


def test_a_build_matching_the_sources_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    package = _package(tmp_path)
    assert sorted(native.fingerprint(package)) == ["a.py", os.path.join("sub", "b.py")]
    assert native._why_not_native(_manifest(tmp_path, package), package) is None


@pytest.mark.parametrize("change", ["edited", "added", "removed", "no manifest", "other python", "garbage",
                                    "switched off"])
def test_anything_else_runs_the_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    package = _package(tmp_path)
    manifest = _manifest(tmp_path, package)
    if change == "edited":  # same size, later mtime: what an editor's save looks like
        source = package / "a.py"
        st = source.stat()
        source.write_text("A = 3\n")
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    elif change == "added":
        (package / "sub" / "c.py").write_text("C = 3\n")
    elif change == "removed":
        (package / "sub" / "b.py").unlink()
    elif change == "no manifest":
        manifest.unlink()
    elif change == "other python":
        manifest = _manifest(tmp_path, package, python=".cpython-399-x86_64-linux-gnu.so")
    elif change == "garbage":
        manifest.write_text("{not json")
    else:
        monkeypatch.setenv(native.ENV, "0")
    why = native._why_not_native(manifest, package)
    assert why is not None and why != ""


def test_the_source_finder_serves_only_the_compiled_modules() -> None:
    finder = native._SourceFirst(ROOT / "converter")
    spec = finder.find_spec("converter.erofs.writer", None)
    assert spec is not None and spec.origin == str(ROOT / "converter" / "erofs" / "writer.py")
    assert finder.find_spec("converter.erofs.reader", None) is None  # not compiled: the usual import


def test_ci_runs_the_compiled_modules() -> None:
    """`make test` builds them first (Makefile): in CI, green means the compiled code ran."""
    import converter.erofs.writer
    import converter.layers.tarstream

    if not os.environ.get("CI") and native.status() != "native":
        pytest.skip(f"compiled modules not in use here ({native.status()})")
    assert native.status() == "native"
    assert converter.erofs.writer.__file__.endswith(native.python_tag())
    assert converter.layers.tarstream.__file__.endswith(native.python_tag())


def test_the_sources_give_the_pinned_bytes_too(tmp_path: Path) -> None:
    """What a `pip install` without the compile step runs: the golden conversions, from the
    sources in a process of their own, give the pinned digests (which this process's modules,
    compiled in CI, give as well: tests/test_golden.py)."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from converter import native\n"
        "import converter.erofs.writer\n"
        "from tests.support import golden\n"
        "work = Path(sys.argv[1])\n"
        "(work / 's').mkdir()\n"
        "(work / 'l').mkdir()\n"
        "out = {'status': native.status(), 'writer': converter.erofs.writer.__file__,\n"
        "       'sample': golden.convert_sample(work / 's'), 'layers': golden.convert_layers(work / 'l')}\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, native.ENV: "0"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["status"] == f"pure: {native.ENV}=0"
    assert out["writer"].endswith("writer.py")
    pinned = golden.pinned()
    for name, digests in out["sample"].items():
        assert digests == pinned[name], name
    for name, digest in out["layers"].items():
        assert digest == pinned[name], name
