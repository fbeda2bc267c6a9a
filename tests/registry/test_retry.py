"""Which failures are retried, and how long the client waits (fake sleep and clock: no real waiting)."""

from __future__ import annotations

import email.utils

import httpx
import pytest
from structlog.testing import LogCapture

from converter.errors import AuthError, NotFound, RegistryError
from converter.registry.retry import (
    RetryPolicy,
    TemporaryRegistryError,
    is_transient,
    parse_retry_after,
    run_with_retry,
)
from tests.registry.helpers import Sleeps, fast_retry


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TemporaryRegistryError("x", status=503), True),
        (RegistryError("x", status=500, temporary=True), True),
        (RegistryError("x", status=400), False),
        (AuthError("x", status=401), False),
        (NotFound("x", status=404), False),
        (httpx.ConnectError("refused"), True),
        (httpx.ReadError("reset"), True),
        (httpx.WriteError("broken pipe"), True),
        (httpx.RemoteProtocolError("peer closed connection"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.ConnectTimeout("slow"), True),
        (httpx.PoolTimeout("busy"), True),
        (httpx.UnsupportedProtocol("ftp"), False),
        (httpx.LocalProtocolError("our bug"), False),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("-3", None),
        ("1.5", None),  # delta-seconds are integers
        ("soon", None),
        (email.utils.formatdate(1_000_030, usegmt=True), 30.0),
        (email.utils.formatdate(999_000, usegmt=True), 0.0),  # in the past: no wait
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_000_000) == expected


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    low = RetryPolicy(random=lambda: 0.0)
    high = RetryPolicy(random=lambda: 1.0)
    assert [low.delay(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert [high.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert low.delay(1, retry_after=3) == 3.0
    assert low.delay(1, retry_after=600) == 10.0  # capped
    assert high.delay(5, retry_after=1) == 8.0  # never shorter than the backoff


def test_success_after_transient_failures() -> None:
    sleeps = Sleeps()
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TemporaryRegistryError("busy", status=503)
        return "ok"

    assert run_with_retry(attempt, policy=fast_retry(sleeps), what="testing") == "ok"
    assert len(calls) == 3 and sleeps.delays == [0.375, 0.75]


def test_permanent_failures_are_raised_at_once() -> None:
    sleeps = Sleeps()
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise NotFound("gone", status=404)

    with pytest.raises(NotFound):
        run_with_retry(attempt, policy=fast_retry(sleeps), what="testing")
    assert len(calls) == 1 and sleeps.delays == []


def test_bugs_are_not_retried() -> None:
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise TypeError("a bug, not the network")

    with pytest.raises(TypeError):
        run_with_retry(attempt, policy=fast_retry(), what="testing")
    assert len(calls) == 1


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    sleeps = Sleeps()
    errors = [TemporaryRegistryError(f"busy {n}", status=503) for n in range(10)]
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise errors[len(calls) - 1]

    with pytest.raises(TemporaryRegistryError) as info:
        run_with_retry(attempt, policy=fast_retry(sleeps, attempts=4), what="testing")
    assert info.value is errors[3]
    assert len(calls) == 4 and len(sleeps.delays) == 3


def test_budget_bounds_the_total_time() -> None:
    sleeps = Sleeps()

    def attempt() -> None:
        raise TemporaryRegistryError("busy", status=503, retry_after=8)

    with pytest.raises(TemporaryRegistryError):
        run_with_retry(attempt, policy=fast_retry(sleeps, attempts=100, budget=20), what="testing")
    assert sleeps.delays == [8.0, 8.0]  # a third wait would end after 24 s


def test_retry_after_from_the_error_is_honoured_and_capped() -> None:
    sleeps = Sleeps()
    answers = [TemporaryRegistryError("a", retry_after=2), TemporaryRegistryError("b", retry_after=99)]

    def attempt() -> str:
        if answers:
            raise answers.pop(0)
        return "done"

    assert run_with_retry(attempt, policy=fast_retry(sleeps), what="testing") == "done"
    assert sleeps.delays == [2.0, 10.0]


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base_delay, policy.max_delay, policy.budget) == (4, 0.5, 10.0, 60.0)
    # Worst case for one call: three waits of at most 0.5 + 1 + 2 s.
    assert sum(RetryPolicy(random=lambda: 1.0).delay(n) for n in (1, 2, 3)) == 3.5


def test_retries_are_logged(log_capture: LogCapture) -> None:
    answers = [TemporaryRegistryError("fetching x: 503 Service Unavailable")]

    def attempt() -> None:
        if answers:
            raise answers.pop(0)

    run_with_retry(attempt, policy=fast_retry(), what="fetching x")
    events = [e for e in log_capture.entries if e["event"] == "registry_retry"]
    assert events == [{"event": "registry_retry", "log_level": "info", "what": "fetching x", "attempt": 1,
                       "delay": 0.375, "error": "fetching x: 503 Service Unavailable"}]
