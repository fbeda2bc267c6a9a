"""Per-layer progress events for the CLI's progress bars (and anything else that listens).

The pipeline calls the callback from its worker threads, so a callback must be thread-safe
and quick (``rich.progress.Progress.update`` is both). Byte counts are cumulative per stage so
a dropped or reordered event never makes a bar run backwards.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from converter.reference import Digest


class Stage(enum.StrEnum):
    """What is happening to a layer: its bytes are pulled, converted, or pushed."""

    PULL = "pull"
    CONVERT = "convert"
    PUSH = "push"


class PushOutcome(enum.StrEnum):
    """How a converted layer reached the destination."""

    PUSHED = "pushed"  # uploaded
    EXISTS = "exists"  # the destination already had the blob


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``completed`` of ``total`` bytes of ``stage`` for layer ``index`` of ``platform``.

    For PULL and CONVERT the bytes are source (compressed) bytes; for PUSH they are bytes of
    the EROFS blob. ``done`` marks the stage's last event; ``note`` says why a stage finished
    without moving bytes ("exists", "mounted").
    """

    platform: str
    index: int
    layer: Digest
    stage: Stage
    completed: int
    total: int | None
    done: bool = False
    note: str = ""


ProgressCallback = Callable[[ProgressEvent], None]
