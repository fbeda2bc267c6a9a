"""Suite-wide rules: in CI (CI=true) a skipped test is a failure, so green means everything ran."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"

# The real loopback registries (Debian's docker-registry), usable by every test package.
from tests.support.registry import registry_basic, registry_open, registry_tls, registry_token  # noqa: E402

__all__ = ["registry_basic", "registry_open", "registry_tls", "registry_token"]
from tests.support.shared_fixtures import (  # noqa: E402
    _pristine_structlog,
    _restore_structlog,
    client,
    log_capture,
    prefix,
    python_sigint,
)

__all__ += ["_pristine_structlog", "_restore_structlog", "client", "log_capture", "prefix", "python_sigint"]
from tests.support.dockerd import dockerd  # noqa: E402  (a private Docker engine, session-scoped)

__all__ += ["dockerd"]
