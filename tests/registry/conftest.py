"""Fixtures for the registry client tests: the real registries from tests.support.registry, plus helpers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import LogCapture

from tests.support.registry import registry_basic, registry_open, registry_tls, registry_token

__all__ = ["registry_basic", "registry_open", "registry_tls", "registry_token"]


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
