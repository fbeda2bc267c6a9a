"""Fixtures for pipeline tests: the real loopback registry from tests.support.registry, and
Python's own SIGINT handler for tests that interrupt the main thread."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.support.registry import registry_open

__all__ = ["python_sigint", "registry_open"]


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """SIGINT handled by Python (``KeyboardInterrupt``) for the test, whatever ran before.

    ``_thread.interrupt_main()`` does nothing while SIGINT is SIG_DFL, which is how the CLI's
    handler leaves it after one Ctrl-C: a test that ran ``converter.cli.main`` and interrupted
    it would otherwise disarm every later Ctrl-C test.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
