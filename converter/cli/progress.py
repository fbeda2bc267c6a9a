"""Progress on a terminal for `convert SOURCE`: one row per layer and stage, and the closing summary line."""

from __future__ import annotations

import threading
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from converter.pipeline.options import ConvertResult
from converter.pipeline.progress import ProgressEvent, Stage
from converter.units import human_bytes


def summary_line(result: ConvertResult, seconds: float) -> str:
    """``4 layers, 138.8 MB → 126.0 MB in 2.4 s``: every platform's layers, source and EROFS bytes."""
    layers = [layer for platform in result.platforms for layer in platform.layers]
    plural = "" if len(layers) == 1 else "s"
    return (f"{len(layers)} layer{plural}, {human_bytes(sum(la.source_size for la in layers))} → "
            f"{human_bytes(sum(la.size for la in layers))} in {seconds:.1f} s")


class LayerBars:
    """rich progress rows, ``amd64 L1 f7f8f511 pull ━━━━  442.6/442.6 kB  12.3 MB/s``, that fit in
    80 columns. The rate is the stage's bytes over its time so far, so a push (which reports
    only its start and end) shows one too."""

    def __init__(self, console: Console | None = None, *, file: IO[str] | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=16), DownloadColumn(),
            TextColumn("{task.fields[rate]:>11}"),
            console=console or Console(stderr=file is None, file=file), transient=False, expand=False)
        self._tasks: dict[tuple[str, int, Stage], Any] = {}
        self._started: dict[Any, float] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> LayerBars:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def __call__(self, ev: ProgressEvent) -> None:
        key = (ev.platform, ev.index, ev.stage)
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                platform = ev.platform.removeprefix("linux/")
                label = f"{platform} L{ev.index + 1} {ev.layer.hex[:8]} {ev.stage.value:<7}"
                task = self._progress.add_task(label, total=ev.total, rate="")
                self._tasks[key] = task
                self._started[task] = time.monotonic()
            completed = ev.total if ev.done and ev.total else ev.completed
            elapsed = time.monotonic() - self._started[task]
            rate = ev.note or (f"{human_bytes(completed / elapsed)}/s" if completed and elapsed > 0 else "")
            self._progress.update(task, completed=completed, total=ev.total, rate=rate)
