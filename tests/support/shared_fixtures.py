"""Fixtures shared by several test packages: a registry client, a per-test namespace in the
session's registry, Python's own SIGINT handler, structlog's configuration restored, and
everything structlog emits during a test (``log_capture``)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import LogCapture

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


@pytest.fixture(scope="session")
def _pristine_structlog() -> dict[str, object]:
    """structlog's configuration before any test ran the CLI (which configures it for the process)."""
    return dict(structlog.get_config())


@pytest.fixture(autouse=True)
def _restore_structlog(_pristine_structlog: dict[str, object]) -> Iterator[None]:
    """Every test starts and ends with the pristine structlog configuration: a module-scoped
    fixture that ran the CLI must not decide what a later test's ``capture_logs`` sees."""
    structlog.configure(**_pristine_structlog)  # type: ignore[arg-type]
    try:
        yield
    finally:
        structlog.configure(**_pristine_structlog)  # type: ignore[arg-type]


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


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    """Everything structlog emits during the test (debug included), as event dicts."""
    capture = LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(0),
                        cache_logger_on_first_use=False)
    try:
        yield capture
    finally:
        structlog.configure(**saved)
