"""Fixtures for pipeline tests: the real loopback registry from tests.support.registry."""

from __future__ import annotations

from tests.support.registry import registry_open

__all__ = ["registry_open"]
