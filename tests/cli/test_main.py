"""``converter.cli.main``: how failures are rendered and which exit status they get."""

from __future__ import annotations

import gc
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import converter.convert.layer as layer_module
from converter.cli import main
from converter.convert.tuning import GC_GEN0_THRESHOLD, LAYER_SWITCH_INTERVAL
from converter.errors import ConverterError
from converter.testing.sample import SampleLayout, sample_layers, write_oci_layout

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleLayout:
    return write_oci_layout(tmp_path_factory.mktemp("sample") / "layout", sample_layers(), tag="v1")


def test_a_bug_in_a_worker_is_an_internal_error_with_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sample: SampleLayout,
        tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    # A patch reaches builds in this process only (build processes fork from a server that
    # imported the engine before it; tests/pipeline/test_buildproc.py has their bug path).
    monkeypatch.setattr(layer_module, "_parse_into", broken)
    rc = main([f"oci:{sample.path}:v1", "--dest", f"oci:{tmp_path / 'out'}:conv", "-q", "--no-build-processes"])
    out, err = capsys.readouterr()
    assert rc == 70 and out == ""
    lines = err.splitlines()
    assert lines[0] == "convert: internal error: TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    assert "Traceback (most recent call last):" in lines
    assert any("in broken" in line for line in lines), err  # the worker's frame
    assert any(line.startswith("(in the build stage of layer 1/3 sha256:") for line in lines), err


def test_user_errors_stay_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["ls", str(tmp_path / "missing.erofs")])
    _, err = capsys.readouterr()
    assert rc == 1 and len(err.splitlines()) == 1 and "Traceback" not in err


# --- the destination (#13 items 3, 8) ------------------------------------------------------------


def test_dest_equal_to_the_source_is_refused_unless_forced(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    before = (layout.path / "index.json").read_bytes()
    assert main([f"oci:{layout.path}:v1", "--dest", f"oci:{layout.path}/../layout:v1", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert: --dest oci:") and "is the source" in err and "--force" in err, err
    assert (layout.path / "index.json").read_bytes() == before  # nothing was written
    assert main([f"oci:{layout.path}:v1", "--dest", f"oci:{layout.path}:v1", "-q", "--force"]) == 0
    assert main(["r.example/app:1", "--dest", "r.example/app:1"]) == 2
    assert "is the source" in capsys.readouterr().err


def test_dest_without_a_tag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["r.example/app:1", "--dest", "r.example/mirror/app"]) == 2
    err = capsys.readouterr().err
    assert err == ("convert: --dest r.example/mirror/app: give a tag (--dest r.example/mirror/app:TAG); without "
                   "--dest the result goes to the source repository under <tag>-<format>\n")


# --- JSON logs: every stderr line is JSON (#13 item 6) ----------------------------------------------


@pytest.mark.parametrize("argv", [
    ["oci:/nonexistent/layout:v1", "--log-format", "json"],
    ["--log-format=json", "r.example/app:1", "--bogus"],
    ["mirror", "/nonexistent/job.yaml", "--log-format", "json"],
], ids=["failure", "usage", "mirror"])
def test_json_logs_end_with_a_json_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc = main(argv)
    lines = capsys.readouterr().err.splitlines()
    assert rc in (1, 2) and lines
    records = [json.loads(line) for line in lines]  # every line parses
    assert records[-1]["level"] == "error" and records[-1]["exit_status"] == rc and records[-1]["error"]


def test_json_internal_error_carries_the_traceback(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], sample: SampleLayout,
                                                   tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(layer_module, "_parse_into", broken)
    rc = main([f"oci:{sample.path}:v1", "--dest", f"oci:{tmp_path / 'out'}:conv", "--log-format", "json",
               "--no-build-processes"])  # the patch reaches builds in this process only
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert rc == 70
    assert records[-1]["event"] == "internal_error" and "Traceback" in records[-1]["exception"]


# --- -o - (#13 item 7) -----------------------------------------------------------------------------


def test_layer_output_dash_is_stdout(tmp_path: Path) -> None:
    tar = tmp_path / "layer.tar"
    tar.write_bytes(sample_layers()[0])
    env = {**os.environ, "PYTHONPATH": str(REPO), "SOURCE_DATE_EPOCH": "0"}
    cli = [sys.executable, "-m", "converter.cli", "layer", str(tar)]
    subprocess.run([*cli, "-o", str(tmp_path / "file.erofs")], check=True, env=env, cwd=tmp_path)
    piped = subprocess.run([*cli, "-o", "-"], check=True, env=env, cwd=tmp_path, capture_output=True)
    assert piped.stdout == (tmp_path / "file.erofs").read_bytes() and piped.stderr == b""
    assert not (tmp_path / "-").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.erofs", "layer.tar"]


def test_layer_output_dash_refuses_a_terminal(tmp_path: Path) -> None:
    tar = tmp_path / "layer.tar"
    tar.write_bytes(sample_layers()[0])
    code = ("import sys; from converter.cli.main import main; sys.exit(main(sys.argv[1:]))")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", code, "layer", str(tar), "-o", "-"], stdout=follower,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                              timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert proc.stderr == b"convert: layer: -o -: refusing to write an EROFS image to a terminal; redirect stdout\n"


# --- subcommands and flags (#13 item 10) ----------------------------------------------------------


@pytest.mark.parametrize(("word", "meant"), [("mirorr", "mirror"), ("layr", "layer")])
def test_a_mistyped_subcommand_is_refused_with_a_suggestion(capsys: pytest.CaptureFixture[str], word: str,
                                                            meant: str) -> None:
    assert main([word, "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convert: unknown command {word!r}: did you mean 'convert {meant}'?"), err


def test_a_command_runs_with_a_higher_first_collector_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    # A layer's tree is tens of thousands of long-lived objects: at CPython's default of 700 the
    # collector runs hundreds of times per layer (README, Performance).
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, saved[1], saved[2])
        assert main(["layr", "x"]) == 2
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, saved[1], saved[2])
        assert GC_GEN0_THRESHOLD >= 10_000
        gc.set_threshold(0, saved[1], saved[2])  # switched off: left off
        assert main(["layr", "x"]) == 2
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*saved)
    capsys.readouterr()


@pytest.mark.parametrize("argv", [
    ["r.example/app:1", "--de", "r.example/x:1"],
    ["mirror", "job.yaml", "--dry"],
    ["layer", "in.tar", "-o", "x.erofs", "--bot"],
], ids=["image", "mirror", "layer"])
def test_abbreviated_options_are_refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["layer", "in.tar", "-o", "x.erofs", "--builder", "rust"],
                                  ["r.example/app:1", "--builder", "Python"], ["mirror", "job.yaml", "--builder", ""]])
def test_an_unknown_builder_is_refused_naming_the_choices(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--builder: unknown builder {argv[-1]!r}; choose one of auto, python, mkfs" in err, err


@pytest.mark.parametrize("argv", [["r.example/app:1", "-q", "-v"], ["mirror", "job.yaml", "-v", "-q"]])
def test_quiet_and_verbose_exclude_each_other(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["layer", "--help"], ["ls", "--help"], ["cat", "--help"],
                                  ["mirror", "--help"]])
def test_every_help_has_examples(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    assert "example" in text
    assert "converter/" not in text  # no pointer into the source tree


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["mirror", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        for flag in ("--media-type-profile", "--log-format", "-q, --quiet", "-v, --verbose", "--builder",
                     "--layer-jobs N, --jobs N" if argv == ["--help"] else "--image-jobs N, --jobs N",
                     "--retries N", "--timeout SECONDS", "--max-expanded SIZE", "--max-entries N"):
            if flag == "--media-type-profile" and argv != ["--help"]:
                continue
            assert flag in text, (argv, flag)


def test_mirror_help_documents_the_job_schema(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["mirror", "--help"])
    text = capsys.readouterr().out
    for key in ("defaults:", "dest:", "images:", "source:", "tags:", "cache_repo:", "${VAR}"):
        assert key in text, key


def test_jobs_zero_is_the_default_everywhere(capsys: pytest.CaptureFixture[str], sample: SampleLayout,
                                             tmp_path: Path) -> None:
    assert main([f"oci:{sample.path}:v1", "--dest", f"oci:{tmp_path / 'out'}:conv", "-q", "--jobs", "0"]) == 0
    capsys.readouterr()
    for argv in (["r.example/a:1", "--layer-jobs", "-1"], ["mirror", "job.yaml", "--image-jobs", "-1"]):
        assert main(argv) == 2
        assert "not a number of jobs (1 or more; 0 = the default)" in capsys.readouterr().err


# --- messages (#13 item 9) -------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "compress", "kind"), [("ls", True, "gzip"), ("cat", False, "tar")])
def test_ls_of_a_layer_names_the_file_and_what_it_looks_like(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             command: str, compress: bool, kind: str) -> None:
    layout = write_oci_layout(tmp_path / "layout", sample_layers()[:1], compress=compress)
    manifest = json.loads((layout.path / "blobs" / "sha256" / layout.manifest_digest.split(":")[1]).read_bytes())
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes((layout.path / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]).read_bytes())
    assert main([command, str(layer), *(["/etc/os-release"] if command == "cat" else [])]) == 1
    err = capsys.readouterr().err
    assert err == (f"convert: reading {layer}: not an EROFS image, it looks like a {kind} file (a layer? "
                   f"`convert layer {layer} -o OUT.erofs` converts one)\n")


@pytest.mark.parametrize("collecting", [True, False])
def test_convert_layer_hands_the_gil_over_sooner(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path, collecting: bool) -> None:
    # One layer in one process: the read-ahead thread gets the GIL within LAYER_SWITCH_INTERVAL
    # and the cyclic collector pauses (converter/convert/tuning.py); the process's own settings
    # come back afterwards, a collector that was off stays off.
    import gc

    seen: list[tuple[float, bool]] = []

    def recording(*args: Any, **kwargs: Any) -> None:
        seen.append((sys.getswitchinterval(), gc.isenabled()))
        raise ConverterError("stopped here")

    monkeypatch.setattr(layer_module, "convert_layer", recording)
    before = sys.getswitchinterval()
    (gc.enable if collecting else gc.disable)()
    try:
        (tmp_path / "in.tar").write_bytes(bytes(1024))
        assert main(["layer", str(tmp_path / "in.tar"), "-o", str(tmp_path / "out.erofs")]) == 1
        assert seen == [(pytest.approx(LAYER_SWITCH_INTERVAL), False)] and before > LAYER_SWITCH_INTERVAL
        assert sys.getswitchinterval() == before
        assert gc.isenabled() is collecting
    finally:
        gc.enable()
    capsys.readouterr()
