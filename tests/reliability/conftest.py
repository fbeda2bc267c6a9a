"""Fixtures for the reliability tests (soak variants are deselected by pyproject's ``-m 'not soak'``;
run them with ``pytest -m soak``)."""

from __future__ import annotations

from tests.support.registry import registry_basic, registry_token

__all__ = ["registry_basic", "registry_token"]
