"""Fixtures shared by several test packages: a registry client, a per-test namespace in the
session's registry, Python's own SIGINT handler, and structlog's configuration restored."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest
import structlog

from converter.registry.client import RegistryClient
from tests.support.registry import RegistryServer


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient() as c:
        yield c


@pytest.fixture
def prefix(registry_open: RegistryServer) -> str:
    """``HOST/tNNNN``: a namespace of its own in the session's registry for each test."""
    return f"{registry_open.host}/t{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """The CLI configures structlog for the process; put the test session's config back."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


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
