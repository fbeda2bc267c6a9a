"""Cancelling the pipeline's CancelScope kills a running mkfs.erofs at once (Ctrl-C is prompt)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from converter.cancel import CancelScope
from converter.erofs.mkfs import build_with_mkfs
from converter.erofs.target import parse_format
from converter.errors import Cancelled
from converter.layers.model import Inode, NodeKind
from converter.layers.spool import SpoolSink
from tests.support.data import BytesData


def test_cancel_kills_mkfs_promptly(tmp_path: Path) -> None:
    data = os.urandom(48 << 20)  # lzma needs many seconds for this
    spool = SpoolSink(tmp_path)
    ref = spool.add(BytesData(data), len(data))
    root = Inode(NodeKind.DIR, 0o755, children={b"big": Inode(NodeKind.REG, 0o644, size=len(data), data=ref)})
    scope = CancelScope()
    outcome: list[BaseException | None] = []

    def build() -> None:
        with scope.entered():
            try:
                build_with_mkfs(root, spool, tmp_path / "out.erofs", fmt=parse_format("erofs+lzma"), build_time=0,
                                uuid=uuid.UUID(int=0), bottom=True)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

    worker = threading.Thread(target=build)
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive(), "mkfs finished before it could be cancelled; the test needs a slower build"
    started = time.monotonic()
    scope.cancel()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    assert not (tmp_path / "out.erofs").exists()
    spool.close()


def test_cancelled_scope_refuses_to_start_mkfs(tmp_path: Path) -> None:
    spool = SpoolSink(tmp_path)
    scope = CancelScope()
    scope.cancel()
    with scope.entered(), pytest.raises(Cancelled):
        build_with_mkfs(Inode(NodeKind.DIR, 0o755, children={}), spool, tmp_path / "o.erofs",
                        fmt=parse_format("erofs+lz4"), build_time=0, uuid=uuid.UUID(int=0), bottom=True)
    spool.close()
