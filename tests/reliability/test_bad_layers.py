"""Every hostile layer of the catalogue through the real CLI (`convert layer IN -o OUT`).

A failure must be exactly one stderr line naming the layer (and the member, where there is
one), exit status 1, no traceback, no output file and no temp file left behind, within the
case's time budget. A layer the spec gives a meaning must convert, pass fsck.erofs, and hold
what the catalogue's check expects; a few are also mounted by the kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from converter.cli import main
from converter.convert.layer import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_EXPANDED, LayerOptions
from converter.erofs.reader import ErofsImage
from converter.erofs.target import parse_format
from tests.reliability import catalogue
from tests.reliability.bad_inputs import CATALOGUE, LZ4, RAW, BadInput, Image, by_name
from tests.support.kernel import fsck, mounted
from tests.support.tarcraft import archive, gz, member

pytestmark = pytest.mark.timeout(120)

FORMATS = (RAW, LZ4)
REPO = Path(__file__).resolve().parents[2]


def _cases(*, mount_only: bool = False) -> list[object]:
    return [pytest.param(case, fmt, id=f"{case.name}-{fmt}") for case in CATALOGUE for fmt in FORMATS
            if case.mount or not mount_only]


def run_case(case: BadInput, fmt: str, workdir: Path,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, float, Path, Path]:
    """Convert the case's layer; (status, stdout, stderr, seconds, input path, output path)."""
    src = workdir / f"{case.name}.layer"
    src.write_bytes(case.build())
    out = workdir / f"{case.name}.erofs"
    capsys.readouterr()
    started = time.monotonic()
    rc = main(["layer", str(src), "-o", str(out), "--to", fmt, *case.args])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, elapsed, src, out


@pytest.mark.parametrize(("case", "fmt"), _cases())
def test_bad_layer(case: BadInput, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err, elapsed, src, dest = run_case(case, fmt, tmp_path, capsys)
    assert elapsed < case.budget, f"{case.name} took {elapsed:.2f}s (budget {case.budget}s)"
    assert out == ""
    assert "Traceback" not in err
    if case.converts:
        assert rc == 0, err
        assert err == ""
        fsck(dest)
        if case.check is not None:
            with ErofsImage.open(dest) as reader:
                case.check(Image(dest, reader))
        return
    lines = err.splitlines()
    assert rc == 1, err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("convert: "), line
    assert case.expect in line, line
    assert f"layer {src}" in line, line
    if case.entry is not None:
        assert f"entry {case.entry!r}" in line, line
    assert not dest.exists(), "a failed conversion left its output file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name], "temp files left behind"


@pytest.mark.parametrize(("case", "fmt"), _cases(mount_only=True))
def test_kernel_mounts_converted_layer(case: BadInput, fmt: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err, _, _, dest = run_case(case, fmt, tmp_path, capsys)
    assert rc == 0, err
    assert case.mount_check is not None
    with mounted(dest) as root:
        case.mount_check(root)


def test_limits_have_defaults() -> None:
    """The layer engine is bounded out of the box; 0 on the command line lifts a limit."""
    options = LayerOptions(fmt=parse_format("erofs"))
    assert options.max_expanded == DEFAULT_MAX_EXPANDED == 64 << 30
    assert options.max_entries == DEFAULT_MAX_ENTRIES == 1_000_000


def test_zero_lifts_a_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "many.tar"
    src.write_bytes(archive(*(member(b"f%d" % i) for i in range(20))))
    assert main(["layer", str(src), "-o", str(tmp_path / "a.erofs"), "--max-entries", "10"]) == 1
    assert "too many entries: the limit is 10" in capsys.readouterr().err
    assert main(["layer", str(src), "-o", str(tmp_path / "b.erofs"), "--max-entries", "0",
                 "--max-expanded", "0"]) == 0


def test_limit_exactly_reached_converts(tmp_path: Path) -> None:
    """The limits are inclusive: a layer of exactly N entries / N expanded bytes converts."""
    data = archive(*(member(b"f%d" % i, b"x" * 100) for i in range(10)))
    src = tmp_path / "ten.tar"
    src.write_bytes(data)
    assert main(["layer", str(src), "-o", str(tmp_path / "a.erofs"), "--max-entries", "10",
                 "--max-expanded", str(len(data))]) == 0
    assert main(["layer", str(src), "-o", str(tmp_path / "b.erofs"), "--max-entries", "9"]) == 1
    assert main(["layer", str(src), "-o", str(tmp_path / "b.erofs"), "--max-expanded", str(len(data) - 1)]) == 1


@pytest.mark.parametrize("value", ["12Q", "-1", "lots", ""])
def test_bad_limit_flags_are_usage_errors(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "l.tar"
    src.write_bytes(archive(member(b"x")))
    assert main(["layer", str(src), "-o", str(tmp_path / "o.erofs"), "--max-expanded", value]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--max-expanded" in lines[0], lines


@pytest.mark.parametrize("size", ["1K", "1k", "1KiB", "1024", "1kb"])
def test_size_suffixes(size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "l.tar"
    src.write_bytes(archive(member(b"x", b"y" * 1025)))
    assert main(["layer", str(src), "-o", str(tmp_path / "o.erofs"), "--max-expanded", size]) == 1
    assert "limit of 1024 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bomb-gzip-file", "gzip-corrupt", "cve-2024-6232", "traversal-dotdot"])
def test_real_process_from_stdin(name: str, tmp_path: Path) -> None:
    """The installed entry point, reading the layer from a pipe: one line, exit 1, nothing written."""
    case = by_name(name)
    out = tmp_path / "out.erofs"
    proc = subprocess.run([sys.executable, "-m", "converter.cli", "layer", "-", "-o", str(out), *case.args],
                          input=case.build(), capture_output=True, cwd=REPO, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert case.expect in err and "layer stdin" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_disk_full_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC while writing the image: one line naming the layer (no OSError traceback), and
    neither the output nor its temporary is left on the full filesystem."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        src = tmp_path / "l.tar.gz"
        src.write_bytes(gz(archive(member(b"x", os.urandom(300_000)))))
        for fmt in FORMATS:
            rc = main(["layer", str(src), "-o", str(small / "out.erofs"), "--to", fmt])
            err = capsys.readouterr().err
            assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
            assert f"layer {src}" in err and "No space left on device" in err, err
            assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_output_must_be_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-o /dev/null` is refused up front: removing a failed output must never delete a device."""
    src = tmp_path / "bad.tar"
    src.write_bytes(by_name("traversal-dotdot").build())
    assert main(["layer", str(src), "-o", "/dev/null"]) == 2
    assert "the output must be a regular file" in capsys.readouterr().err
    assert Path("/dev/null").is_char_device()


def test_failure_keeps_an_existing_output(tmp_path: Path) -> None:
    """A failed re-conversion leaves the previous good image in place (built aside, renamed in)."""
    good, bad, out = tmp_path / "good.tar", tmp_path / "bad.tar", tmp_path / "out.erofs"
    good.write_bytes(archive(member(b"x", b"y")))
    bad.write_bytes(by_name("gzip-corrupt").build())
    assert main(["layer", str(good), "-o", str(out)]) == 0
    before = out.read_bytes()
    assert main(["layer", str(bad), "-o", str(out)]) == 1
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar", "good.tar", "out.erofs"]


def test_catalogue_doc_is_current() -> None:
    """The README's troubleshooting section shows what the program prints today (regenerate it
    with `python -m tests.reliability.catalogue --doc README.md`)."""
    doc = REPO / "README.md"
    text = doc.read_text()
    assert catalogue.document(text) == text, "README.md's troubleshooting table is stale; regenerate it"


def test_ls_of_far_future_mtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`convert ls` must list every image `convert layer` writes."""
    rc, _, err, _, _, out = run_case(by_name("mtime-far-future"), RAW, tmp_path, capsys)
    assert rc == 0, err
    assert main(["ls", str(out)]) == 0
    assert "/x" in capsys.readouterr().out
