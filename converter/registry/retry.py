"""Retry policy for registry calls: which failures are transient, and a short, bounded backoff.

Only failures that another attempt can fix are retried: dropped or refused connections, timeouts,
and the statuses 408, 429, 500, 502, 503 and 504. Everything else (4xx answers, our own bugs)
fails at once. A digest mismatch is not retried here either: the request succeeded, and only
the consumer of the bytes can start the download over (``DigestMismatch`` tells it how often
this policy allows). Backoff is exponential with jitter, capped per sleep,
bounded in attempts *and* in total time, and honours a (capped) ``Retry-After`` from the server.
Sleep, clock and randomness are injectable so tests run instantly.

Cancellation: a ``CancelScope`` entered in a worker thread makes that thread's registry calls
stoppable from another thread. ``cancel()`` shuts down the sockets the thread is blocked on
(the client registers them while it reads or writes, see ``converter.registry.cancellable``) and
wakes its backoff sleeps, so a pipeline can stop promptly on Ctrl-C or a failure elsewhere
instead of waiting out a stalled download's read timeout. Calls in a cancelled scope raise
``RequestCancelled``, which is never retried.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import structlog

from converter.cancel import current_scope
from converter.errors import Cancelled, RegistryError
from converter.errors import TemporaryRegistryError as TemporaryRegistryError  # re-exported (defined in errors)

# The cancellation error under the name the registry modules use (one class: errors.Cancelled).
RequestCancelled = Cancelled

log = structlog.get_logger()

T = TypeVar("T")

# Statuses a later attempt may succeed on (the set ggcr's transport treats as temporary).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})



def check_cancelled(what: str = "") -> None:
    """Raise ``RequestCancelled`` if the calling thread's scope is cancelled."""
    scope = current_scope()
    if scope is not None:
        scope.check(what, RequestCancelled)


def interruptible_sleep(seconds: float) -> None:
    """``time.sleep`` that a cancelled ``CancelScope`` of the calling thread cuts short."""
    scope = current_scope()
    if scope is None:
        time.sleep(seconds)
    else:
        scope.wait(seconds)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry. Defaults: 4 attempts, 0.5 s doubling to 10 s, 60 s in all."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 10.0
    budget: float = 60.0
    # A server asking for more than this is still waited on for only this long.
    max_retry_after: float = 10.0
    # The default wakes up early when the thread's CancelScope is cancelled; tests inject their own.
    sleep: Callable[[float], None] = field(default=interruptible_sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    random: Callable[[], float] = field(default=random.random, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based).

        "Equal jitter": half the exponential step is fixed, half random, so concurrent clients
        spread out but nobody retries immediately. A Retry-After is honoured up to its cap.
        """
        step = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        delay: float = step / 2 + self.random() * step / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


NO_RETRY = RetryPolicy(attempts=1)


def is_transient(exc: BaseException) -> bool:
    """True if another attempt may succeed after ``exc``."""
    if isinstance(exc, RegistryError):
        return exc.temporary
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return True
    # Resets can surface from file-like wrappers as plain OSErrors.
    return isinstance(exc, ConnectionError | TimeoutError)


def retry_after_of(exc: BaseException) -> float | None:
    """The delay the server asked for with this failure, if any."""
    return exc.retry_after if isinstance(exc, RegistryError) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def run_with_retry(
    attempt: Callable[[], T],
    *,
    policy: RetryPolicy,
    what: str,
    should_retry: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Call ``attempt`` until it succeeds, fails permanently, or attempts or budget run out.

    The last failure is re-raised unchanged, so callers see the registry's own error. In a
    cancelled ``CancelScope`` no further attempt starts (``RequestCancelled``).
    """
    start = policy.clock()
    number = 1
    while True:
        check_cancelled(what)
        try:
            return attempt()
        except Exception as exc:
            if number >= policy.attempts or not should_retry(exc) or isinstance(exc, RequestCancelled):
                raise
            delay = policy.delay(number, retry_after_of(exc))
            if policy.clock() - start + delay > policy.budget:
                raise
            log.info(
                "registry_retry",
                what=what,
                attempt=number,
                delay=round(delay, 3),
                error=str(exc) if isinstance(exc, RegistryError) else type(exc).__name__,
            )
            policy.sleep(delay)
            number += 1
