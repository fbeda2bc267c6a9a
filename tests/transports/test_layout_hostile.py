"""Hostile OCI layouts and destination directories: special files where JSON or blobs should be,
oversized and deeply nested JSON, and symlinks planted where temporary files go. Each must end
in one clean line (exit 1) with bounded memory, and never write through a planted path."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from converter.files import create_temp
from converter.oci.mediatypes import MediaType
from converter.pipeline import ConvertOptions, convert_image
from converter.reference import Digest, OciLayoutRef
from converter.testing.sample import Item, layer_tar, write_oci_layout
from converter.transports import LayoutSink, LayoutSource
from tests.support.measured import run_cli

PEAK_LIMIT = 300 * 1024 * 1024


def _layout(root: Path) -> Path:
    write_oci_layout(root, [layer_tar([Item("a.txt", data=b"hello\n")])])
    return root


def _manifest_blob(root: Path) -> Path:
    entry = json.loads((root / "index.json").read_text())["manifests"][0]
    return root / "blobs" / "sha256" / Digest.parse(entry["digest"]).hex


def _replace_with(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _huge(path: Path) -> None:
    path.write_bytes(b'{"schemaVersion": 2, "manifests": []' + b" " * (5 << 20) + b"}")


def _deep(path: Path) -> None:
    path.write_bytes(b"[" * 100_000)


# (what is replaced, by what, the one line expected on stderr after "convert: ")
CASES = {
    "index-dev-zero": ("index.json", _dev_zero, "reading oci:SRC/index.json: not a regular file"),
    "index-fifo": ("index.json", _fifo, "reading oci:SRC/index.json: not a regular file"),
    "index-huge": ("index.json", _huge, "reading oci:SRC/index.json: more than the limit of 4194304 bytes"),
    "index-deep": ("index.json", _deep, "parsing oci:SRC/index.json: invalid JSON: "),
    "manifest-dev-zero": ("manifest", _dev_zero, "reading blob sha256:"),
    "manifest-fifo": ("manifest", _fifo, "reading blob sha256:"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_layout_files_fail_cleanly_in_bounded_memory(case: str, tmp_path: Path) -> None:
    name, make, expected = CASES[case]
    src = _layout(tmp_path / "src")
    target = _manifest_blob(src) if name == "manifest" else src / name
    _replace_with(target, make)
    run = run_cli([f"oci:{src}:latest", "--dest", f"oci:{tmp_path / 'out'}:x", "--workdir", str(tmp_path / "w")],
                  timeout=60)
    assert run.status == 1, run.stderr
    (line,) = run.error_lines
    assert line.replace(str(src), "SRC").startswith("convert: " + expected), line
    if name == "manifest":
        assert line.endswith("not a regular file"), line
    assert run.peak < PEAK_LIMIT, f"peak RSS {run.peak >> 20} MiB"


def test_hostile_oci_layout_file_in_the_destination(tmp_path: Path) -> None:
    src = _layout(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "oci-layout").symlink_to("/dev/zero")
    run = run_cli([f"oci:{src}:latest", "--dest", f"oci:{out}:x", "--workdir", str(tmp_path / "w")], timeout=60)
    assert run.status == 1
    assert run.error_lines == [f"convert: reading oci:{out}/oci-layout: not a regular file"]
    assert run.peak < PEAK_LIMIT


# --- temporary files: never through a planted path ---------------------------------------------------


@pytest.fixture
def other_filesystem() -> Iterator[Path]:
    """A directory on another filesystem than tmp_path (/dev/shm), so hard links fail and blobs are copied."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        yield Path(d)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(b"precious\n")
    path.chmod(0o600)
    return path


def _assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_push_blob_never_writes_through_a_planted_temp_path(tmp_path: Path, other_filesystem: Path, victim: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"blob data\n"
    digest = Digest.from_bytes(data)
    source = other_filesystem / "blob"
    source.write_bytes(data)
    sink = LayoutSink(OciLayoutRef(tmp_path / "out"))
    blobs = tmp_path / "out" / "blobs" / "sha256"
    # Every name a writer could pick is planted: the old fixed one, and the first random one.
    (blobs / f".tmp-{digest.hex}-{os.getpid()}-{threading.get_ident()}").symlink_to(victim)
    (blobs / ".tmp-planted").symlink_to(victim)
    names = iter(["planted", "fresh1", "fresh2", "fresh3"])
    monkeypatch.setattr("converter.files.secrets.token_hex", lambda _n: next(names))
    sink.push_blob(source, digest, len(data))
    _assert_untouched(victim)
    final = blobs / digest.hex
    assert stat.S_ISREG(final.lstat().st_mode) and final.read_bytes() == data
    assert sink.has_blob(digest)


def test_create_temp_refuses_existing_paths(tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".x-a").symlink_to(victim)
    (tmp_path / ".x-b").write_bytes(b"other")
    names = iter(["a", "b", "c"])
    monkeypatch.setattr("converter.files.secrets.token_hex", lambda _n: next(names))
    fd, path = create_temp(tmp_path, ".x-")
    os.close(fd)
    assert path == tmp_path / ".x-c" and stat.S_IMODE(path.stat().st_mode) == 0o600
    _assert_untouched(victim)
    assert (tmp_path / ".x-b").read_bytes() == b"other"


def test_layout_files_follow_the_umask(tmp_path: Path, other_filesystem: Path) -> None:
    src = _layout(tmp_path / "src")
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        for workdir in (tmp_path / "w", other_filesystem):  # hard-linked blobs, then copied ones
            dest = OciLayoutRef(out, f"t{workdir == other_filesystem:d}")
            convert_image(LayoutSource(OciLayoutRef(src, "latest")), OciLayoutRef(src, "latest"), LayoutSink(dest),
                          dest, options=ConvertOptions(workdir=workdir))
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o640" for p in files}
    assert not [p for p in out.rglob(".tmp-*")]
    assert MediaType.OCI_INDEX.value in (out / "index.json").read_text()
