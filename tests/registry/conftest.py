"""Fixtures for the registry client tests: the real registries from tests.support.registry (the
structlog capture, ``log_capture``, is suite-wide: tests/support/shared_fixtures.py)."""

from __future__ import annotations

from tests.support.registry import registry_basic, registry_open, registry_tls, registry_token

__all__ = ["registry_basic", "registry_open", "registry_tls", "registry_token"]
