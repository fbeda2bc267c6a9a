"""Fixtures for the mirror tests (the loopback registries come from tests/conftest.py)."""

from __future__ import annotations

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
    """run_mirror configures structlog for the process; put the test session's config back."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)
