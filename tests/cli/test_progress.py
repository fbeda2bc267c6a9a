"""Progress rows and the closing summary line of `convert SOURCE` (#13 item 13)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from converter.cli import main
from converter.cli.progress import LayerBars
from converter.pipeline.progress import ProgressEvent, Stage
from converter.reference import Digest
from converter.testing.sample import sample_layers, write_oci_layout


def _render(events: list[ProgressEvent]) -> str:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None, legacy_windows=False)
    with LayerBars(console) as bars:
        for event in events:
            bars(event)
            time.sleep(0.01)
    return out.getvalue()


def test_rows_fit_80_columns_and_show_every_speed() -> None:
    layer = Digest.from_bytes(b"layer")
    events = []
    for index in (0, 11):
        for stage in (Stage.PULL, Stage.CONVERT, Stage.PUSH):
            total = 123_456_789
            events.append(ProgressEvent(platform="linux/arm64/v8", index=index, layer=layer, stage=stage,
                                        completed=0, total=total))
            if stage is not Stage.PUSH:  # a push reports only its start and its end
                events.append(ProgressEvent(platform="linux/arm64/v8", index=index, layer=layer, stage=stage,
                                            completed=total // 2, total=total))
            events.append(ProgressEvent(platform="linux/arm64/v8", index=index, layer=layer, stage=stage,
                                        completed=total, total=total, done=True))
    text = _render(events)
    final = text.rsplit("\x1b[?25h", 1)[0] if "\x1b[?25h" in text else text
    rows = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in final.splitlines()]
    rows = [row.rstrip("\r") for row in rows if "L1 " in row or "L12 " in row]
    last = rows[-6:]  # the final frame: one row per layer and stage, none wrapped
    assert len(last) == 6 and all(len(row) <= 80 for row in last), last
    assert all(re.search(r"[\d.]+ [kMG]?B/s$", row.rstrip()) for row in last), last  # push too, never "?"
    assert all("?" not in row for row in last), last


def test_a_summary_line_ends_the_conversion(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "layout", sample_layers(), tag="v1")
    rc = main([f"oci:{layout.path}:v1", "--dest", f"oci:{tmp_path / 'out'}:conv", "--log-format", "console"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert re.fullmatch(r"3 layers, [\d.]+ [kM]B → [\d.]+ [kM]B in [\d.]+ s", err.splitlines()[-1]), err
    assert out.startswith("oci:") and len(out.splitlines()) == 1
