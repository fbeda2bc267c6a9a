"""``converter.cli.main``: how failures are rendered and which exit status they get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import converter.convert.layer as layer_module
from converter.cli import main
from converter.testing.sample import SampleLayout, sample_layers, write_oci_layout


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleLayout:
    return write_oci_layout(tmp_path_factory.mktemp("sample") / "layout", sample_layers(), tag="v1")


def test_a_bug_in_a_worker_is_an_internal_error_with_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sample: SampleLayout,
        tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(layer_module, "_parse_into", broken)
    rc = main([f"oci:{sample.path}:v1", "--dest", f"oci:{tmp_path / 'out'}:conv", "-q"])
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
